"""Adaptive micro-batching: merged requests give exactly what single runs give."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.backends.base import BackendError, InferenceBackend
from service.backends.onnx import OnnxBackend
from service.batching import Dispatcher, MicroBatcher
from service.model_source import ModelArtifact, fetch_model
from tests.service.helpers import ServiceProcess, metric_value


def _artifact(model_dir: Path) -> ModelArtifact:
    return fetch_model(str(model_dir / "model.onnx"), None, None, lambda: None)


def _requests(digits: tuple, sizes: list[int]) -> list[np.ndarray]:
    x_test = digits[0]
    out, start = [], 0
    for n in sizes:
        out.append(np.ascontiguousarray(x_test[start : start + n]))
        start += n
    return out


@pytest.mark.parametrize("offload_ms", [1000.0, 0.0], ids=["inline-runs", "inference-thread"])
def test_merged_requests_equal_single_runs(demo_model: Path, digits: tuple, offload_ms: float) -> None:
    sizes = [1, 3, 2, 5, 1, 4, 1, 1, 2, 7, 3, 1] * 3
    requests = _requests(digits, sizes)
    runs: list[tuple[int, int]] = []

    async def go() -> tuple[list[np.ndarray], list[np.ndarray]]:
        backend = OnnxBackend(threads=1, offload_ms=offload_ms)
        await backend.load(_artifact(demo_model))
        batcher = MicroBatcher(backend, max_rows=64, observe=lambda rows, reqs, _s: runs.append((rows, reqs)))
        batcher.start()
        merged = await asyncio.gather(*(batcher.predict(r) for r in requests))
        await batcher.stop()
        singles = [await backend.infer(r) for r in requests]
        await backend.close()
        return list(merged), singles

    merged, singles = asyncio.run(go())
    for got, want, rows in zip(merged, singles, requests, strict=True):
        assert got.shape == (len(rows), 10)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        assert (got.argmax(1) == want.argmax(1)).all()
    assert sum(reqs for _, reqs in runs) == len(requests)
    assert sum(rows for rows, _ in runs) == sum(sizes)
    assert len(runs) < len(requests), f"nothing was merged: {runs}"
    assert max(rows for rows, _ in runs) <= 64


def test_batches_never_exceed_the_maximum_and_big_requests_run_alone(demo_model: Path, digits: tuple) -> None:
    requests = _requests(digits, [3] * 10 + [20])
    runs: list[tuple[int, int]] = []

    async def go() -> list[np.ndarray]:
        backend = OnnxBackend(threads=1, offload_ms=1000.0)
        await backend.load(_artifact(demo_model))
        batcher = MicroBatcher(backend, max_rows=8, observe=lambda rows, reqs, _s: runs.append((rows, reqs)))
        batcher.start()
        out = await asyncio.gather(*(batcher.predict(r) for r in requests))
        await batcher.stop()
        return list(out)

    out = asyncio.run(go())
    assert [len(o) for o in out] == [3] * 10 + [20]
    assert (20, 1) in runs  # larger than BATCH_MAX_SIZE: alone, never split
    assert all(rows <= 8 for rows, reqs in runs if reqs > 1)
    assert sum(reqs for _, reqs in runs) == 11


def test_an_idle_request_runs_at_once_and_alone(demo_model: Path, digits: tuple) -> None:
    runs: list[tuple[int, int]] = []

    async def go() -> None:
        backend = OnnxBackend(threads=1, offload_ms=1000.0)
        await backend.load(_artifact(demo_model))
        batcher = MicroBatcher(backend, max_rows=64, observe=lambda rows, reqs, _s: runs.append((rows, reqs)))
        batcher.start()
        for rows in _requests(digits, [1, 2, 1]):
            await batcher.predict(rows)
        await batcher.stop()

    asyncio.run(go())
    assert runs == [(1, 1), (2, 1), (1, 1)]


def test_a_cancelled_request_is_dropped_from_its_batch(demo_model: Path, digits: tuple) -> None:
    async def go() -> list[object]:
        backend = OnnxBackend(threads=1, offload_ms=1000.0)
        await backend.load(_artifact(demo_model))
        batcher = MicroBatcher(backend, max_rows=64)
        batcher.start()
        a, b, c = (asyncio.ensure_future(batcher.predict(r)) for r in _requests(digits, [1, 1, 1]))
        await asyncio.sleep(0)  # all three queued, the drain not yet run
        b.cancel()
        results = await asyncio.gather(a, b, c, return_exceptions=True)
        await batcher.stop()
        return results

    first, second, third = asyncio.run(go())
    assert isinstance(first, np.ndarray) and isinstance(third, np.ndarray)
    assert isinstance(second, asyncio.CancelledError)


class _Failing(InferenceBackend):
    name = "failing"

    def __init__(self) -> None:
        self.calls = 0

    async def load(self, artifact: ModelArtifact) -> None:
        return None

    async def ready(self) -> bool:
        return True

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        await asyncio.sleep(0)
        if self.calls == 1:
            raise RuntimeError("device lost")
        return np.full((len(batch), 2), 0.5, dtype=np.float32)

    async def close(self) -> None:
        return None


def test_a_backend_failure_fails_that_batch_only() -> None:
    async def go() -> tuple[list[object], np.ndarray]:
        backend = _Failing()
        batcher = MicroBatcher(backend, max_rows=64)
        batcher.start()
        rows = np.zeros((1, 4), dtype=np.float32)
        failed = await asyncio.gather(*(batcher.predict(rows) for _ in range(3)), return_exceptions=True)
        after = await batcher.predict(rows)
        await batcher.stop()
        return failed, after

    failed, after = asyncio.run(go())
    assert all(isinstance(f, BackendError) and "device lost" in str(f) for f in failed)
    assert after.shape == (1, 2)


def test_without_batching_every_request_runs_alone(demo_model: Path, digits: tuple) -> None:
    runs: list[tuple[int, int]] = []

    async def go() -> None:
        backend = OnnxBackend(threads=1, offload_ms=0.0)
        await backend.load(_artifact(demo_model))
        dispatcher = Dispatcher(backend, observe=lambda rows, reqs, _s: runs.append((rows, reqs)))
        await asyncio.gather(*(dispatcher.predict(r) for r in _requests(digits, [2, 1, 3])))
        await backend.close()

    asyncio.run(go())
    assert sorted(runs) == [(1, 1), (2, 1), (3, 1)]


def test_concurrent_http_requests_are_merged(service: ServiceProcess, digits: tuple) -> None:
    x_test = digits[0]

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=service.base, timeout=30) as http:

            async def one(i: int) -> httpx.Response:
                return await http.post("/v1/predict", json={"instances": [x_test[i % 100].tolist()]})

            return list(await asyncio.gather(*(one(i) for i in range(300))))

    with service.client() as http:
        before = http.get("/metrics").text
    responses = asyncio.run(go())
    assert all(r.status_code == 200 for r in responses)
    with service.client() as http:
        after = http.get("/metrics").text
    requests = (metric_value(after, "inference_batch_requests_sum") or 0) - (
        metric_value(before, "inference_batch_requests_sum") or 0
    )
    runs = (metric_value(after, "inference_batch_requests_count") or 0) - (
        metric_value(before, "inference_batch_requests_count") or 0
    )
    assert requests == 300
    assert runs < 300, "no request was merged with another"
