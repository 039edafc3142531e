"""The service core: settings, model loading, backend, batching, prediction log and metrics wired
together, with one method per endpoint answering ``(status, JSON bytes)``.

Nothing here imports FastAPI: the ASGI entry point (``service.asgi``) serves the prediction and
probe endpoints straight from these methods, and the FastAPI application (``service.api``, the
OpenAPI schema and every other route) is built on first use or in the background after start-up,
which keeps about half a second of imports off the cold start.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from service import __version__
from service.backends import BackendError, InferenceBackend, create_backend
from service.batching import Dispatcher, MicroBatcher
from service.card import OIP_DATATYPES, ModelCard
from service.errors import ApiError, BodyTooLarge, error_bytes, too_large
from service.logs import AccessLog
from service.metrics import Metrics
from service.model_source import ModelArtifact, ModelLoadError, fetch_model
from service.prediction_log import PredictionLog
from service.settings import Settings
from service.stores import create_store
from service.threads import DaemonExecutor
from service.validation import F32_MAX, InputRules, parse_infer, parse_predict
from service.wire import HEADER_LENGTH, OCTET_STREAM, Wire, choose_encoding, decode_body, encode, split_body

if TYPE_CHECKING:
    from service.asgi import ServiceASGI

log = logging.getLogger("service")

_NUMPY = orjson.OPT_SERIALIZE_NUMPY


@dataclass
class LoadedModel:
    """What the request path needs about the served model, computed once."""

    artifact: ModelArtifact
    card: ModelCard
    name: str
    version: str
    n_features: int
    input_name: str
    probabilities_name: str
    label_name: str
    classes: np.ndarray | None
    rules: InputRules
    ref: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_artifact(cls, artifact: ModelArtifact, max_instances: int) -> LoadedModel:
        card = artifact.card
        label_name = next(
            (o.name for o in card.outputs if len(o.shape) == 1 and o.dtype in ("int64", "int32")), "label"
        )
        classes = np.asarray(card.classes, dtype=np.int64) if card.classes else None
        low, high = card.input.range or (-F32_MAX, F32_MAX)
        return cls(
            artifact=artifact,
            card=card,
            name=card.name,
            version=artifact.version,
            n_features=card.n_features,
            input_name=card.input.name,
            probabilities_name=card.probabilities_spec.name,
            label_name=label_name,
            classes=classes,
            rules=InputRules(card.n_features, max_instances, max(low, -F32_MAX), min(high, F32_MAX)),
            ref={"name": card.name, "version": artifact.version},
        )

    def labels(self, probabilities: np.ndarray) -> list[int]:
        index = probabilities.argmax(axis=1)
        if self.classes is not None:
            index = self.classes[index]
        labels: list[int] = index.tolist()
        return labels

    @property
    def output_names(self) -> list[str]:
        return [self.label_name, self.probabilities_name]


Answer = tuple[int, bytes]
#: extra response headers (a content type other than JSON, content coding, binary framing)
Headers = list[tuple[bytes, bytes]]
#: a prediction endpoint's answer: status, body, extra headers (or None)
Reply = tuple[int, bytes, Headers | None]
_EMPTY = memoryview(b"")
_VARY = (b"vary", b"accept-encoding")


def _dumps(content: Any) -> bytes:
    return orjson.dumps(content, option=_NUMPY)


def _finite(probabilities: np.ndarray) -> bool:
    return bool(np.isfinite(probabilities).all())


def _nonfinite(probabilities: np.ndarray, field: str, request_id: str) -> Answer:
    """A valid input the model cannot handle (e.g. far outside its training range) is refused like
    bad input: the client gets a 422 naming the row, never NaN probabilities."""
    row = int(np.flatnonzero(~np.isfinite(probabilities).all(axis=1))[0])
    return 422, error_bytes(
        f"{field}[{row}]",
        "model_output",
        "the model's output for this row is not finite (the values are far outside what it was trained on)",
        request_id,
    )


class Service:
    """One running service: the model, the backend, the batcher, the prediction log."""

    def __init__(self, settings: Settings, backend: InferenceBackend | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.access_log = AccessLog(settings.service_name)
        self.backend = backend or create_backend(settings)
        self.prediction_log = PredictionLog(
            create_store(settings),
            settings.spool_dir,
            self.metrics,
            flush_records=settings.store_flush_records,
            flush_seconds=settings.store_flush_seconds,
            retry_seconds=settings.store_retry_seconds,
            queue_max=settings.store_queue_max,
            store_timeout=settings.store_timeout_seconds,
            durability=settings.store_durability,
        )
        inference = self.metrics.inference.labels(self.backend.name)
        batch_rows = self.metrics.batch_rows
        batch_requests = self.metrics.batch_requests

        def observe(rows: int, requests: int, seconds: float) -> None:
            inference.observe(seconds)
            batch_rows.observe(rows)
            batch_requests.observe(requests)

        self.dispatcher: Dispatcher = (
            MicroBatcher(self.backend, settings.batch_max_size, observe)
            if settings.batching
            else Dispatcher(self.backend, observe)
        )
        self.model: LoadedModel | None = None
        self.load_error: ModelLoadError | None = None
        self._api_key = settings.api_key_value.encode() if settings.api_key_value else None
        self._s3: Any = None
        self._retry_task: asyncio.Task[None] | None = None
        self._fetcher = DaemonExecutor(1, "model-fetch")
        self._prediction_counter: Any = None

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.dispatcher.start()
        loaded = await self.load_model()
        await self.prediction_log.start()
        if not loaded and self.settings.model_retry_seconds > 0:
            self._retry_task = asyncio.get_running_loop().create_task(self._retry_loop(), name="model-retry")

    async def stop(self, deadline: float | None = None) -> None:
        """Stop; with ``deadline`` (``loop.time()``), everything is done by then: the prediction log
        writes what the store takes before it and spills the rest to disk."""
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self.settings.shutdown_grace_seconds
        if self._retry_task is not None:
            self._retry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry_task
        await self.dispatcher.stop()
        await self.prediction_log.close(deadline)
        left = deadline - loop.time()
        if left > 0:
            try:
                async with asyncio.timeout(left):
                    await self.backend.close()
            except TimeoutError:
                log.warning("closing the backend %s did not finish before the shutdown deadline", self.backend.name)
        self.access_log.flush()
        log.info("service stopped")

    def _s3_client(self) -> Any:
        if self._s3 is None:
            from service.s3 import make_s3_client

            self._s3 = make_s3_client(self.settings.s3)
        return self._s3

    async def load_model(self) -> bool:
        s = self.settings
        try:
            # a daemon thread: a model fetch stuck on an S3 endpoint that never answers must not
            # hold the process past its grace period at shutdown
            artifact = await self._fetcher.run(
                fetch_model, s.model_uri, s.model_card_uri, s.model_sha256, self._s3_client
            )
            await self.backend.load(artifact)
            if not self.backend.remote and not await self.backend.ready():
                raise ModelLoadError("unreadable", s.model_uri, f"backend {self.backend.name} is not ready")
        except ModelLoadError as exc:
            self._load_failed(exc)
            return False
        except Exception as exc:
            log.exception("unexpected error while loading %s", s.model_uri)
            self._load_failed(ModelLoadError("unreadable", s.model_uri, f"{type(exc).__name__}: {exc}"))
            return False
        model = LoadedModel.from_artifact(artifact, s.max_instances)
        if artifact.card.version and artifact.card.version != model.version:
            log.warning(
                "card version %r is not the model's sha256 prefix; serving it as version %s",
                artifact.card.version,
                model.version,
            )
        self.model = model
        self.load_error = None
        self._prediction_counter = self.metrics.predictions.labels(model.name, model.version)
        self.metrics.model_info.labels(model.name, model.version, artifact.sha256, self.backend.name).set(1)
        self.metrics.model_ready.set(1)
        log.info(
            "model %s version %s loaded from %s (sha256 %s verified against %s)",
            model.name,
            model.version,
            artifact.uri,
            artifact.sha256,
            "MODEL_SHA256" if s.model_sha256 else "the card",
            extra={"model.name": model.name, "model.version": model.version, "model.uri": artifact.uri},
        )
        return True

    def _load_failed(self, exc: ModelLoadError) -> None:
        self.load_error = exc
        self.metrics.model_load_failures.labels(exc.kind).inc()
        self.metrics.model_ready.set(0)
        log.error(
            "model not loaded (%s): %s: %s; the service stays not ready",
            exc.kind,
            exc.uri,
            exc.reason,
            extra={"error.type": exc.kind, "error.message": exc.reason, "model.uri": exc.uri},
        )

    async def _retry_loop(self) -> None:
        delay = self.settings.model_retry_seconds
        while self.model is None:
            await asyncio.sleep(delay)
            if await self.load_model():
                return
            delay = min(delay * 2, 300.0)

    async def ready(self) -> bool:
        ok = self.model is not None and await self.backend.ready()
        self._note_ready(ok)
        return ok

    def _note_ready(self, ok: bool) -> None:
        """``model_ready`` follows what the readiness checks see (a remote backend that lost the
        model drops it), not only the load."""
        self.metrics.model_ready.set(1 if ok else 0)

    # -- helpers ------------------------------------------------------------------------------

    def authorized(self, supplied: bytes | None) -> bool:
        """``X-API-Key`` check for the predict endpoints (always true when ``API_KEY`` is unset)."""
        if self._api_key is None:
            return True
        return supplied is not None and hmac.compare_digest(supplied, self._api_key)

    def _not_ready(self) -> ApiError:
        reason = f"{self.load_error.kind}: {self.load_error.reason}" if self.load_error else "loading"
        return ApiError(503, "model", "ready", f"the model is not loaded ({reason})")

    @staticmethod
    def _unauthorized() -> ApiError:
        return ApiError(401, "X-API-Key", "api_key", "missing or wrong API key")

    async def read_body(self, receive: Any) -> bytes:
        """The raw body, read straight from the ASGI channel."""
        try:
            message = await receive()
            if message["type"] != "http.request":
                raise ApiError(400, "body", "incomplete", "the client disconnected before sending the body")
            body: bytes = message.get("body", b"")
            if not message.get("more_body", False):
                return body
            chunks = [body]
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    raise ApiError(400, "body", "incomplete", "the client disconnected before sending the body")
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    return b"".join(chunks)
        except BodyTooLarge:
            raise too_large(self.settings.max_body_bytes) from None

    def _model_named(self, name: str, version: str | None) -> LoadedModel:
        model = self.model
        if model is None:
            raise self._not_ready()
        if name != model.name:
            raise ApiError(
                404, "model_name", "unknown_model", f"unknown model {name!r}; this server has {model.name!r}"
            )
        if version is not None and version != model.version:
            raise ApiError(
                404, "model_version", "unknown_version", f"unknown version {version!r}; serving {model.version!r}"
            )
        return model

    # -- endpoints ----------------------------------------------------------------------------
    #
    # The two prediction endpoints take the ASGI ``receive`` channel and answer (status, JSON
    # bytes): the ASGI entry point (service.asgi) calls them directly for the hot path, and the
    # FastAPI routes, which publish them in OpenAPI, call the same methods.

    async def _body(self, receive: Any, wire: Wire | None, framed: bool) -> tuple[bytes, memoryview]:
        """The request body with its content coding removed, split into (JSON, binary tensor data)
        when ``framed`` and the client sent ``Inference-Header-Content-Length``."""
        body = await self.read_body(receive)
        if wire is None:
            return body, _EMPTY
        if wire.content_encoding is not None:
            body = decode_body(body, wire.content_encoding, self.settings.max_body_bytes)
        if framed and wire.header_length is not None:
            return split_body(body, wire.header_length)
        return body, _EMPTY

    @staticmethod
    def _reply(content: bytes, wire: Wire | None, headers: Headers | None = None) -> Reply:
        """A 200 answer, compressed when the client's ``Accept-Encoding`` allows it."""
        if wire is None or wire.accept_encoding is None:
            return 200, content, headers
        coding = choose_encoding(wire.accept_encoding)
        if coding is None:
            return 200, content, headers
        extra = [*(headers or ()), (b"content-encoding", coding.encode()), _VARY]
        return 200, encode(content, coding), extra

    async def predict(self, receive: Any, api_key: bytes | None, request_id: str, wire: Wire | None = None) -> Reply:
        """``POST /v1/predict``."""
        start = time.perf_counter()
        wall = time.time()
        try:
            if self._api_key is not None and not self.authorized(api_key):
                raise self._unauthorized()
            model = self.model
            if model is None:
                raise self._not_ready()
            body, _ = await self._body(receive, wire, False)
            rows = parse_predict(body, model.rules)
        except ApiError as exc:
            return exc.status, error_bytes(exc.field, exc.rule, exc.message, request_id), None
        try:
            probabilities = await self.dispatcher.predict(rows)
        except BackendError as exc:
            log.error("inference failed for request %s: %s", request_id, exc)
            return exc.status, error_bytes(exc.field, exc.rule, exc.public_message, request_id), None
        labels = model.labels(probabilities)
        content = orjson.dumps(
            {
                "model": model.ref,
                "predictions": [
                    {"label": label, "probabilities": p} for label, p in zip(labels, probabilities, strict=True)
                ],
            },
            option=_NUMPY,
        )
        if b"null" in content and not _finite(probabilities):  # NaN serialises as null
            return (*_nonfinite(probabilities, "instances", request_id), None)
        durable = self.prediction_log.record(
            request_id,
            "v1",
            model.name,
            model.version,
            wall,
            time.perf_counter() - start,
            rows,
            probabilities,
            labels,
        )
        if durable is not None:
            await durable
        self._prediction_counter.inc(len(labels))
        return self._reply(content, wire)

    async def infer(
        self,
        receive: Any,
        api_key: bytes | None,
        request_id: str,
        name: str,
        version: str | None,
        wire: Wire | None = None,
    ) -> Reply:
        """``POST /v2/models/{name}[/versions/{version}]/infer`` (Open Inference Protocol, with the
        binary tensor data extension)."""
        start = time.perf_counter()
        wall = time.time()
        try:
            if self._api_key is not None and not self.authorized(api_key):
                raise self._unauthorized()
            model = self._model_named(name, version)
            body, binary = await self._body(receive, wire, True)
            parsed = parse_infer(body, model.input_name, model.rules, model.output_names, binary, model.name)
        except ApiError as exc:
            return exc.status, error_bytes(exc.field, exc.rule, exc.message, request_id), None
        try:
            probabilities = await self.dispatcher.predict(parsed.rows)
        except BackendError as exc:
            log.error("inference failed for request %s: %s", request_id, exc)
            return exc.status, error_bytes(exc.field, exc.rule, exc.public_message, request_id), None
        if not _finite(probabilities):
            field = "inputs[0].data" if not binary else "inputs[0].binary_data"
            return (*_nonfinite(probabilities, field, request_id), None)
        labels = model.labels(probabilities)
        n = len(labels)
        outputs: list[dict[str, Any]] = []
        blobs: list[bytes] = []
        requested = parsed.outputs or [(out, parsed.binary_output) for out in model.output_names]
        for out, as_binary in requested:
            tensor: dict[str, Any]
            if out == model.label_name:
                tensor = {"name": out, "datatype": "INT64", "shape": [n]}
                if as_binary:
                    blobs.append(np.asarray(labels, dtype="<i8").tobytes())
                else:
                    tensor["data"] = labels
            else:
                tensor = {"name": out, "datatype": "FP32", "shape": [n, probabilities.shape[1]]}
                if as_binary:
                    blobs.append(np.ascontiguousarray(probabilities, dtype="<f4").tobytes())
                else:
                    tensor["data"] = probabilities.reshape(-1)
            if as_binary:
                tensor["parameters"] = {"binary_data_size": len(blobs[-1])}
            outputs.append(tensor)
        response: dict[str, Any] = {"model_name": model.name, "model_version": model.version, "outputs": outputs}
        if parsed.id is not None:
            response["id"] = parsed.id
        content = orjson.dumps(response, option=_NUMPY)
        headers: Headers | None = None
        if blobs:
            headers = [(HEADER_LENGTH, str(len(content)).encode()), (b"content-type", OCTET_STREAM)]
            content = b"".join([content, *blobs])
        durable = self.prediction_log.record(
            request_id,
            "v2",
            model.name,
            model.version,
            wall,
            time.perf_counter() - start,
            parsed.rows,
            probabilities,
            labels,
        )
        if durable is not None:
            await durable
        self._prediction_counter.inc(n)
        return self._reply(content, wire, headers)

    def _model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        model = self._model_named(name, version)
        card = model.card
        probs = card.probabilities_spec
        return {
            "name": model.name,
            "versions": [model.version],
            "platform": "onnxruntime_onnx" if self.backend.name == "onnx" else self.backend.name,
            "inputs": [
                {"name": card.input.name, "datatype": OIP_DATATYPES[card.input.dtype], "shape": card.input.oip_shape}
            ],
            "outputs": [
                {"name": model.label_name, "datatype": "INT64", "shape": [-1]},
                {"name": probs.name, "datatype": "FP32", "shape": probs.oip_shape},
            ],
        }

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        model = self.model
        if model is None:
            reason = (
                f"{self.load_error.kind}: {self.load_error.uri}: {self.load_error.reason}"
                if self.load_error
                else "loading"
            )
            return False, {"status": "not_ready", "backend": self.backend.name, "reason": reason}
        return True, {
            "status": "ready",
            "backend": self.backend.name,
            "model": {"name": model.name, "version": model.version, "sha256": model.artifact.sha256},
        }

    # -- the other endpoints ------------------------------------------------------------------

    def healthz(self) -> Answer:
        return 200, b'{"status":"ok"}'

    async def readyz(self) -> Answer:
        ok, body = self.readiness()
        if ok and not await self.backend.ready():
            why = self.backend.unready_reason
            reason = f"backend not ready: {why}" if why else "backend not ready"
            ok, body = False, {"status": "not_ready", "backend": self.backend.name, "reason": reason}
        self._note_ready(ok)
        return (200 if ok else 503), _dumps(body)

    def metrics_text(self) -> bytes:
        return self.metrics.render()

    def server_metadata(self) -> Answer:
        return 200, _dumps(
            {"name": self.settings.service_name, "version": __version__, "extensions": ["binary_tensor_data"]}
        )

    def model_card(self) -> Answer:
        model = self.model
        if model is None:
            exc = self._not_ready()
            return exc.status, error_bytes(exc.field, exc.rule, exc.message)
        card = model.card.model_dump(mode="json")
        card["version"] = model.version
        return 200, _dumps(card)

    def model_metadata(self, name: str, version: str | None, request_id: str | None = None) -> Answer:
        try:
            return 200, _dumps(self._model_metadata(name, version))
        except ApiError as exc:
            return exc.status, error_bytes(exc.field, exc.rule, exc.message, request_id)

    async def model_ready(self, name: str, version: str | None, request_id: str | None = None) -> Answer:
        """OIP model readiness: 200 ``{"name", "ready": true}`` / 400 ``{"name", "ready": false}``;
        404 JSON error for an unknown model."""
        try:
            self._model_named(name, version)
        except ApiError as exc:
            if exc.status == 503:
                return 400, _dumps({"name": name, "ready": False})
            return exc.status, error_bytes(exc.field, exc.rule, exc.message, request_id)
        ready = await self.backend.ready()
        return (200 if ready else 400), _dumps({"name": name, "ready": ready})

    @staticmethod
    def server_live() -> Answer:
        """OIP server liveness: 200 ``{"live": true}``."""
        return 200, b'{"live":true}'

    async def server_ready(self) -> Answer:
        """OIP server readiness: 200 ``{"ready": true}`` / 400 ``{"ready": false}``."""
        if await self.ready():
            return 200, b'{"ready":true}'
        return 400, b'{"ready":false}'


def create_app(settings: Settings | None = None, backend: InferenceBackend | None = None) -> ServiceASGI:
    """The ASGI application for ``settings`` (default: from the environment).

    ``create_app().service`` is the :class:`Service`; ``create_app().fastapi`` the FastAPI app
    (built on first access).
    """
    from service.asgi import ServiceASGI
    from service.settings import settings_from_env

    return ServiceASGI(Service(settings or settings_from_env(), backend))
