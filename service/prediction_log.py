"""The asynchronous prediction log: every prediction becomes one record in the store.

Records are queued and written to the store in chunks, by size (``STORE_FLUSH_RECORDS``) or age
(``STORE_FLUSH_SECONDS``) and at shutdown. When a write fails or does not answer within
``STORE_TIMEOUT_SECONDS``, the store is marked down (``prediction_store_up`` 0) and chunks are
spilled to ``SPOOL_DIR`` (one JSON-lines file per chunk, written to ``<id>.tmp``, fsynced, renamed
to ``<id>.jsonl``) instead; a replayer retries the oldest spilled chunk every
``STORE_RETRY_SECONDS`` and, once the store answers, writes all of them back and deletes the
files. More than ``STORE_QUEUE_MAX`` records waiting in memory (a slow store) are spilled too.
A chunk keeps its id when it is spilled and replayed, so a store that writes idempotently per
chunk id (``s3``: the object key; ``postgres``: ``(request_id, idx)``; ``clickhouse``: the
deduplication token) never stores a record twice.

Durability (``STORE_DURABILITY``):

- ``buffered`` (the default): requests only append to an in-memory list, no I/O on the request
  path. A graceful stop (SIGTERM) writes or spills everything queued within its deadline; a hard
  kill (SIGKILL, OOM, a crash) loses what was in memory: the records of up to
  ``STORE_FLUSH_SECONDS`` (or ``STORE_FLUSH_RECORDS``) of traffic, and while the store is slow up
  to ``STORE_QUEUE_MAX`` records.
- ``wal``: a request's records are appended to a write-ahead segment in ``SPOOL_DIR/wal`` and
  fsynced before the request is answered (group commit: one write and one fsync for everything
  that arrived meanwhile). A sealed segment is the chunk written to the store; it is deleted once
  the store has it and renamed into the spool when the store is down. At start, segments left by
  a killed process are moved into the spool and replayed. A hard kill loses no record of an
  answered request; a segment that was written to the store but not yet deleted is written again
  under the same chunk id.

At start, ``.tmp`` files left by a process killed while spilling are recovered: their complete
lines become a spooled chunk.

Record fields: ``request_id``, ``index`` (row in the request), ``time`` (UTC, ISO 8601),
``model``, ``model_version``, ``endpoint``, ``input_sha256`` (sha256 of the row as little-endian
float32), ``label``, ``probabilities``, ``latency_ms``: one JSON object per line.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Literal

import numpy as np
import orjson

from service.metrics import Metrics
from service.stores.base import PredictionStore, RecordChunk, StoreError
from service.threads import DaemonExecutor

log = logging.getLogger("service.prediction_log")

_Entry = tuple[str, str, str, str, float, float, np.ndarray, np.ndarray, list[int]]
_NUMPY = orjson.OPT_SERIALIZE_NUMPY
Durability = Literal["buffered", "wal"]


class StoreTimeout(StoreError):
    """The store did not answer within ``STORE_TIMEOUT_SECONDS``."""


class _Iso:
    """ISO 8601 UTC timestamps with microseconds, reusing the formatted second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, ts: float) -> str:
        second = int(ts)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((ts - second) * 1e6):06d}Z"


def complete_lines(data: bytes) -> tuple[bytes, int, int]:
    """The complete JSON lines of ``data`` (a torn last line or an unparsable line is dropped):
    (lines, records kept, lines dropped)."""
    kept: list[bytes] = []
    dropped = 0
    body, _, tail = data.rpartition(b"\n")
    if tail.strip():
        dropped += 1
    for line in body.split(b"\n") if body else ():
        if not line.strip():
            continue
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError:
            dropped += 1
            continue
        kept.append(line)
    return (b"\n".join(kept) + b"\n" if kept else b""), len(kept), dropped


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Segment:
    """The open write-ahead segment (``wal`` durability): its file, and the lines committed to it."""

    __slots__ = ("data", "fd", "id", "intact", "path", "rows")

    def __init__(self, chunk_id: str, path: Path) -> None:
        self.id = chunk_id
        self.path = path
        self.fd: int | None = None
        self.data: list[bytes] = []
        self.rows = 0
        self.intact = True  # every commit reached the file (else the chunk is spilled from memory)


