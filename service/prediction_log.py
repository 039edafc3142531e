"""The asynchronous prediction log: every prediction becomes one record in the store.

Requests only append to an in-memory list (no I/O on the request path). A flusher turns the list
into a chunk when it holds ``STORE_FLUSH_RECORDS`` records or is ``STORE_FLUSH_SECONDS`` old, and on
shutdown, and writes it to the store. When a write fails, the store is marked down and chunks are
spilled to ``SPOOL_DIR`` (one JSON-lines file per chunk, written atomically) instead; a replayer
retries the oldest spilled chunk every ``STORE_RETRY_SECONDS`` and, once the store answers, writes
all of them back and deletes the files. More than ``STORE_QUEUE_MAX`` records waiting in memory (a
slow store) are spilled too. No record is dropped: a chunk that cannot even be spilled stays in
memory and is retried.

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
from pathlib import Path

import numpy as np
import orjson

from service.metrics import Metrics
from service.stores.base import PredictionStore, RecordChunk

log = logging.getLogger("service.prediction_log")

_Entry = tuple[str, str, str, str, float, float, np.ndarray, np.ndarray, list[int]]
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


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
    ) -> None:
        self.store = store
        self.spool_dir = Path(spool_dir)
        self.metrics = metrics
        self.flush_records = flush_records
        self.flush_seconds = flush_seconds
        self.retry_seconds = retry_seconds
        self.queue_max = max(queue_max, flush_records)
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
        metrics.store_queue.set_function(lambda: self._pending_rows + sum(len(c) for c in self._unspilled))
        metrics.store_spool.set_function(lambda: sum(self._spool.values()))
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
    ) -> None:
        """Queue the predictions of one request (cheap: no serialisation, no I/O)."""
        self._pending.append((request_id, endpoint, model, version, started, latency_s, rows, probabilities, labels))
        self._pending_rows += len(labels)
        if self._pending_rows >= self.flush_records and self._wakeup is not None:
            self._wakeup.set()
        if self._pending_rows >= self.queue_max:
            self._spill_now(self._take_chunk())

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closed = False
        self._load_spool()
        loop = asyncio.get_running_loop()
        # Opening the store (e.g. creating a boto3 client) happens in the background so that it
        # never delays readiness; records queue in memory meanwhile.
        self._tasks = [
            loop.create_task(self._flush_loop(), name="prediction-log-flush"),
            loop.create_task(self._replay_loop(), name="prediction-log-replay"),
        ]

    async def close(self, replay_timeout: float = 5.0) -> None:
        """Flush what is queued (write or spill), try to replay the spool once, close the store."""
        self._closed = True
        if self._wakeup is not None:
            self._wakeup.set()
        tasks, self._tasks = self._tasks, []
        if tasks:
            # the flusher finishes opening the store or a write in progress; the replayer can stop
            tasks[1].cancel()
            _, pending = await asyncio.wait(tasks, timeout=max(self.flush_seconds, 5.0))
            for task in pending:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.flush()
        if self._spool or self._unspilled:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.replay(), timeout=replay_timeout)
        if self._unspilled:  # last chance: get them onto disk
            for chunk in list(self._unspilled):
                self._unspilled.remove(chunk)
                self._spill_now(chunk)
        with contextlib.suppress(Exception):
            await self.store.close()
        if self._spool or self._unspilled:
            log.warning(
                "prediction store unavailable at shutdown: %d records remain spooled in %s",
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

    async def flush(self, everything: bool = True) -> None:
        """Write (or spill) what is queued: everything, or (from the flusher) one chunk plus any
        further full chunks, so that records arriving during a write wait for the next round."""
        assert self._lock is not None
        async with self._lock:
            if self._pending:
                await self._deliver(self._take_chunk())
            while self._pending and (everything or self._pending_rows >= self.flush_records):
                await self._deliver(self._take_chunk())

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

    def _take_chunk(self) -> RecordChunk:
        """Serialise what is queued into one chunk of JSON lines (the fields shared by the rows of
        a request are serialised once per request)."""
        entries, self._pending, self._pending_rows = self._pending, [], 0
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
        return RecordChunk(self._next_id(), b"".join(lines), len(lines))

    async def _deliver(self, chunk: RecordChunk) -> None:
        if self._store_up:
            try:
                await self.store.write(chunk)
            except asyncio.CancelledError:
                self._spill_now(chunk)
                raise
            except Exception as exc:
                self._mark_down("write", exc)
            else:
                self._written.inc(len(chunk))
                return
        await asyncio.to_thread(self._spill_now, chunk)

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

    # -- spool --------------------------------------------------------------------------------

    def _spill_now(self, chunk: RecordChunk) -> None:
        if not chunk.count:
            return
        path = self.spool_dir / f"{chunk.id}.jsonl"
        tmp = path.with_suffix(".tmp")
        try:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            with tmp.open("wb") as fh:
                fh.write(chunk.jsonl())
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(path)
        except OSError as exc:
            self.metrics.store_errors.labels(self.store.name, "spool").inc()
            log.error("cannot spill %d prediction records to %s: %s; keeping them in memory", len(chunk), path, exc)
            if chunk not in self._unspilled:
                self._unspilled.append(chunk)
            return
        self._spool[path] = len(chunk)
        self.metrics.store_spooled.inc(len(chunk))

    def _load_spool(self) -> None:
        if not self.spool_dir.is_dir():
            return
        for path in sorted(self.spool_dir.glob("*.jsonl")):
            try:
                with path.open("rb") as fh:
                    count = sum(1 for line in fh if line.strip())
            except OSError as exc:
                log.error("cannot read spooled chunk %s: %s", path, exc)
                continue
            self._spool[path] = count
        if self._spool:
            log.info("found %d spooled prediction records in %s; replaying", self.spooled, self.spool_dir)

    async def _open_store(self) -> None:
        try:
            await self.store.open()
        except Exception as exc:
            self._mark_down("open", exc)
            return
        self._opened = True
        self._mark_up()

    async def replay(self) -> int:
        """Write spilled chunks back, oldest first; stops at the first failure. Returns records replayed."""
        if not self._opened:
            await self._open_store()
            if not self._opened:
                return 0
        replayed = 0
        for chunk in list(self._unspilled):
            try:
                await self.store.write(chunk)
            except Exception as exc:
                self._mark_down("replay", exc)
                return replayed
            self._unspilled.remove(chunk)
            self._written.inc(len(chunk))
            self.metrics.store_replayed.inc(len(chunk))
            replayed += len(chunk)
            self._mark_up()
        for path in sorted(self._spool):
            try:
                data = await asyncio.to_thread(path.read_bytes)
            except FileNotFoundError:
                self._spool.pop(path, None)
                continue
            except OSError as exc:
                self.metrics.store_errors.labels(self.store.name, "spool").inc()
                log.error("cannot read spooled chunk %s: %s", path, exc)
                continue
            chunk = RecordChunk.from_jsonl(path.stem, data)
            try:
                await self.store.write(chunk)
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
