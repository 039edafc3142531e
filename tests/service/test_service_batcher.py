"""The micro-batcher's inference thread: how batches form (everything queued, up to the maximum,
requests never split), and what it keeps doing when runs fail, clients leave or the service stops
(a blocking fake backend, no model, no HTTP)."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from service.backends.base import BackendError, InferenceBackend
from service.batching import MicroBatcher
from service.model_source import ModelArtifact


@pytest.fixture(autouse=True)
def _gil_only_when_the_loop_waits() -> Iterator[None]:
    """The inference thread gets the GIL only once the event loop waits for I/O, never in the middle
    of a loop turn: what a batch takes is then what the test queued in that turn."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(10.0)
    yield
    sys.setswitchinterval(before)


class _Blocking(InferenceBackend):
    """An in-process backend whose runs are all expensive: every batch goes to the inference thread.
    ``gate``: each run waits for it; a run with a row of request ``fail_request`` raises."""

    name = "blocking"
    blocking_ok = True

    def __init__(self, gate: threading.Event | None = None, fail_request: int | None = None) -> None:
        self.runs: list[int] = []
        self.gate = gate
        self.fail_request = fail_request
        self.running = threading.Event()

    async def load(self, artifact: ModelArtifact) -> None:
        return None

    async def ready(self) -> bool:
        return True

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        raise AssertionError("a blocking_ok backend runs on the inference thread")

    def infer_blocking(self, batch: np.ndarray) -> np.ndarray:
        self.runs.append(len(batch))
        self.running.set()
        if self.gate is not None:
            assert self.gate.wait(10), "the test never opened the gate"
        if self.fail_request is not None and (batch[:, 0] == self.fail_request).any():
            raise RuntimeError("device lost")
        return np.stack([batch.sum(axis=1), batch[:, 0]], axis=1)

    async def close(self) -> None:
        return None


def _rows(i: int, n: int = 1) -> np.ndarray:
    """``n`` rows that identify request ``i``."""
    return np.full((n, 4), float(i), dtype=np.float32) + np.arange(n, dtype=np.float32)[:, None]


def _want(rows: np.ndarray) -> np.ndarray:
    return np.stack([rows.sum(axis=1), rows[:, 0]], axis=1)


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.001)


async def _started(batcher: MicroBatcher, backend: _Blocking) -> None:
    """Start ``batcher`` and its inference thread (one request), and wait until the thread is idle."""
    batcher.start()
    np.testing.assert_array_equal(await batcher.predict(_rows(0)), _want(_rows(0)))
    await _until(lambda: not batcher._thread_busy)
    backend.runs.clear()


def test_requests_queued_in_one_loop_turn_for_the_idle_thread_run_as_one_batch() -> None:
    async def go() -> tuple[list[int], list[np.ndarray], list[np.ndarray]]:
        backend = _Blocking()
        batcher = MicroBatcher(backend, max_rows=128)
        await _started(batcher, backend)
        requests = [_rows(i) for i in range(1, 33)]
        out = await asyncio.gather(*(batcher.predict(r) for r in requests))  # all queued in one loop turn
        await batcher.stop()
        return backend.runs, requests, list(out)

    runs, requests, out = asyncio.run(go())
    assert runs == [32]
    for rows, got in zip(requests, out, strict=True):
        np.testing.assert_array_equal(got, _want(rows))


def test_work_queued_during_a_run_goes_whole_into_the_next_run() -> None:
    async def go() -> list[int]:
        gate = threading.Event()
        backend = _Blocking(gate)
        gate.set()
        batcher = MicroBatcher(backend, max_rows=128)
        await _started(batcher, backend)
        gate.clear()
        backend.running.clear()
        first = [asyncio.ensure_future(batcher.predict(_rows(i))) for i in (1, 2)]
        await _until(backend.running.is_set)  # both run, held at the gate
        later = [asyncio.ensure_future(batcher.predict(_rows(i))) for i in range(3, 13)]
        await asyncio.sleep(0.01)  # all of them queued while the run waits
        gate.set()
        for i, fut in zip([1, 2, *range(3, 13)], [*first, *later], strict=True):
            np.testing.assert_array_equal(await fut, _want(_rows(i)))
        await batcher.stop()
        return backend.runs

    assert asyncio.run(go()) == [2, 10]


def test_one_request_alone_runs_at_once_and_alone() -> None:
    async def go() -> list[int]:
        backend = _Blocking()
        batcher = MicroBatcher(backend, max_rows=128)
        await _started(batcher, backend)
        for i in range(1, 4):
            np.testing.assert_array_equal(await batcher.predict(_rows(i, 3)), _want(_rows(i, 3)))
            await _until(lambda: not batcher._thread_busy)
        await batcher.stop()
        return backend.runs

    assert asyncio.run(go()) == [3, 3, 3]