class PredictionLog:
    def __init__(
        self,
        store: PredictionStore,
        spool_dir: Path,
        metrics: Metrics,
        flush_records: int = 500,
        flush_seconds: float = 2.0,
        retry_seconds: float = 5.0,
        queue_max: int = 10_000,
        store_timeout: float = 5.0,
        durability: Durability = "buffered",
    ) -> None:
        self.store = store
        self.spool_dir = Path(spool_dir)
        self.wal_dir = self.spool_dir / "wal"
        self.metrics = metrics
        self.flush_records = flush_records
        self.flush_seconds = flush_seconds
        self.retry_seconds = retry_seconds
        self.queue_max = max(queue_max, flush_records)
        self.store_timeout = store_timeout
        self.durability: Durability = durability
        self._pending: list[_Entry] = []
        self._pending_rows = 0
        self._unspilled: list[RecordChunk] = []
        self._spool: dict[Path, int] = {}
        self._instance = secrets.token_hex(3)
        self._seq = 0
        self._iso = _Iso()
        self._store_up = False
        self._opened = False
        self._wakeup: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lock: asyncio.Lock | None = None
        self._closed = False
        self._io = DaemonExecutor(1, "spool-io")
        # wal durability
        self._segment: _Segment | None = None
        self._wal_buf: list[bytes] = []
        self._wal_buf_rows = 0
        self._wal_waiters: list[asyncio.Future[None]] = []
        self._wal_event: asyncio.Event | None = None
        self._wal_task: asyncio.Task[None] | None = None
        self._wal_lock: asyncio.Lock | None = None
        self.wal_commits = 0
        metrics.store_queue.set_function(lambda: self._pending_rows + sum(len(c) for c in list(self._unspilled)))
        metrics.store_spool.set_function(lambda: sum(list(self._spool.values())))
        self._written = metrics.store_written.labels(store.name)
        self._up_gauge = metrics.store_up.labels(store.name)

    # -- request path -------------------------------------------------------------------------

    def record(
        self,
        request_id: str,
        endpoint: str,
        model: str,
        version: str,
        started: float,
        latency_s: float,
        rows: np.ndarray,
        probabilities: np.ndarray,
        labels: list[int],
    ) -> Awaitable[None] | None:
        """Queue the predictions of one request. ``buffered``: cheap, no serialisation, no I/O;
        returns None. ``wal``: returns an awaitable that completes once the records are in the
        write-ahead file (fsynced); answer the request after it."""
        entry = (request_id, endpoint, model, version, started, latency_s, rows, probabilities, labels)
        if self.durability == "wal" and self._wal_event is not None:
            return self._wal_append(entry)
        self._pending.append(entry)
        self._pending_rows += len(labels)
        if self._pending_rows >= self.flush_records and self._wakeup is not None:
            self._wakeup.set()
        if self._pending_rows >= self.queue_max:
            self._spill_now(self._take_chunk())
        return None

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closed = False
        self._spool.update(await self._io.run(self._recover))
        loop = asyncio.get_running_loop()
        if self.durability == "wal":
            self._wal_event = asyncio.Event()
            self._wal_lock = asyncio.Lock()
            self._wal_task = loop.create_task(self._wal_loop(), name="prediction-log-wal")
        # Opening the store (e.g. creating a boto3 client) happens in the background so that it
        # never delays readiness; records queue meanwhile.
        self._tasks = [
            loop.create_task(self._flush_loop(), name="prediction-log-flush"),
            loop.create_task(self._replay_loop(), name="prediction-log-replay"),
        ]

    async def close(self, deadline: float | None = None) -> None:
        """Write or spill everything queued before ``deadline`` (``loop.time()``; default: the
        flush age plus the store timeout from now), replay the spool while time is left and the
        store answers, close the store. Store calls never run past the deadline: what the store
        has not taken by then is on disk (spool) when this returns."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if deadline is None:
            deadline = now + max(self.flush_seconds, 5.0) + self.store_timeout
        # keep time to get the queue onto local disk whatever the store does
        reserve = min(2.0, max(0.25, 0.2 * (deadline - now)))
        store_until = deadline - reserve
        self._closed = True
        if self._wakeup is not None:
            self._wakeup.set()
        tasks, self._tasks = self._tasks, []
        if tasks:
            tasks[1].cancel()  # the replayer can stop at once
            # the flusher finishes opening the store or a write in progress, within the deadline
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, store_until - loop.time()))
            for task in pending:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self._stop_wal()
        await self.flush(until=store_until)
        if (self._spool or self._unspilled) and self._store_up and store_until - loop.time() > 0.1:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(store_until - loop.time()):
                    await self.replay(until=store_until)
        if self._unspilled:  # last chance: get them onto disk
            for chunk in list(self._unspilled):
                self._unspilled.remove(chunk)
                self._spill_now(chunk)
        left = deadline - loop.time()
        if left > 0:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(min(left, self.store_timeout)):
                    await self.store.close()
        if self._spool or self._unspilled:
            log.warning(
                "prediction store unavailable at shutdown: %d records remain spooled in %s (replayed at next start)",
                sum(self._spool.values()) + sum(len(c) for c in self._unspilled),
                self.spool_dir,
            )

    # -- state --------------------------------------------------------------------------------

    @property
    def store_up(self) -> bool:
        return self._store_up

    @property
    def queued(self) -> int:
        return self._pending_rows + sum(len(c) for c in self._unspilled)

    @property
    def spooled(self) -> int:
        return sum(self._spool.values())

    # -- flushing -----------------------------------------------------------------------------

    async def flush(self, everything: bool = True, until: float | None = None) -> None:
        """Write (or spill) what is queued: everything, or (from the flusher) one chunk plus any
        further full chunks, so that records arriving during a write wait for the next round.
        ``until``: no store call runs past this ``loop.time()``; what is left then is spilled."""
        assert self._lock is not None
        async with self._lock:
            if self.durability == "wal":
                sealed = await self._rotate()
                if sealed is not None:
                    await self._deliver(*sealed, until=until)
                return
            if self._pending:
                await self._deliver(self._take_chunk(), until=until)
            while self._pending and (everything or self._pending_rows >= self.flush_records):
                await self._deliver(self._take_chunk(), until=until)

    async def _flush_loop(self) -> None:
        assert self._wakeup is not None
        await self._open_store()
        while not self._closed:
            # asyncio.timeout, not wait_for: wait_for can swallow a cancellation on Python 3.11
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_seconds):
                    await self._wakeup.wait()
            self._wakeup.clear()
            if self._closed:
                return
            try:
                await self.flush(everything=False)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("prediction log flush failed; will retry")
                await asyncio.sleep(min(self.flush_seconds, 1.0))

    def _next_id(self) -> str:
        now = time.time()
        second = int(now)
        self._seq += 1
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(second))
        return f"{stamp}{int((now - second) * 1000):03d}Z-{self._instance}-{os.getpid()}-{self._seq:08d}"

    def _lines(self, entries: list[_Entry]) -> list[bytes]:
        """JSON lines of ``entries`` (the fields shared by the rows of a request are serialised
        once per request)."""
        lines: list[bytes] = []
        append = lines.append
        iso, dumps, sha256 = self._iso, orjson.dumps, hashlib.sha256
        for request_id, endpoint, model, version, started, latency_s, rows, probs, labels in entries:
            head = dumps(
                {
                    "request_id": request_id,
                    "time": iso(started),
                    "model": model,
                    "model_version": version,
                    "endpoint": endpoint,
                    "latency_ms": round(latency_s * 1000.0, 3),
                }
            )[:-1]
            for i, label in enumerate(labels):
                append(
                    b'%s,"index":%d,"input_sha256":"%s","label":%d,"probabilities":%s}\n'
                    % (
                        head,
                        i,
                        sha256(rows[i].tobytes()).hexdigest().encode(),
                        label,
                        dumps(probs[i], option=_NUMPY),
                    )
                )
        return lines

    def _take_chunk(self) -> RecordChunk:
        """Serialise what is queued into one chunk of JSON lines."""
        entries, self._pending, self._pending_rows = self._pending, [], 0
        lines = self._lines(entries)
        return RecordChunk(self._next_id(), b"".join(lines), len(lines))

    async def _deliver(self, chunk: RecordChunk, segment: _Segment | None = None, until: float | None = None) -> None:
        """Write ``chunk`` to the store (bounded by ``STORE_TIMEOUT_SECONDS`` and ``until``) or
        spill it; ``segment``: the sealed write-ahead segment holding it."""
        if self._store_up and chunk.count:
            loop = asyncio.get_running_loop()
            budget = self.store_timeout if until is None else min(self.store_timeout, until - loop.time())
            if budget > 0:
                try:
                    await self._store_write(chunk, budget)
                except asyncio.CancelledError:
                    self._spill_now(chunk, segment)
                    raise
                except Exception as exc:
                    self._mark_down("write", exc)
                else:
                    self._written.inc(len(chunk))
                    if segment is not None:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(segment.path)
                    return
        if not chunk.count:
            if segment is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(segment.path)
            return
        try:
            path = await self._io.run(self._write_spool_file, chunk, segment)
        except asyncio.CancelledError:
            self._spill_now(chunk, segment)
            raise
        self._spilled(chunk, path)

    async def _store_write(self, chunk: RecordChunk, budget: float) -> None:
        try:
            async with asyncio.timeout(budget):
                await self.store.write(chunk)
        except TimeoutError:
            raise StoreTimeout(
                f"no answer within {budget:.3g} s (STORE_TIMEOUT_SECONDS={self.store_timeout:g})"
            ) from None

    def _mark_down(self, operation: str, exc: BaseException) -> None:
        self.metrics.store_errors.labels(self.store.name, operation).inc()
        if self._store_up or operation != "replay":
            log.error(
                "prediction store %s %s failed: %s; spilling records to %s and retrying every %ss",
                self.store.describe(),
                operation,
                exc,
                self.spool_dir,
                self.retry_seconds,
            )
        self._store_up = False
        self._up_gauge.set(0)

    def _mark_up(self) -> None:
        if not self._store_up:
            log.info("prediction store %s is available", self.store.describe())
        self._store_up = True
        self._up_gauge.set(1)

    # -- write-ahead log (wal durability) -------------------------------------------------------

    def _wal_append(self, entry: _Entry) -> asyncio.Future[None]:
        assert self._wal_event is not None
        lines = self._lines([entry])
        self._wal_buf.extend(lines)
        self._wal_buf_rows += len(lines)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._wal_waiters.append(waiter)
        self._wal_event.set()
        return waiter

    async def _wal_loop(self) -> None:
        """Group commit: everything appended while the previous write+fsync ran goes in the next."""
        assert self._wal_event is not None and self._wal_lock is not None
        while True:
            await self._wal_event.wait()
            self._wal_event.clear()
            async with self._wal_lock:
                await self._commit()
            if self._pending_rows >= self.flush_records and self._wakeup is not None:
                self._wakeup.set()
            if self._pending_rows >= self.queue_max:
                # the store is slow: the records are on disk; move the segment into the spool
                sealed = await self._rotate()
                if sealed is not None:
                    chunk, segment = sealed
                    path = await self._io.run(self._write_spool_file, chunk, segment)
                    self._spilled(chunk, path)

    async def _commit(self) -> None:
        """Write and fsync the buffered lines (call with ``_wal_lock`` held)."""
        if not self._wal_buf:
            return
        lines, self._wal_buf = self._wal_buf, []
        rows, self._wal_buf_rows = self._wal_buf_rows, 0
        waiters, self._wal_waiters = self._wal_waiters, []
        segment = self._segment
        if segment is None:
            chunk_id = self._next_id()
            segment = self._segment = _Segment(chunk_id, self.wal_dir / f"{chunk_id}.wal")
        data = b"".join(lines)
        try:
            await self._io.run(self._wal_write, segment, data)
        except OSError as exc:
            # the records stay in memory (buffered durability for this chunk) and are counted
            segment.intact = False
            self.metrics.store_errors.labels(self.store.name, "wal").inc()
            log.error(
                "cannot write the prediction write-ahead log %s: %s; keeping records in memory", segment.path, exc
            )
        segment.data.append(data)
        segment.rows += rows
        self._pending_rows += rows
        self.wal_commits += 1
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    @staticmethod
    def _wal_write(segment: _Segment, data: bytes) -> None:
        if segment.fd is None:
            segment.path.parent.mkdir(parents=True, exist_ok=True)
            segment.fd = os.open(segment.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            _fsync_dir(segment.path.parent)  # the new file's name survives a power loss too
        view = memoryview(data)
        while view:
            written = os.write(segment.fd, view)
            view = view[written:]
        os.fdatasync(segment.fd)

    async def _rotate(self) -> tuple[RecordChunk, _Segment] | None:
        """Seal the open segment: its committed records become one chunk."""
        assert self._wal_lock is not None
        async with self._wal_lock:
            segment, self._segment = self._segment, None
            if segment is None:
                return None
            self._pending_rows -= segment.rows
            if segment.fd is not None:
                with contextlib.suppress(OSError):
                    os.close(segment.fd)
                segment.fd = None
            return RecordChunk(segment.id, b"".join(segment.data), segment.rows), segment

    async def _stop_wal(self) -> None:
        """Commit what requests appended, then stop the group-commit task."""
        task, self._wal_task = self._wal_task, None
        if task is None:
            return
        assert self._wal_lock is not None
        async with self._wal_lock:
            await self._commit()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self._wal_event = None  # later records queue in memory

    # -- spool --------------------------------------------------------------------------------

    def _write_spool_file(self, chunk: RecordChunk, segment: _Segment | None = None) -> Path | None:
        """Put ``chunk`` in the spool (a thread may run this): rename its intact write-ahead
        segment, or write ``<id>.tmp``, fsync, rename. None if the disk refuses."""
        path = self.spool_dir / f"{chunk.id}.jsonl"
        try:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            if segment is not None and segment.intact and segment.path.exists():
                os.replace(segment.path, path)
            else:
                tmp = path.with_suffix(".tmp")
                with tmp.open("wb") as fh:
                    fh.write(chunk.jsonl())
                    fh.flush()
                    os.fsync(fh.fileno())
                tmp.replace(path)
                if segment is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(segment.path)
            _fsync_dir(self.spool_dir)
        except OSError as exc:
            log.error("cannot spill %d prediction records to %s: %s; keeping them in memory", len(chunk), path, exc)
            return None
        return path

    def _spilled(self, chunk: RecordChunk, path: Path | None) -> None:
        """Bookkeeping on the event loop after :meth:`_write_spool_file`."""
        if path is None:
            self.metrics.store_errors.labels(self.store.name, "spool").inc()
            if chunk not in self._unspilled:
                self._unspilled.append(chunk)
            return
        self._spool[path] = len(chunk)
        self.metrics.store_spooled.inc(len(chunk))

    def _spill_now(self, chunk: RecordChunk, segment: _Segment | None = None) -> None:
        if not chunk.count:
            return
        self._spilled(chunk, self._write_spool_file(chunk, segment))

    def _recover(self) -> dict[Path, int]:
        """At start (on a thread): recover ``.tmp`` spool files and write-ahead segments left by a
        killed process into the spool; returns the spooled chunks and their record counts."""
        spool: dict[Path, int] = {}
        if not self.spool_dir.is_dir():
            return spool
        recovered = dropped = 0
        leftovers = sorted(self.spool_dir.glob("*.tmp"))
        if self.wal_dir.is_dir():
            leftovers += sorted(self.wal_dir.glob("*.wal"))
        for leftover in leftovers:
            target = self.spool_dir / f"{leftover.stem}.jsonl"
            try:
                if target.exists():  # renamed already; the leftover is a stale copy
                    leftover.unlink()
                    continue
                data, kept, bad = complete_lines(leftover.read_bytes())
                if kept and not bad and leftover.suffix == ".wal":
                    os.replace(leftover, target)
                elif kept:
                    tmp = target.with_suffix(".recovering")
                    with tmp.open("wb") as fh:
                        fh.write(data)
                        fh.flush()
                        os.fsync(fh.fileno())
                    tmp.replace(target)
                    leftover.unlink()
                else:
                    leftover.unlink()
            except OSError as exc:
                log.error("cannot recover %s: %s", leftover, exc)
                continue
            recovered += kept
            dropped += bad
        if leftovers:
            log.warning(
                "recovered %d prediction records from %d files left by a stopped process in %s%s",
                recovered,
                len(leftovers),
                self.spool_dir,
                f" ({dropped} torn or unreadable lines dropped)" if dropped else "",
            )
        for stale in self.spool_dir.glob("*.recovering"):
            with contextlib.suppress(OSError):
                stale.unlink()
        for path in sorted(self.spool_dir.glob("*.jsonl")):
            try:
                with path.open("rb") as fh:
                    count = sum(1 for line in fh if line.strip())
            except OSError as exc:
                log.error("cannot read spooled chunk %s: %s", path, exc)
                continue
            spool[path] = count
        if spool:
            log.info("found %d spooled prediction records in %s; replaying", sum(spool.values()), self.spool_dir)
        return spool

    async def _open_store(self) -> None:
        try:
            async with asyncio.timeout(self.store_timeout):
                await self.store.open()
        except TimeoutError:
            self._mark_down("open", StoreTimeout(f"no answer within {self.store_timeout:g} s (STORE_TIMEOUT_SECONDS)"))
            return
        except Exception as exc:
            self._mark_down("open", exc)
            return
        self._opened = True
        self._mark_up()

    async def replay(self, until: float | None = None) -> int:
        """Write spilled chunks back, oldest first; stops at the first failure. Returns records replayed."""
        if not self._opened:
            await self._open_store()
            if not self._opened:
                return 0
        loop = asyncio.get_running_loop()

        def budget() -> float:
            return self.store_timeout if until is None else max(0.001, min(self.store_timeout, until - loop.time()))

        def out_of_time() -> bool:
            return until is not None and loop.time() >= until

        replayed = 0
        for chunk in list(self._unspilled):
            if out_of_time():
                return replayed
            try:
                await self._store_write(chunk, budget())
            except Exception as exc:
                self._mark_down("replay", exc)
                return replayed
            self._unspilled.remove(chunk)
            self._written.inc(len(chunk))
            self.metrics.store_replayed.inc(len(chunk))
            replayed += len(chunk)
            self._mark_up()
        for path in sorted(self._spool):
            if out_of_time():
                return replayed
            try:
                data = await self._io.run(path.read_bytes)
            except FileNotFoundError:
                self._spool.pop(path, None)
                continue
            except OSError as exc:
                self.metrics.store_errors.labels(self.store.name, "spool").inc()
                log.error("cannot read spooled chunk %s: %s", path, exc)
                continue
            chunk = RecordChunk.from_jsonl(path.stem, data)
            try:
                await self._store_write(chunk, budget())
            except Exception as exc:
                self._mark_down("replay", exc)
                return replayed
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            count = self._spool.pop(path, len(chunk))
            self._written.inc(count)
            self.metrics.store_replayed.inc(count)
            replayed += count
            self._mark_up()
        return replayed

    async def _replay_loop(self) -> None:
        while True:
            await asyncio.sleep(self.retry_seconds)
            if not (self._spool or self._unspilled or not self._store_up):
                continue
            assert self._lock is not None
            try:
                async with self._lock:
                    if self._spool or self._unspilled:
                        count = await self.replay()
                        if count:
                            log.info("replayed %d spooled prediction records to %s", count, self.store.describe())
                    elif not self._store_up:
                        await self._probe()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("prediction log replay failed; will retry")

    async def _probe(self) -> None:
        """The store is down but nothing is spooled: mark it up again so the next chunk tries it."""
        if not self._opened:
            await self._open_store()
        else:
            self._mark_up()
