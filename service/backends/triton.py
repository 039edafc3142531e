"""``BACKEND=triton``: NVIDIA Triton Inference Server over KServe v2 gRPC or HTTP (``tritonclient``).

The ``partner`` stage's GPU host runs ``tritonserver`` next to the service; the service keeps
validation, micro-batching, the prediction log and metrics, and each batch becomes one Triton
``ModelInfer`` call (``TRITON_PROTOCOL=grpc``, the default, at ``TRITON_URL=host:8001``) or
``POST /v2/models/{model}/infer`` (``http``, ``host:8000``). The asyncio clients
(``tritonclient.grpc.aio`` / ``tritonclient.http.aio``) run on the service's event loop: nothing
blocks it, and the micro-batcher awaits :meth:`TritonBackend.infer` like any remote backend.

Tensors come from the model card: the card's input (``float32`` -> ``FP32``) with shape
``[N, n_features]``, and its probabilities output, requested by name; the model name is
``TRITON_MODEL`` or the card's ``name`` (the directory name in the model repository that
``components/triton_repo.py`` generates), the version ``TRITON_MODEL_VERSION`` or Triton's latest.
Batches larger than the model's ``max_batch_size`` are sent as several requests at once and joined.

Loading checks the card; when Triton answers, it also checks that Triton serves the model with the
card's input (name, datatype, width) and probabilities output (``invalid`` if not). Triton that does
not answer yet is not a load failure: the service starts, ``/readyz`` answers 503 with the reason and
predictions 503 until Triton and the model are ready, and the check runs then. Readiness is "server
live and model ready" (asked at most once a second; every failed or successful inference updates it).

Errors, by what ``tritonclient`` raises:

- connection refused/reset, gRPC ``UNAVAILABLE``/``RESOURCE_EXHAUSTED``, HTTP 429/502/503/504:
  retried ``TRITON_RETRIES`` times (``TRITON_RETRY_BACKOFF_MS``, doubling), then
  :class:`BackendUnavailable` -> 503;
- no answer within ``TRITON_TIMEOUT_SECONDS`` (gRPC ``DEADLINE_EXCEEDED``): 503 at once (a retry
  would double the load on a server that is already slow);
- any other error while Triton is not live or the model not ready: 503 ("not ready");
- gRPC ``INVALID_ARGUMENT`` / HTTP 400 with the model ready: :class:`BackendRejected` -> 422 with
  Triton's message; anything else: :class:`BackendError` -> 500.

The 503 bodies say what is wrong without internal host names; the log lines name the URL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np

from service.backends.base import BackendError, BackendRejected, BackendUnavailable, InferenceBackend
from service.card import OIP_DATATYPES, ModelCard
from service.model_source import ModelArtifact, ModelLoadError

log = logging.getLogger("service.backends.triton")

Protocol = Literal["grpc", "http"]
T = TypeVar("T")

#: gRPC status codes worth another attempt (the call did not reach the model, or may succeed soon)
_RETRY_GRPC = frozenset({"StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED"})
_TIMEOUT_GRPC = frozenset({"StatusCode.DEADLINE_EXCEEDED"})
_REJECT_GRPC = frozenset({"StatusCode.INVALID_ARGUMENT", "StatusCode.OUT_OF_RANGE"})
#: HTTP statuses worth another attempt
_RETRY_HTTP = frozenset({"429", "502", "503", "504"})
_STATUS_TTL = 1.0
#: gRPC reconnects at most this far apart while Triton is down (gRPC's default grows to 2 minutes,
#: which would delay the recovery by as much after Triton is back)
_MAX_RECONNECT_BACKOFF_MS = 1000
_PUBLIC = "the inference backend (Triton)"


class _Unreachable(Exception):
    """A transport failure: the request did not reach Triton (or no answer came back)."""


class TritonBackend(InferenceBackend):
    name: ClassVar[str] = "triton"
    needs_model_bytes: ClassVar[bool] = False
    remote: ClassVar[bool] = True

    def __init__(
        self,
        url: str,
        protocol: Protocol = "grpc",
        model: str | None = None,
        version: str | None = None,
        timeout: float = 5.0,
        retries: int = 2,
        retry_backoff_ms: float = 50.0,
    ) -> None:
        if protocol not in ("grpc", "http"):
            raise ValueError(f"TRITON_PROTOCOL must be grpc or http, not {protocol!r}")
        self.url = url
        self.protocol: Protocol = protocol
        self._model_override = model
        self.model = model or ""
        self.version = version or ""
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = retry_backoff_ms / 1000.0
        self._client: Any = None
        self._card: ModelCard | None = None
        self._input_name = ""
        self._input_datatype = "FP32"
        self._probs_name = ""
        self._n_features = 0
        self._n_classes: int | None = None
        self._max_batch = 0  # Triton's max_batch_size for the model; 0: unknown or no batching
        self._verified = False
        self._verify_lock: asyncio.Lock | None = None
        self._status_ok = False
        self._status_at = 0.0
        self._reason: str | None = "not loaded"

    # -- description ------------------------------------------------------------------------

    def _describe(self) -> str:
        version = f" version {self.version}" if self.version else ""
        return f"Triton {self.protocol}://{self.url} model {self.model!r}{version}"

    @property
    def unready_reason(self) -> str | None:
        """Why the backend is not ready (``None`` when it is), for ``/readyz``."""
        return None if self._status_ok else self._reason

    # -- clients ----------------------------------------------------------------------------

    def _make_client(self) -> Any:
        """The asyncio client of the chosen protocol (created on the running event loop)."""
        if self.protocol == "grpc":
            import tritonclient.grpc as grpcclient
            import tritonclient.grpc.aio as grpc_aio

            keepalive = grpcclient.KeepAliveOptions()
            max_message = grpcclient.MAX_GRPC_MESSAGE_SIZE
            channel_args = [
                ("grpc.max_send_message_length", max_message),
                ("grpc.max_receive_message_length", max_message),
                ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
                ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
                ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
                ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", _MAX_RECONNECT_BACKOFF_MS),
            ]
            return grpc_aio.InferenceServerClient(self.url, channel_args=channel_args)
        import tritonclient.http.aio as http_aio

        return http_aio.InferenceServerClient(self.url, conn_limit=64, conn_timeout=self.timeout)

    def _timeout_kw(self) -> dict[str, float]:
        """Per-call deadline keyword (gRPC); the HTTP client has its session-wide timeout."""
        return {"client_timeout": self.timeout} if self.protocol == "grpc" else {}

    # -- error classification ---------------------------------------------------------------

    def _classify(self, exc: BaseException) -> str:
        """``retry`` (transient), ``timeout``, ``reject`` (bad data) or ``error``."""
        from tritonclient.utils import InferenceServerException

        if isinstance(exc, TimeoutError):
            return "timeout"
        if isinstance(exc, InferenceServerException):
            status = str(exc.status() or "")
            if status in _RETRY_GRPC or status in _RETRY_HTTP:
                return "retry"
            if status in _TIMEOUT_GRPC:
                return "timeout"
            if status in _REJECT_GRPC or status == "400":
                return "reject"
            return "error"
        if self.protocol == "http":
            import aiohttp

            if isinstance(exc, aiohttp.ServerTimeoutError):
                return "timeout"
            if isinstance(exc, aiohttp.ClientError | OSError):
                return "retry"
        elif isinstance(exc, OSError):
            return "retry"
        return "error"

    @staticmethod
    def _message(exc: BaseException) -> str:
        from tritonclient.utils import InferenceServerException

        if isinstance(exc, InferenceServerException):
            status = exc.status()
            return f"{status}: {exc.message()}" if status else str(exc.message())
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    async def _call(self, what: str, make: Callable[[], Awaitable[T]], retries: int | None = None) -> T:
        """Run one client call with the timeout and bounded retries on transient failures;
        raise :class:`BackendUnavailable` when Triton cannot be reached or answers in time."""
        retries = self.retries if retries is None else retries
        attempt = 0
        while True:
            try:
                async with asyncio.timeout(self.timeout):
                    return await make()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                kind = self._classify(exc)
                if kind == "retry" and attempt < retries:
                    attempt += 1
                    await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
                    continue
                if kind == "retry":
                    tries = f" after {attempt + 1} attempts" if attempt else ""
                    raise BackendUnavailable(
                        f"{self._describe()}: {what} failed{tries}: {self._message(exc)}",
                        f"{_PUBLIC} is unreachable; retry later",
                    ) from exc
                if kind == "timeout":
                    raise BackendUnavailable(
                        f"{self._describe()}: {what}: no answer within {self.timeout}s ({self._message(exc)})",
                        f"{_PUBLIC} did not answer in time; retry later",
                    ) from exc
                raise

    # -- InferenceBackend ---------------------------------------------------------------------

    async def load(self, artifact: ModelArtifact) -> None:
        card = artifact.card
        self._card = card
        self.model = self._model_override or card.name
        spec = card.input
        if spec.dtype not in OIP_DATATYPES:
            raise ModelLoadError("invalid", artifact.card_uri, f"input dtype {spec.dtype!r} has no KServe v2 datatype")
        self._input_name = spec.name
        self._input_datatype = OIP_DATATYPES[spec.dtype]
        probs = card.probabilities_spec
        self._probs_name = probs.name
        self._n_features = card.n_features
        n_classes = probs.shape[1]
        self._n_classes = n_classes if n_classes is not None and n_classes > 0 else None
        if self._client is None:
            self._client = self._make_client()
        self._verify_lock = asyncio.Lock()
        self._verified = False
        self._status_ok, self._status_at, self._reason = False, 0.0, "not checked yet"
        try:
            await self._verify(raise_invalid=True)
        except BackendError as exc:
            # Triton is not there yet (the compose file starts both at once) or has not loaded the
            # model: the service comes up not ready and follows Triton from here on.
            self._set_status(False, str(exc))
            log.warning("%s; the service stays not ready until Triton serves the model", exc)
            return
        self._set_status(True, None)
        log.info(
            "serving %s through %s (max_batch_size %s)", self.model, self._describe(), self._max_batch or "none"
        )

    async def _verify(self, raise_invalid: bool) -> None:
        """Check (once per Triton start) that Triton serves the model as the card describes it.

        Raises :class:`BackendUnavailable` when Triton is down or the model not ready, and, for a
        mismatch, ``ModelLoadError("invalid")`` (``raise_invalid``, at load) or :class:`BackendUnavailable`
        (later: readiness reports the reason).
        """
        assert self._verify_lock is not None
        async with self._verify_lock:
            if self._verified:
                return
            client = self._client
            live = await self._call("server live", lambda: client.is_server_live(**self._timeout_kw()), retries=0)
            if not live:
                raise BackendUnavailable(f"{self._describe()}: the server is not live", f"{_PUBLIC} is not live")
            ready = await self._call(
                "model ready",
                lambda: client.is_model_ready(self.model, self.version, **self._timeout_kw()),
                retries=0,
            )
            if not ready:
                raise BackendUnavailable(
                    f"{self._describe()}: the model is not ready on the server",
                    f"model {self.model!r} is not ready on {_PUBLIC}; retry later",
                )
            try:
                metadata, config = await self._metadata()
            except BackendError:
                raise
            except Exception as exc:  # e.g. the model was unloaded between the two calls
                raise BackendUnavailable(
                    f"{self._describe()}: reading the model's metadata failed: {self._message(exc)}",
                    f"model {self.model!r} is not ready on {_PUBLIC}; retry later",
                ) from exc
            problem = self._mismatch(metadata)
            if problem is not None:
                where = f"triton://{self.url}/{self.model}"
                if raise_invalid:
                    raise ModelLoadError("invalid", where, f"Triton's model does not match the card: {problem}")
                raise BackendUnavailable(
                    f"{self._describe()} does not match the card: {problem}",
                    f"model {self.model!r} on {_PUBLIC} does not match its card",
                )
            self._max_batch = int(config.get("max_batch_size", 0) or 0)
            self._verified = True

    async def _metadata(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Model metadata and configuration as JSON dicts (both protocols)."""
        client = self._client
        if self.protocol == "grpc":
            metadata = await self._call(
                "model metadata",
                lambda: client.get_model_metadata(self.model, self.version, as_json=True, **self._timeout_kw()),
            )
            config = await self._call(
                "model config",
                lambda: client.get_model_config(self.model, self.version, as_json=True, **self._timeout_kw()),
            )
            return dict(metadata), dict(config.get("config", {}))
        metadata = await self._call("model metadata", lambda: client.get_model_metadata(self.model, self.version))
        config = await self._call("model config", lambda: client.get_model_config(self.model, self.version))
        return dict(metadata), dict(config)

    def _mismatch(self, metadata: dict[str, Any]) -> str | None:
        """What in Triton's model metadata contradicts the card, or None."""
        inputs = {t.get("name"): t for t in metadata.get("inputs", [])}
        outputs = {t.get("name"): t for t in metadata.get("outputs", [])}
        if self._input_name not in inputs:
            return f"inputs are {sorted(map(str, inputs))}, the card declares {self._input_name!r}"
        tensor = inputs[self._input_name]
        if tensor.get("datatype") != self._input_datatype:
            return f"input {self._input_name!r} is {tensor.get('datatype')}, the card says {self._input_datatype}"
        shape = [int(d) for d in tensor.get("shape", [])]
        if not shape or shape[-1] not in (-1, self._n_features):
            return f"input {self._input_name!r} has shape {shape}, the card says [-1, {self._n_features}]"
        if self._probs_name not in outputs:
            return f"outputs are {sorted(map(str, outputs))}, the card's probabilities are {self._probs_name!r}"
        out = outputs[self._probs_name]
        if out.get("datatype") not in ("FP32", "FP64", "FP16"):
            return f"output {self._probs_name!r} is {out.get('datatype')}, not a float tensor"
        out_shape = [int(d) for d in out.get("shape", [])]
        if self._n_classes is not None and (not out_shape or out_shape[-1] not in (-1, self._n_classes)):
            return f"output {self._probs_name!r} has shape {out_shape}, the card says {self._n_classes} classes"
        return None

    def _set_status(self, ok: bool, reason: str | None) -> None:
        if ok != self._status_ok and self._status_at:
            if ok:
                log.info("%s is available again", self._describe())
            else:
                log.warning("%s is not available: %s", self._describe(), reason)
        self._status_ok, self._status_at = ok, time.monotonic()
        self._reason = None if ok else reason

    async def ready(self) -> bool:
        """Server live and model ready (cached for a second); verifies the model on first contact."""
        if self._client is None or self._card is None:
            return False
        if time.monotonic() - self._status_at < _STATUS_TTL:
            return self._status_ok
        client = self._client
        try:
            live = await self._call("server live", lambda: client.is_server_live(**self._timeout_kw()), retries=0)
            if not live:
                raise BackendUnavailable(f"{self._describe()}: the server is not live")
            ready = await self._call(
                "model ready", lambda: client.is_model_ready(self.model, self.version, **self._timeout_kw()), retries=0
            )
            if not ready:
                raise BackendUnavailable(f"{self._describe()}: the model is not ready on the server")
            if not self._verified:
                await self._verify(raise_invalid=False)
        except BackendError as exc:
            self._verified = self._verified and not isinstance(exc, BackendUnavailable)
            self._set_status(False, str(exc))
            return False
        except Exception as exc:  # an unexpected client error: not ready, say why
            self._set_status(False, f"{self._describe()}: {self._message(exc)}")
            return False
        self._set_status(True, None)
        return True

    def _request(self, batch: np.ndarray) -> tuple[list[Any], list[Any]]:
        if self.protocol == "grpc":
            import tritonclient.grpc as grpcclient

            tensor = grpcclient.InferInput(self._input_name, list(batch.shape), self._input_datatype)
            tensor.set_data_from_numpy(batch)
            return [tensor], [grpcclient.InferRequestedOutput(self._probs_name)]
        import tritonclient.http as httpclient

        tensor = httpclient.InferInput(self._input_name, list(batch.shape), self._input_datatype)
        tensor.set_data_from_numpy(batch, binary_data=True)
        return [tensor], [httpclient.InferRequestedOutput(self._probs_name, binary_data=True)]

    async def _infer_one(self, batch: np.ndarray) -> np.ndarray:
        inputs, outputs = self._request(batch)
        client = self._client
        try:
            result = await self._call(
                "inference",
                lambda: client.infer(
                    self.model, inputs, model_version=self.version, outputs=outputs, **self._timeout_kw()
                ),
            )
        except BackendUnavailable:
            raise
        except Exception as exc:
            raise await self._explain(exc) from exc
        probabilities = result.as_numpy(self._probs_name)
        if probabilities is None:
            raise BackendError(f"{self._describe()} answered without output {self._probs_name!r}")
        probabilities = np.asarray(probabilities, dtype=np.float32)
        n = len(batch)
        if probabilities.ndim != 2 or probabilities.shape[0] != n or (
            self._n_classes is not None and probabilities.shape[1] != self._n_classes
        ):
            raise BackendError(
                f"{self._describe()} answered {self._probs_name!r} of shape {probabilities.shape} for {n} rows"
            )
        return probabilities

    async def _explain(self, exc: BaseException) -> BackendError:
        """Turn a non-transient inference error into 503 (Triton or the model is not ready), 422
        (Triton refused the data) or 500."""
        message = self._message(exc)
        self._status_at = time.monotonic() - _STATUS_TTL  # expired: the next readiness check asks again
        if not await self.ready():
            return BackendUnavailable(
                f"{self._describe()}: inference failed ({message}); {self._reason}",
                f"model {self.model!r} is not ready on {_PUBLIC}; retry later",
            )
        if self._classify(exc) == "reject":
            return BackendRejected(f"Triton rejected the input: {message}")
        return BackendError(f"{self._describe()}: inference failed: {message}")

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        if self._client is None or self._card is None:
            raise BackendUnavailable(f"{self._describe()}: the model is not loaded")
        try:
            if not self._verified:
                await self._verify(raise_invalid=False)
            rows = np.ascontiguousarray(batch, dtype=np.float32)
            step = self._max_batch
            if step <= 0 or len(rows) <= step:
                out = await self._infer_one(rows)
            else:  # over Triton's max_batch_size: several requests at once (its batcher merges them)
                parts = await asyncio.gather(
                    *(self._infer_one(rows[i : i + step]) for i in range(0, len(rows), step))
                )
                out = np.concatenate(parts)
        except BackendUnavailable as exc:
            self._verified = False  # Triton may come back with another model: check again then
            self._set_status(False, str(exc))
            raise
        if not self._status_ok:
            self._set_status(True, None)
        return out

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except Exception as exc:  # closing a broken channel must not fail the shutdown
                log.debug("closing the Triton client failed: %s", exc)
        self._card = None
        self._status_ok = False