@pytest.mark.parametrize("sizes", [[20, 1, 1], [3] * 10, [1, 50, 2, 2]], ids=["big-first", "even", "big-middle"])
def test_thread_batches_keep_the_maximum_and_never_split_a_request(sizes: list[int]) -> None:
    async def go() -> tuple[list[int], list[np.ndarray], list[np.ndarray]]:
        backend = _Blocking()
        batcher = MicroBatcher(backend, max_rows=8)
        await _started(batcher, backend)
        requests = [_rows(i, n) for i, n in enumerate(sizes, 1)]
        out = await asyncio.gather(*(batcher.predict(r) for r in requests))
        await batcher.stop()
        return backend.runs, requests, list(out)

    runs, requests, out = asyncio.run(go())
    assert sum(runs) == sum(sizes)
    for rows, got in zip(requests, out, strict=True):
        np.testing.assert_array_equal(got, _want(rows))
    assert all(n <= 8 or n in sizes for n in runs), runs  # over the maximum: one request, alone


def test_a_failed_run_fails_its_requests_only_and_the_thread_goes_on() -> None:
    async def go() -> tuple[list[object], list[object]]:
        gate = threading.Event()
        backend = _Blocking(gate, fail_request=1)
        gate.set()
        batcher = MicroBatcher(backend, max_rows=128)
        await _started(batcher, backend)
        gate.clear()
        backend.running.clear()
        first = [asyncio.ensure_future(batcher.predict(_rows(i))) for i in (1, 2)]  # one run: it fails
        await _until(backend.running.is_set)
        later = [asyncio.ensure_future(batcher.predict(_rows(i))) for i in (3, 4)]
        await asyncio.sleep(0.01)
        gate.set()
        results = await asyncio.gather(*first, *later, return_exceptions=True)
        after = await asyncio.gather(*(batcher.predict(_rows(i)) for i in (5, 6)), return_exceptions=True)
        await batcher.stop()
        assert backend.runs[:2] == [2, 2] and sum(backend.runs[2:]) == 2
        return list(results), list(after)

    results, after = asyncio.run(go())
    for error in results[:2]:
        assert isinstance(error, BackendError) and "device lost" in str(error)
    for i, got in zip((3, 4), results[2:], strict=True):
        np.testing.assert_array_equal(got, _want(_rows(i)))
    for i, got in zip((5, 6), after, strict=True):
        np.testing.assert_array_equal(got, _want(_rows(i)))


def test_a_request_cancelled_while_queued_is_left_out_of_its_batch() -> None:
    async def go() -> tuple[list[int], list[object]]:
        gate = threading.Event()
        backend = _Blocking(gate)
        gate.set()
        batcher = MicroBatcher(backend, max_rows=128)
        await _started(batcher, backend)
        gate.clear()
        backend.running.clear()
        held = asyncio.ensure_future(batcher.predict(_rows(1)))
        await _until(backend.running.is_set)
        queued = [asyncio.ensure_future(batcher.predict(_rows(i))) for i in (2, 3, 4)]
        await asyncio.sleep(0.01)
        queued[1].cancel()
        gate.set()
        results = await asyncio.gather(held, *queued, return_exceptions=True)
        await batcher.stop()
        return backend.runs, list(results)

    runs, results = asyncio.run(go())
    assert runs == [1, 2]
    assert isinstance(results[2], asyncio.CancelledError)
    for i in (0, 1, 3):
        np.testing.assert_array_equal(results[i], _want(_rows(i + 1)))


def test_stop_finishes_the_queued_work_then_refuses_new_requests() -> None:
    async def go() -> tuple[list[object], list[int], bool]:
        gate = threading.Event()
        backend = _Blocking(gate)
        gate.set()
        batcher = MicroBatcher(backend, max_rows=128)
        await _started(batcher, backend)
        thread = batcher._thread
        gate.clear()
        backend.running.clear()
        pending = [asyncio.ensure_future(batcher.predict(_rows(i))) for i in (1, 2)]
        await _until(backend.running.is_set)
        pending += [asyncio.ensure_future(batcher.predict(_rows(i))) for i in (3, 4, 5)]
        await asyncio.sleep(0.01)
        stopping = asyncio.ensure_future(batcher.stop())
        await asyncio.sleep(0.01)
        with pytest.raises(BackendError, match="not running"):
            await batcher.predict(_rows(9))
        gate.set()
        await stopping
        results = await asyncio.gather(*pending, return_exceptions=True)
        assert thread is not None
        return list(results), backend.runs, thread.is_alive()

    results, runs, alive = asyncio.run(go())
    for i, got in zip(range(1, 6), results, strict=True):
        np.testing.assert_array_equal(got, _want(_rows(i)))
    assert runs == [2, 3]
    assert not alive
