"""The inference backend seam.

A backend turns a ``float32 [N, n_features]`` batch into ``[N, n_classes]`` probabilities. The
in-process ONNX Runtime backend is the ``mvp`` one; a Triton (KServe v2 over HTTP/gRPC) or
TensorFlow Serving (REST) backend implements the same four coroutines, and everything around it
(validation, micro-batching, prediction log, metrics) stays the same.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import numpy as np

from service.model_source import ModelArtifact


class BackendError(Exception):
    """Inference failed for a reason that is not the client's fault (the service answers 500).

    ``status``, ``field``, ``rule`` and :attr:`public_message` make the error answer; the exception's
    own text (which may name internal hosts) goes to the log only.
    """

    status: int = 500
    field: str = ""
    rule: str = "inference"

    @property
    def public_message(self) -> str:
        return "inference failed"


class BackendUnavailable(BackendError):
    """A remote inference server is unreachable, overloaded, timed out or does not serve the model
    right now: the service answers 503 (retry later)."""

    status = 503
    rule = "backend_unavailable"

    def __init__(self, message: str, public: str = "the inference backend is unavailable; retry later") -> None:
        super().__init__(message)
        self._public = public

    @property
    def public_message(self) -> str:
        return self._public


class BackendRejected(BackendError):
    """A remote inference server refused the request's data as invalid: a 4xx naming the problem."""

    rule = "backend_rejected"

    def __init__(self, message: str, status: int = 422, field: str = "instances") -> None:
        super().__init__(message)
        self.status = status
        self.field = field

    @property
    def public_message(self) -> str:
        return str(self)


class InferenceBackend(abc.ABC):
    """Abstract inference backend; one instance serves one model."""

    #: the value of ``BACKEND`` that selects this class
    name: ClassVar[str]
    #: whether :meth:`load` needs the model bytes (an in-process runtime) or only the card
    needs_model_bytes: ClassVar[bool] = True
    #: whether the model is served by another server that comes and goes on its own (Triton): a
    #: load that could not reach it still succeeds (card checked), and readiness follows the server
    remote: ClassVar[bool] = False

    @property
    def unready_reason(self) -> str | None:
        """Why :meth:`ready` last answered False, when the backend knows (shown by ``/readyz``)."""
        return None

    @abc.abstractmethod
    async def load(self, artifact: ModelArtifact) -> None:
        """Make the verified model servable; raise ``ModelLoadError("invalid", ...)`` if it does not
        match its card (input/output names, shapes)."""

    @abc.abstractmethod
    async def ready(self) -> bool:
        """True when :meth:`infer` can be called."""

    @abc.abstractmethod
    async def infer(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities ``[N, n_classes]`` for a ``float32 [N, n_features]`` batch, row for row."""

    #: whether :meth:`infer_blocking` may be called from a worker thread (in-process runtimes)
    blocking_ok: ClassVar[bool] = False

    def infer_inline(self, batch: np.ndarray) -> np.ndarray | None:
        """Optional fast path: the probabilities, computed right now on the calling (event loop)
        thread, or None when a run would block the loop for too long. Remote backends keep this
        default."""
        return None

    def infer_blocking(self, batch: np.ndarray) -> np.ndarray:
        """Optional: one blocking run, called from the batcher's inference thread when
        :attr:`blocking_ok` (it then never waits for the event loop between two runs)."""
        raise NotImplementedError

    @abc.abstractmethod
    async def close(self) -> None:
        """Release sessions, threads and connections."""
