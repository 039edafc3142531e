"""``BACKEND=tfserving``: TensorFlow Serving's REST API (the ``prod`` stage's GPU inference).

The service keeps validation, micro-batching, the prediction log and metrics; each batch becomes one
``POST {TFSERVING_URL}/v1/models/{model}[/versions/{v}]:predict`` with the card's input as
``float32 [N, n_features]``, in the row format (``{"instances": [[...], ...]}``, the default) or the
columnar one (``{"inputs": {"<input>": [[...], ...]}}``, ``TFSERVING_FORMAT=columnar``), and reads
the card's probabilities output from ``{"predictions": [{...}, ...]}`` / ``{"outputs": {...}}``.
The SavedModel that ``stagectl model build`` writes has exactly the card's tensor names
(``stagectl/tf_export.py``).

Loading checks, once TF Serving answers, that it serves the model (``GET /v1/models/{model}``, a
version ``AVAILABLE``) and that the signature (``GET /v1/models/{model}/metadata``) has the card's
input (``DT_FLOAT``, ``[-1, n_features]``) and probabilities output; a mismatch is a model that
cannot be served (``invalid``), TF Serving unreachable a retryable ``unreadable``. Readiness asks the
status endpoint (cached for a second).

Errors: TF Serving answers ``{"error": "..."}`` with an HTTP status derived from its status code.

- connection refused/reset, 503 ``UNAVAILABLE``, 429 ``RESOURCE_EXHAUSTED``, 504 or our timeout:
  retried ``TFSERVING_RETRIES`` times (``TFSERVING_RETRY_BACKOFF_MS``, doubling), then
  :class:`BackendUnavailable` -> the client gets 503;
- 404 ``NOT_FOUND`` (the model or version is not loaded): :class:`BackendUnavailable` -> 503;
- 400 ``INVALID_ARGUMENT``/``FAILED_PRECONDITION``/``OUT_OF_RANGE``: the signature was checked at
  load time, so this is about the request's data: :class:`BackendRejected` -> 422 naming TF
  Serving's message;
- anything else (500 ``INTERNAL``, a malformed answer): :class:`BackendError` -> 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, ClassVar, Literal

import httpx
import numpy as np
import orjson

from service.backends.base import BackendError, BackendRejected, BackendUnavailable, InferenceBackend
from service.model_source import ModelArtifact, ModelLoadError

log = logging.getLogger("service.backends.tfserving")

RequestFormat = Literal["row", "columnar"]
#: Answers worth another attempt: TF Serving UNAVAILABLE / RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED.
_RETRY_STATUS = frozenset({429, 503, 504})
#: Transport failures worth another attempt (predict is idempotent).
_RETRY_EXC = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
_STATUS_TTL = 1.0


class TfServingError(Exception):
    """An HTTP answer other than 200 from TF Serving, with its ``{"error": ...}`` message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def _error_message(response: httpx.Response) -> str:
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    text = response.text.strip()
    return text[:500] or response.reason_phrase


def _loads(content: bytes) -> Any:
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        # TF Serving writes NaN / Infinity as bare tokens (its documented JSON extension)
        return json.loads(content)


