"""In-process ONNX Runtime backend (CPU).

``ORT_THREADS`` sets ``intra_op_num_threads`` (default 1: on a small container the default "all
cores" pool gives a much worse p99 for small models). Runs that are cheap (a moving average under
``INFER_OFFLOAD_MS``) execute inline on the event loop, where a thread hand-off would cost more than
the run itself; expensive runs go to an inference thread (the batcher's, see ``service.batching``)
so that the event loop keeps accepting requests while ONNX Runtime computes with the GIL released.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import numpy as np

from service.backends.base import BackendError, InferenceBackend
from service.model_source import ModelArtifact, ModelLoadError

_EWMA_ALPHA = 0.2


class OnnxBackend(InferenceBackend):
    name: ClassVar[str] = "onnx"

    def __init__(self, threads: int = 1, offload_ms: float = 0.5) -> None:
        self._threads = threads
        self._offload_s = offload_ms / 1000.0
        self._session: Any = None
        self._input_name = ""
        self._output_names: list[str] = []
        self._n_features = 0
        self._n_classes: int | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._run_s = 0.0  # moving average of one session run, seconds

    async def load(self, artifact: ModelArtifact) -> None:
        self._session = await asyncio.to_thread(self._create_session, artifact)
        self._run_s = self._warm_up()

    def _create_session(self, artifact: ModelArtifact) -> Any:
        import onnxruntime as ort

        card = artifact.card
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(artifact.data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise ModelLoadError("invalid", artifact.uri, f"ONNX Runtime cannot load it: {exc}") from None
        inputs = session.get_inputs()
        spec = card.input
        if len(inputs) != 1 or inputs[0].name != spec.name:
            names = [i.name for i in inputs]
            raise ModelLoadError(
                "invalid", artifact.uri, f"the graph's inputs are {names}, the card declares [{spec.name!r}]"
            )
        if inputs[0].type != "tensor(float)":
            raise ModelLoadError("invalid", artifact.uri, f"input {spec.name!r} is {inputs[0].type}, not float32")
        dims = inputs[0].shape
        if len(dims) != 2 or (isinstance(dims[1], int) and dims[1] != card.n_features):
            raise ModelLoadError(
                "invalid", artifact.uri, f"input {spec.name!r} has shape {dims}, the card says {spec.shape}"
            )
        probs = card.probabilities_spec
        outputs = {o.name: o for o in session.get_outputs()}
        if probs.name not in outputs:
            raise ModelLoadError(
                "invalid", artifact.uri, f"the graph has no output {probs.name!r} (outputs: {sorted(outputs)})"
            )
        self._input_name = spec.name
        self._output_names = [probs.name]
        self._n_features = card.n_features
        self._n_classes = probs.shape[1]
        return session

    def _warm_up(self) -> float:
        sample = np.zeros((1, self._n_features), dtype=np.float32)
        self._run(sample)
        start = time.perf_counter()
        out = self._run(sample)
        elapsed = time.perf_counter() - start
        if out.ndim != 2 or out.shape[0] != 1 or (self._n_classes is not None and out.shape[1] != self._n_classes):
            self._session = None
            raise ModelLoadError("invalid", "model", f"probabilities came out with shape {out.shape}")
        return elapsed

    def _run(self, batch: np.ndarray) -> np.ndarray:
        out = self._session.run(self._output_names, {self._input_name: batch})[0]
        return np.asarray(out, dtype=np.float32)

    def _timed_run(self, batch: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = self._run(batch)
        self._run_s += _EWMA_ALPHA * ((time.perf_counter() - start) - self._run_s)
        return out

    async def ready(self) -> bool:
        return self._session is not None

    blocking_ok: ClassVar[bool] = True

    def infer_inline(self, batch: np.ndarray) -> np.ndarray | None:
        if self._run_s >= self._offload_s or self._session is None:
            return None
        return self.infer_blocking(batch)

    def infer_blocking(self, batch: np.ndarray) -> np.ndarray:
        if self._session is None:
            raise BackendError("the model is not loaded")
        try:
            return self._timed_run(batch)
        except Exception as exc:
            raise BackendError(f"ONNX Runtime failed: {exc}") from exc

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        if self._session is None:
            raise BackendError("the model is not loaded")
        try:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ort")
            return await asyncio.get_running_loop().run_in_executor(self._pool, self._timed_run, batch)
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"ONNX Runtime failed: {exc}") from exc

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._session = None

    @property
    def average_run_ms(self) -> float:
        return self._run_s * 1000.0
