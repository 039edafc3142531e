"""Inference backends, selected by ``BACKEND``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.backends.base import BackendError, InferenceBackend

if TYPE_CHECKING:
    from service.settings import Settings

__all__ = ["BackendError", "InferenceBackend", "create_backend"]


def create_backend(settings: Settings) -> InferenceBackend:
    """The backend named by ``BACKEND`` (``onnx`` now; ``triton`` and ``tfserving`` plug in here)."""
    if settings.backend == "onnx":
        from service.backends.onnx import OnnxBackend

        return OnnxBackend(threads=settings.ort_threads, offload_ms=settings.infer_offload_ms)
    if settings.backend == "triton":
        from service.backends.triton import TritonBackend

        return TritonBackend(
            settings.triton_url,
            protocol=settings.triton_protocol,
            model=settings.triton_model,
            version=settings.triton_model_version,
            timeout=settings.triton_timeout_seconds,
            retries=settings.triton_retries,
            retry_backoff_ms=settings.triton_retry_backoff_ms,
        )
    if settings.backend == "tfserving":
        from service.backends.tfserving import TfServingBackend

        return TfServingBackend(
            settings.tfserving_url,
            model=settings.tfserving_model,
            version=settings.tfserving_model_version,
            signature=settings.tfserving_signature,
            request_format=settings.tfserving_format,
            timeout=settings.tfserving_timeout_seconds,
            retries=settings.tfserving_retries,
            retry_backoff_ms=settings.tfserving_retry_backoff_ms,
        )
    raise ValueError(f"unknown BACKEND {settings.backend!r}; available: onnx")
