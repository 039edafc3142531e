"""What the prediction log keeps when things go wrong, measured on a real ``python -m service``
against a real S3 API (moto) behind a proxy that can freeze: it keeps accepting connections and
reading requests, and never answers, as an Object Storage endpoint that hangs does.

- A graceful stop (SIGTERM) under load with the store hung ends within the grace period, and a
  restart replays the spool: every record of every 200 response is stored exactly once.
- ``.tmp`` spool files left by a process killed while spilling are recovered at start.
- SIGKILL under load: with ``STORE_DURABILITY=wal`` no record of an answered request is lost; with
  ``buffered`` what is lost is at most the unflushed queue (printed, with the figures).
"""

from __future__ import annotations

import contextlib
import json
import selectors
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.service.helpers import MotoS3, ServiceProcess, metric_value, start_service, wait_until

PREFIX = "mvp/"
ROWS_PER_REQUEST = 2
FLUSH_RECORDS = 500


class FreezingProxy:
    """A TCP forwarder to ``target`` that can be frozen: while frozen it accepts connections and
    reads what clients send, but forwards nothing and answers nothing."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.frozen = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="freezing-proxy")
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop.set()
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, upstream)
        selector.register(upstream, selectors.EVENT_READ, client)
        try:
            while not self._stop.is_set():
                for key, _ in selector.select(timeout=0.2):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    if not self.frozen.is_set():
                        key.data.sendall(data)
                    # frozen: swallow it, answer nothing
        except OSError:
            return
        finally:
            selector.close()
            client.close()
            upstream.close()


@dataclass
class Bucket:
    """A bucket of its own on a moto S3 server (moto's backend is shared by the whole process),
    reached through a :class:`FreezingProxy`."""

    moto: MotoS3
    proxy: FreezingProxy
    name: str = field(default_factory=lambda: f"predictions-{uuid.uuid4().hex[:12]}")

    def __post_init__(self) -> None:
        self.moto.create_bucket(self.name)

    def stored(self) -> Counter:
        """(request_id, index) of every record in the bucket, counted."""
        client = self.moto.client()
        keys: Counter = Counter()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=PREFIX):
            for obj in page.get("Contents", []):
                body = client.get_object(Bucket=self.name, Key=obj["Key"])["Body"].read()
                keys.update((r["request_id"], r["index"]) for r in map(json.loads, body.splitlines()))
        return keys

    def service(self, workdir: Path, **env: str) -> ServiceProcess:
        """The service on the S3 store, through the proxy; ``env`` holds MODEL_URI and the rest."""
        return start_service(
            workdir,
            STORE="s3",
            STORE_S3_URI=f"s3://{self.name}/{PREFIX}",
            **{**self.moto.env(), "S3_ENDPOINT_URL": self.proxy.endpoint},
            **env,
        )


@contextlib.contextmanager
def _bucket() -> Iterator[Bucket]:
    moto = MotoS3()
    proxy = FreezingProxy(moto.port)
    try:
        yield Bucket(moto, proxy)
    finally:
        proxy.close()
        moto.stop()


@pytest.fixture
def s3() -> Iterator[Bucket]:
    with _bucket() as bucket:
        yield bucket


class Load:
    """Clients posting predictions until stopped; remembers the request id of every 200."""

    def __init__(self, svc: ServiceProcess, rows: np.ndarray, clients: int = 8) -> None:
        self.svc = svc
        self.rows = rows.tolist()
        self.ok: list[str] = []
        self.failed = 0
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(clients)
        self._futures = [self._pool.submit(self._client, n) for n in range(clients)]

    def _client(self, n: int) -> None:
        with httpx.Client(base_url=self.svc.base, timeout=10) as http:
            i = 0
            while not self._stop.is_set():
                rid = f"c{n}-{i}"
                i += 1
                try:
                    r = http.post("/v1/predict", json={"instances": self.rows}, headers={"X-Request-ID": rid})
                except httpx.HTTPError:
                    self.failed += 1
                    time.sleep(0.01)
                    continue
                if r.status_code == 200:
                    self.ok.append(rid)
                else:
                    self.failed += 1

    def stop(self) -> None:
        self._stop.set()
        for future in self._futures:
            future.result()
        self._pool.shutdown()

    def expected(self) -> Counter:
        return Counter((rid, j) for rid in self.ok for j in range(ROWS_PER_REQUEST))


@pytest.mark.slow
def test_sigterm_with_the_store_hung_under_load_stops_in_time_and_loses_nothing(
    s3: Bucket, demo_model: Path, digits: tuple, tmp_path: Path
) -> None:
    grace = 30.0  # Kubernetes' default terminationGracePeriodSeconds
    env = {
        "MODEL_URI": str(demo_model / "model.onnx"),
        "STORE_FLUSH_SECONDS": "0.5",
        "STORE_FLUSH_RECORDS": "200",
        "SHUTDOWN_GRACE_SECONDS": str(grace),
        "STORE_TIMEOUT_SECONDS": "3",
        # botocore's own timeouts are longer than the store's: the bound must come from the service
        "S3_READ_TIMEOUT": "60",
    }
    svc = s3.service(tmp_path / "run1", **dict(env))
    rows = np.asarray(digits[0][:ROWS_PER_REQUEST], dtype=np.float32)
    load = Load(svc, rows)
    try:
        wait_until(lambda: len(load.ok) >= 50, timeout=30, what="requests under load")
        s3.proxy.frozen.set()  # Object Storage hangs: connections accepted, nothing answered
        frozen_at = time.monotonic()
        # the flusher's write gets no answer: after STORE_TIMEOUT_SECONDS the store is marked down
        wait_until(lambda: metric_value(httpx.get(f"{svc.base}/metrics").text, "prediction_store_up", store="s3") == 0,
                   timeout=10, what="a hung write marks the store down")
        marked_down = time.monotonic() - frozen_at
        time.sleep(2)  # more load while it is down: queued, then spilled
        asked = time.monotonic()
        svc.proc.send_signal(signal.SIGTERM)
        code = svc.proc.wait(timeout=grace + 10)
        took = time.monotonic() - asked
    finally:
        load.stop()
        svc.stop()
    print(f"\nhung store: {len(load.ok)} requests answered 200 ({len(load.ok) * ROWS_PER_REQUEST} records), "
          f"store marked down {marked_down:.1f} s after it hung, SIGTERM to exit {took:.1f} s (grace {grace:.0f} s)")
    assert code == 0, svc.log_tail()
    assert took < grace, f"the stop took {took:.1f} s, past the {grace:.0f} s grace period"
    spooled = list(Path(svc.env["SPOOL_DIR"]).glob("*.jsonl"))
    assert spooled, "nothing was spilled to the spool"

    s3.proxy.frozen.clear()  # Object Storage answers again; the next start replays the spool
    expected = load.expected()
    again = s3.service(tmp_path / "run1", **dict(env))
    try:
        wait_until(lambda: not list(Path(again.env["SPOOL_DIR"]).glob("*.jsonl")), timeout=60, what="spool replayed")
    finally:
        assert again.stop() == 0
    stored = s3.stored()
    missing = expected - stored
    duplicated = {key: n for key, n in stored.items() if n > 1}
    assert not missing, f"{sum(missing.values())} records of 200 responses are missing"
    assert not duplicated, f"{len(duplicated)} records stored more than once"


def test_a_tmp_spool_file_left_by_a_kill_is_recovered_at_start(
    s3: Bucket, demo_model: Path, tmp_path: Path
) -> None:
    spool = tmp_path / "run" / "spool"
    spool.mkdir(parents=True)
    lines = [json.dumps({"request_id": f"torn-{i}", "index": 0, "model": "m"}).encode() for i in range(5)]
    # killed while spilling: complete lines, then a torn one
    (spool / "20261201T000000000Z-dead-1-00000001.tmp").write_bytes(b"\n".join(lines) + b'\n{"request_id": "to')
    svc = s3.service(tmp_path / "run", MODEL_URI=str(demo_model / "model.onnx"))
    try:
        wait_until(lambda: sum(s3.stored().values()) == 5, timeout=30, what="recovered records in S3")
    finally:
        assert svc.stop() == 0
    assert s3.stored() == Counter({(f"torn-{i}", 0): 1 for i in range(5)})
    assert not list(spool.glob("*.tmp")) and not list(spool.glob("*.jsonl"))


def _killed_under_load(
    durability: str, s3: Bucket, demo_model: Path, rows: np.ndarray, workdir: Path
) -> tuple[int, int]:
    """SIGKILL after a few seconds of load; restart, let it write everything; (records answered,
    records lost)."""
    env = {
        "MODEL_URI": str(demo_model / "model.onnx"),
        "STORE_DURABILITY": durability,
        # the defaults of a real deployment: a record waits up to 2 s in memory (buffered)
        "STORE_FLUSH_SECONDS": "2",
        "STORE_FLUSH_RECORDS": str(FLUSH_RECORDS),
    }
    svc = s3.service(workdir, **dict(env))
    load = Load(svc, rows)
    try:
        wait_until(lambda: len(load.ok) >= 300, timeout=60, what="requests under load")
        svc.proc.send_signal(signal.SIGKILL)
        svc.proc.wait(timeout=10)
    finally:
        load.stop()
        svc.stop()
    expected = load.expected()
    again = s3.service(workdir, **dict(env))
    try:
        with contextlib.suppress(AssertionError):
            wait_until(lambda: not (expected - s3.stored()), timeout=20, what="every answered record")
    finally:
        assert again.stop() == 0
    stored = s3.stored()
    if durability == "wal":
        assert not {key: n for key, n in stored.items() if n > 1}, "a replayed segment was stored twice"
    return sum(expected.values()), sum((expected - stored).values())


@pytest.mark.slow
def test_sigkill_under_load_loses_nothing_answered_with_wal_and_at_most_the_queue_buffered(
    demo_model: Path, digits: tuple, tmp_path: Path
) -> None:
    rows = np.asarray(digits[0][:ROWS_PER_REQUEST], dtype=np.float32)
    figures = {}
    for durability in ("wal", "buffered"):
        with _bucket() as s3:
            figures[durability] = _killed_under_load(durability, s3, demo_model, rows, tmp_path / durability)
    for durability, (answered, lost) in figures.items():
        print(f"\nSIGKILL under load, STORE_DURABILITY={durability}: {lost} of {answered} answered records lost "
              f"({100 * lost / answered:.2f} %)")
    assert figures["wal"][1] == 0, "wal: records of answered requests were lost"
    # buffered: at most what was waiting in memory: a chunk being written (STORE_FLUSH_RECORDS)
    # and what queued meanwhile, within the flush age
    answered, lost = figures["buffered"]
    assert lost <= 2 * FLUSH_RECORDS, figures
