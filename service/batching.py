"""Adaptive micro-batching in front of a backend.

Greedy, with no batching window: requests queue their rows, and whoever runs the backend next takes
everything queued (up to ``BATCH_MAX_SIZE`` rows) as one batch and splits the result back. An idle
service therefore runs each request alone and at once; under load, everything that arrived during
the previous run becomes the next batch, so throughput grows with load without adding latency when
idle. A request larger than ``BATCH_MAX_SIZE`` rows runs alone; requests are never split.

Who runs the backend depends on how long a run takes:

- cheap runs (``InferenceBackend.infer_inline`` answers): a drain scheduled with ``loop.call_soon``
  right after the requests of the current event-loop turn have been parsed runs them inline;
- expensive runs of an in-process backend (``blocking_ok``): one inference thread loops "take all
  queued, run, hand results back to the loop" and starts the next batch the moment a run ends,
  without waiting for the event loop, which meanwhile keeps parsing requests and sending answers;
- other backends (remote ones): the same drain awaits ``InferenceBackend.infer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from service.backends.base import BackendError, InferenceBackend

#: called after every backend run with (rows, requests merged, seconds)
BatchObserver = Callable[[int, int, float], None]

_Item = tuple[np.ndarray, "asyncio.Future[np.ndarray]"]


class Dispatcher:
    """Runs one request's rows through the backend (no batching): ``BATCHING=off``."""

    def __init__(self, backend: InferenceBackend, observe: BatchObserver | None = None) -> None:
        self._backend = backend
        self._observe = observe

    def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def predict(self, rows: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = self._backend.infer_inline(rows)
        if out is None:
            out = await self._backend.infer(rows)
        if self._observe is not None:
            self._observe(len(rows), 1, time.perf_counter() - start)
        return out


class MicroBatcher(Dispatcher):
    """Merges concurrent requests into one backend run: ``BATCHING=on`` (the default)."""

    def __init__(
        self,
        backend: InferenceBackend,
        max_rows: int,
        observe: BatchObserver | None = None,
    ) -> None:
        super().__init__(backend, observe)
        self._max_rows = max_rows
        self._queue: deque[_Item] = deque()
        self._lock = threading.Lock()  # the queue is shared with the inference thread
        self._wake = threading.Condition(self._lock)
        self._scheduled = False
        self._running: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._thread_busy = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = True

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = False

    async def stop(self) -> None:
        self._stopping = True
        with self._wake:
            self._wake.notify_all()
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join, 30)
        running = self._running
        if running is not None:
            try:
                await asyncio.wait_for(asyncio.shield(running), timeout=10)
            except (TimeoutError, asyncio.CancelledError):
                running.cancel()
        with self._lock:
            left = list(self._queue)
            self._queue.clear()
        for _, fut in left:
            if not fut.done():
                fut.set_exception(BackendError("the service is shutting down"))

    async def predict(self, rows: np.ndarray) -> np.ndarray:
        loop = self._loop
        if loop is None or self._stopping:
            raise BackendError("the batcher is not running")
        fut: asyncio.Future[np.ndarray] = loop.create_future()
        with self._lock:
            self._queue.append((rows, fut))
            if self._thread_busy:
                pass  # the inference thread takes it with its next batch
            elif self._thread is not None and not self._scheduled:
                self._wake.notify()
            elif not self._scheduled and self._running is None:
                self._scheduled = True
                loop.call_soon(self._drain)
        return await fut

    def _take(self) -> list[_Item]:
        """Pop the next batch (call with the lock held)."""
        taken: list[_Item] = []
        rows = 0
        queue = self._queue
        while queue:
            item = queue[0]
            n = len(item[0])
            if taken and rows + n > self._max_rows:
                break
            queue.popleft()
            if item[1].done():  # the client went away
                continue
            taken.append(item)
            rows += n
        return taken

    @staticmethod
    def _batch(taken: list[_Item]) -> np.ndarray:
        return taken[0][0] if len(taken) == 1 else np.concatenate([rows for rows, _ in taken])

    # -- on the event loop ------------------------------------------------------------------------

    def _drain(self) -> None:
        """Run what is queued now, inline while runs are cheap."""
        self._scheduled = False
        while self._running is None and self._thread is None:
            with self._lock:
                taken = self._take()
            if not taken:
                return
            batch = self._batch(taken)
            start = time.perf_counter()
            try:
                out = self._backend.infer_inline(batch)
            except Exception as exc:
                self._fail(taken, exc)
                continue
            if out is not None:
                self._deliver(taken, out, start)
                continue
            if self._backend.blocking_ok:
                self._start_thread(taken)
            else:
                assert self._loop is not None
                self._running = self._loop.create_task(self._run_async(taken, batch), name="micro-batch")
            return

    async def _run_async(self, taken: list[_Item], batch: np.ndarray) -> None:
        start = time.perf_counter()
        try:
            out = await self._backend.infer(batch)
        except asyncio.CancelledError:
            self._fail(taken, BackendError("the service is shutting down"))
            raise
        except Exception as exc:
            self._fail(taken, exc)
        else:
            self._deliver(taken, out, start)
        finally:
            self._running = None
            if self._queue and not self._scheduled:
                # drain what queued up during the run at once, in this loop turn
                self._scheduled = True
                assert self._loop is not None
                self._loop.call_soon(self._drain)

    def _deliver(self, taken: list[_Item], out: np.ndarray, start: float) -> None:
        if self._observe is not None:
            self._observe(len(out), len(taken), time.perf_counter() - start)
        if len(taken) == 1:
            fut = taken[0][1]
            if not fut.done():
                fut.set_result(out)
            return
        offset = 0
        for rows, fut in taken:
            n = len(rows)
            if not fut.done():
                fut.set_result(out[offset : offset + n])
            offset += n

    @staticmethod
    def _fail(taken: list[_Item], exc: BaseException) -> None:
        error = exc if isinstance(exc, BackendError) else BackendError(str(exc))
        for _, fut in taken:
            if not fut.done():
                fut.set_exception(error)

    # -- the inference thread -----------------------------------------------------------------

    def _start_thread(self, first: list[_Item]) -> None:
        with self._lock:
            self._thread_busy = True
        self._thread = threading.Thread(target=self._thread_main, args=(first,), name="inference", daemon=True)
        self._thread.start()

    def _thread_main(self, taken: list[_Item]) -> None:
        loop = self._loop
        assert loop is not None
        while True:
            start = time.perf_counter()
            try:
                out = self._backend.infer_blocking(self._batch(taken))
            except Exception as exc:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                    loop.call_soon_threadsafe(self._fail, taken, exc)
            else:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._deliver, taken, out, start)
            with self._wake:
                taken = self._take()
                while not taken:
                    self._thread_busy = False
                    if self._stopping:
                        return
                    self._wake.wait()
                    taken = self._take()
                self._thread_busy = True
