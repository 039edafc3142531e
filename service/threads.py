"""Worker threads for blocking I/O that may hang (a store that accepts connections and never
answers).

``concurrent.futures.ThreadPoolExecutor`` (and with it ``asyncio.to_thread``) joins its threads
when the event loop closes and again at interpreter exit, so one thread stuck in a socket read
holds the whole process past its grace period. :class:`DaemonExecutor` runs the same kind of work
on daemon threads that nothing waits for: the caller bounds each call with a timeout, a call that
times out before it started is skipped, and one that is stuck is simply left behind when the
process exits (after everything it was meant to do was spilled to disk).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class DaemonExecutor:
    """At most ``max_workers`` daemon threads, started on demand; idle ones wait for work and
    end with the process (there is nothing to shut down)."""

    def __init__(self, max_workers: int, name: str) -> None:
        self._max = max(1, max_workers)
        self._name = name
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._waiting = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            self._waiting += 1
            if self._waiting > self._idle and len(self._threads) < self._max:
                thread = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
        self._queue.put((future, fn, args))
        return future

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a worker; cancelling the await skips the call if it has not started."""
        return await asyncio.wrap_future(self.submit(fn, *args))

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            item = self._queue.get()
            with self._lock:
                self._idle -= 1
                if item is not None:
                    self._waiting -= 1
            if item is None:
                return
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

    def busy(self) -> int:
        """Threads running a call now (stuck ones included)."""
        with self._lock:
            return len(self._threads) - self._idle