class TfServingBackend(InferenceBackend):
    name: ClassVar[str] = "tfserving"
    needs_model_bytes: ClassVar[bool] = False

    def __init__(
        self,
        url: str,
        model: str | None = None,
        version: int | None = None,
        signature: str = "serving_default",
        request_format: RequestFormat = "row",
        timeout: float = 5.0,
        retries: int = 2,
        retry_backoff_ms: float = 50.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._model_override = model
        self.model = model or ""
        self.version = version
        self.signature = signature
        self.request_format: RequestFormat = request_format
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = retry_backoff_ms / 1000.0
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._input_name = ""
        self._probs_name = ""
        self._n_features = 0
        self._n_classes: int | None = None
        self._loaded = False
        self._status_at = 0.0
        self._status_ok = False

    # -- URLs ---------------------------------------------------------------------------------

    @property
    def model_path(self) -> str:
        base = f"/v1/models/{self.model}"
        return f"{base}/versions/{self.version}" if self.version is not None else base

    @property
    def predict_path(self) -> str:
        return f"{self.model_path}:predict"

    def _describe(self) -> str:
        pinned = f" version {self.version}" if self.version is not None else ""
        return f"TF Serving {self.url} model {self.model!r}{pinned}"

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
            self._client = httpx.AsyncClient(
                base_url=self.url,
                timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 2.0)),
                limits=limits,
                transport=self._transport,
                headers={"Content-Type": "application/json"},
            )
        return self._client

    # -- requests with bounded retries ----------------------------------------------------------

    async def _request(self, method: str, path: str, body: bytes | None = None, retries: int | None = None) -> Any:
        """The decoded JSON of a 200 answer; raises :class:`BackendUnavailable` after the retries
        for transport failures and retryable statuses, :class:`TfServingError` for other statuses."""
        retries = self.retries if retries is None else retries
        attempt = 0
        while True:
            try:
                response = await self._http().request(method, path, content=body)
            except httpx.TimeoutException as exc:
                if isinstance(exc, httpx.ConnectTimeout) and attempt < retries:
                    attempt += 1
                    await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
                    continue
                raise BackendUnavailable(
                    f"{self._describe()}: no answer within {self.timeout}s ({type(exc).__name__})",
                    "the inference backend (TF Serving) did not answer in time; retry later",
                ) from exc
            except _RETRY_EXC as exc:
                if attempt < retries:
                    attempt += 1
                    await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
                    continue
                raise BackendUnavailable(
                    f"{self._describe()} is unreachable after {attempt + 1} attempts: {type(exc).__name__}: {exc}",
                    "the inference backend (TF Serving) is unreachable; retry later",
                ) from exc
            except httpx.HTTPError as exc:
                raise BackendUnavailable(
                    f"{self._describe()}: {type(exc).__name__}: {exc}",
                    "the inference backend (TF Serving) is unreachable; retry later",
                ) from exc
            if response.status_code == 200:
                try:
                    return _loads(response.content)
                except ValueError as exc:
                    raise BackendError(f"{self._describe()} answered invalid JSON: {exc}") from None
            message = _error_message(response)
            if response.status_code in _RETRY_STATUS:
                if attempt < retries:
                    attempt += 1
                    await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
                    continue
                raise BackendUnavailable(
                    f"{self._describe()} answered {response.status_code}: {message}",
                    "the inference backend (TF Serving) is overloaded or unavailable; retry later",
                )
            raise TfServingError(response.status_code, message)

    # -- InferenceBackend ---------------------------------------------------------------------

    async def load(self, artifact: ModelArtifact) -> None:
        card = artifact.card
        self.model = self._model_override or card.name
        self._input_name = card.input.name
        probs = card.probabilities_spec
        self._probs_name = probs.name
        self._n_features = card.n_features
        self._n_classes = probs.shape[1] if probs.shape[1] is not None and probs.shape[1] > 0 else None
        where = f"{self.url}{self.model_path}"
        try:
            status = await self._request("GET", self.model_path)
            available = self._available(status)
            if not available:
                raise ModelLoadError(
                    "unreadable", where, f"TF Serving has no AVAILABLE version: {self._states(status)}"
                )
            metadata = await self._request("GET", f"{self.model_path}/metadata")
        except BackendUnavailable as exc:
            raise ModelLoadError("unreadable", where, str(exc)) from None
        except TfServingError as exc:
            kind: Literal["unreadable", "missing"] = "missing" if exc.status == 404 else "unreadable"
            raise ModelLoadError(kind, where, f"TF Serving answered {exc}") from None
        except BackendError as exc:
            raise ModelLoadError("unreadable", where, str(exc)) from None
        self._check_signature(metadata, where)
        self._loaded = True
        self._status_ok, self._status_at = True, time.monotonic()
        log.info("serving %s through %s (%s format)", self.model, self._describe(), self.request_format)

    def _check_signature(self, metadata: Any, where: str) -> None:
        try:
            signatures = metadata["metadata"]["signature_def"]["signature_def"]
        except (KeyError, TypeError):
            raise ModelLoadError("invalid", where, "TF Serving's metadata has no signature_def") from None
        signature = signatures.get(self.signature) if isinstance(signatures, dict) else None
        if not isinstance(signature, dict):
            names = sorted(signatures) if isinstance(signatures, dict) else []
            raise ModelLoadError(
                "invalid", where, f"the SavedModel has no signature {self.signature!r} (signatures: {names})"
            )
        inputs, outputs = signature.get("inputs") or {}, signature.get("outputs") or {}
        if set(inputs) != {self._input_name}:
            raise ModelLoadError(
                "invalid", where, f"signature inputs are {sorted(inputs)}, the card declares [{self._input_name!r}]"
            )
        spec = inputs[self._input_name]
        if spec.get("dtype") != "DT_FLOAT":
            raise ModelLoadError("invalid", where, f"input {self._input_name!r} is {spec.get('dtype')}, not DT_FLOAT")
        dims = self._dims(spec)
        if dims is not None and (len(dims) != 2 or dims[1] not in (-1, self._n_features)):
            raise ModelLoadError(
                "invalid", where, f"input {self._input_name!r} has shape {dims}, the card says [-1, {self._n_features}]"
            )
        if self._probs_name not in outputs:
            raise ModelLoadError(
                "invalid", where, f"the signature has no output {self._probs_name!r} (outputs: {sorted(outputs)})"
            )
        out_dims = self._dims(outputs[self._probs_name])
        if self._n_classes is not None and out_dims is not None and out_dims[-1:] not in ([-1], [self._n_classes]):
            raise ModelLoadError(
                "invalid", where, f"output {self._probs_name!r} has shape {out_dims}, the card says {self._n_classes}"
            )

    @staticmethod
    def _dims(spec: dict[str, Any]) -> list[int] | None:
        shape = spec.get("tensor_shape") or {}
        if shape.get("unknown_rank"):
            return None
        return [int(d.get("size", -1)) for d in shape.get("dim", [])]

    @staticmethod
    def _states(status: Any) -> str:
        versions = status.get("model_version_status", []) if isinstance(status, dict) else []
        return ", ".join(f"version {v.get('version')}: {v.get('state')}" for v in versions) or "no versions"

    def _available(self, status: Any) -> bool:
        versions = status.get("model_version_status", []) if isinstance(status, dict) else []
        return any(
            v.get("state") == "AVAILABLE" and (self.version is None or str(v.get("version")) == str(self.version))
            for v in versions
        )

    async def ready(self) -> bool:
        if not self._loaded:
            return False
        now = time.monotonic()
        if now - self._status_at < _STATUS_TTL:
            return self._status_ok
        try:
            status = await asyncio.wait_for(self._status_once(), timeout=min(self.timeout, 2.0))
            ok = self._available(status)
        except (TimeoutError, BackendError, TfServingError):
            ok = False
        if ok != self._status_ok:
            log.log(
                logging.INFO if ok else logging.WARNING,
                "%s is %s",
                self._describe(),
                "available again" if ok else "not available",
            )
        self._status_ok, self._status_at = ok, time.monotonic()
        return ok

    async def _status_once(self) -> Any:
        return await self._request("GET", self.model_path, retries=0)  # the probe itself repeats

    def request_body(self, batch: np.ndarray) -> bytes:
        rows = np.ascontiguousarray(batch, dtype=np.float32)
        payload: dict[str, Any] = {"signature_name": self.signature}
        if self.request_format == "row":
            payload["instances"] = rows
        else:
            payload["inputs"] = {self._input_name: rows}
        return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)

    def parse_probabilities(self, answer: Any, n: int) -> np.ndarray:
        """The ``[n, n_classes]`` probabilities from a predict answer in either format."""
        try:
            if "predictions" in answer:
                predictions = answer["predictions"]
                values = [p[self._probs_name] if isinstance(p, dict) else p for p in predictions]
            else:
                outputs = answer["outputs"]
                values = outputs[self._probs_name] if isinstance(outputs, dict) else outputs
            probabilities = np.asarray(values, dtype=np.float32)
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendError(f"{self._describe()} answered without {self._probs_name!r}: {exc!r}") from None
        expected = (n, self._n_classes) if self._n_classes is not None else None
        if probabilities.ndim != 2 or probabilities.shape[0] != n or (expected and probabilities.shape != expected):
            raise BackendError(
                f"{self._describe()} answered probabilities of shape {probabilities.shape}, expected {expected or (n,)}"
            )
        return probabilities

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        if not self._loaded:
            raise BackendUnavailable(f"{self._describe()}: the model is not loaded")
        try:
            answer = await self._request("POST", self.predict_path, self.request_body(batch))
        except TfServingError as exc:
            self._status_at = 0.0  # make the next readiness check ask again
            if exc.status == 404:
                raise BackendUnavailable(
                    f"{self._describe()} does not serve the model: {exc.message}",
                    f"model {self.model!r} is not available on the inference backend (TF Serving); retry later",
                ) from None
            if exc.status == 400:
                raise BackendRejected(f"TF Serving rejected the input: {exc.message}") from None
            raise BackendError(f"{self._describe()} failed: {exc}") from None
        except BackendUnavailable:
            self._status_ok, self._status_at = False, time.monotonic()
            raise
        return self.parse_probabilities(answer, len(batch))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        self._loaded = False
