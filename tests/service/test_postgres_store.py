"""``STORE=postgres`` against a real PostgreSQL server (Debian's, started by the fixture on
127.0.0.1, TLS with ``sslmode=verify-full`` and a SCRAM password, as Managed PostgreSQL is used).

Records land with every field; the server is stopped while many concurrent predictions are made,
started again, and the table then holds every prediction exactly once. The synchronous helpers that
data-migration tools import are tested on their own.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest

from service.metrics import Metrics
from service.prediction_log import PredictionLog
from service.settings import settings_from_env
from service.stores import create_store
from service.stores.base import RecordChunk, StoreError
from service.stores.postgres import (
    SCHEMA_VERSION,
    PostgresStore,
    count_records,
    ensure_schema,
    insert_records,
    read_records,
)
from tests.service.helpers import ServiceProcess, metric_value, wait_until
from tests.service.pg_server import DATABASE, PgServer


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    server = PgServer(password=f"pw-{secrets.token_hex(12)}")
    yield server
    server.destroy()


@pytest.fixture
def database(pg: PgServer) -> str:
    """A fresh, empty database for the test; returns its name."""
    name = f"t_{secrets.token_hex(6)}"
    pg.create_database(name)
    return name


def _record(request_id: str, index: int, label: int = 3) -> dict[str, Any]:
    probabilities = np.random.default_rng(index).dirichlet(np.ones(10)).astype(np.float32)
    return {
        "request_id": request_id,
        "time": f"2026-11-26T10:{index % 60:02d}:57.{index:06d}Z",
        "model": "digits-mlp",
        "model_version": "94dd454b771d",
        "endpoint": "v1",
        "latency_ms": round(0.1 + index / 7, 3),
        "index": index,
        "input_sha256": f"{index:064x}",
        "label": label,
        # as the JSON lines carry them: float32 values in their shortest form
        "probabilities": [float(np.format_float_positional(p)) for p in probabilities],
    }


# -- the synchronous helpers ----------------------------------------------------------------------


def test_ensure_schema_is_idempotent_and_concurrent_safe(pg: PgServer, database: str) -> None:
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            with pg.connect(database) as conn:
                ensure_schema(conn)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(4)]  # several replicas starting at once
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    with pg.connect(database) as conn:
        ensure_schema(conn)  # and again, later
        versions = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
        assert versions == [(SCHEMA_VERSION,)]
        columns = dict(
            conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'predictions'"
            ).fetchall()
        )
        indexes = {
            row[0]: row[1]
            for row in conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'predictions'")
        }
        identity = conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'predictions'::regclass "
            "AND contype = 'u'"
        ).fetchall()
    assert columns == {
        "id": "bigint",
        "request_id": "text",
        "idx": "integer",
        "time": "timestamp with time zone",
        "model": "text",
        "model_version": "text",
        "endpoint": "text",
        "latency_ms": "double precision",
        "input_sha256": "text",
        "label": "bigint",
        "probabilities": "ARRAY",
        "chunk_id": "text",
    }
    assert identity == [("UNIQUE (request_id, idx)",)]
    assert any("(model, \"time\")" in d for d in indexes.values()), indexes
    assert any("(model, model_version, \"time\")" in d for d in indexes.values()), indexes


def test_insert_count_and_read_records_round_trip(pg: PgServer, database: str) -> None:
    records = [_record(f"req-{i // 3}", i % 3, label=i % 10) for i in range(30)]
    with pg.connect(database) as conn:
        ensure_schema(conn)
        assert insert_records(conn, []) == 0
        assert insert_records(conn, records[:20]) == 20
        assert insert_records(conn, records[:20]) == 0  # a repeated import adds nothing
        assert insert_records(conn, records[10:]) == 10  # overlapping: only the new ones
        assert count_records(conn) == 30

        page, last = read_records(conn, 0, 12)
        assert len(page) == 12
        rest, end = read_records(conn, last, 100)
        assert len(rest) == 18 and end > last
        assert read_records(conn, end, 100) == ([], end)
        # the same dicts the JSON lines carry, in insertion (id) order, values exact
        assert page + rest == records
        assert list(page[0]) == [
            "request_id", "time", "model", "model_version", "endpoint", "latency_ms", "index", "input_sha256",
            "label", "probabilities",
        ]  # fmt: skip

        with pytest.raises(ValueError, match="record 0"):
            insert_records(conn, [{"request_id": "x"}])
        assert count_records(conn) == 30


def test_insert_records_commits_or_joins_the_callers_transaction(pg: PgServer, database: str) -> None:
    """On an idle connection the helpers commit their own work; inside a transaction the caller
    (e.g. a migration tool batching several calls) decides."""
    with psycopg.connect(pg.dsn(database=database), password=pg.password) as conn:
        ensure_schema(conn)
        assert insert_records(conn, [_record("a", 0)]) == 1  # idle: committed
        conn.rollback()
        assert count_records(conn) == 1
        conn.rollback()
        conn.execute("SELECT 1")  # the caller's transaction is open
        assert insert_records(conn, [_record("a", 1), _record("a", 2)]) == 2
        conn.rollback()
        assert count_records(conn) == 1
        conn.execute("SELECT 1")
        assert insert_records(conn, [_record("a", 1)]) == 1
        conn.commit()
        assert count_records(conn) == 2


# -- the store ------------------------------------------------------------------------------------


def _store(pg: PgServer, database: str, **kwargs: Any) -> PostgresStore:
    return PostgresStore(pg.dsn(database=database), pg.password, **kwargs)


def _chunk(chunk_id: str, records: list[dict[str, Any]]) -> RecordChunk:
    return RecordChunk.from_jsonl(chunk_id, b"".join(json.dumps(r).encode() + b"\n" for r in records))


def test_a_replayed_chunk_adds_no_duplicates(pg: PgServer, database: str) -> None:
    records = [_record("r", i) for i in range(50)]

    async def go() -> tuple[int, int]:
        store = _store(pg, database)
        await store.open()
        await store.write(_chunk("c1", records))
        await store.write(_chunk("c1", records))  # replayed after a lost answer
        first = await store.count()
        await store.write(_chunk("c2", [*records[40:], _record("s", 0)]))  # partly seen before
        second = await store.count()
        await store.close()
        return first, second

    assert asyncio.run(go()) == (50, 51)
    with pg.connect(database) as conn:
        chunks = dict(conn.execute("SELECT chunk_id, count(*) FROM predictions GROUP BY chunk_id").fetchall())
    assert chunks == {"c1": 50, "c2": 1}


def test_store_from_settings_never_shows_the_password(pg: PgServer, database: str) -> None:
    settings = settings_from_env({"STORE": "postgres", "PG_DSN": pg.dsn(database=database), "PG_PASSWORD": pg.password})
    store = create_store(settings)
    assert isinstance(store, PostgresStore)
    assert store.describe() == f"postgresql://inference@localhost:{pg.port}/{database}"
    assert pg.password not in repr(settings) and pg.password not in store.describe()
    wrong = PostgresStore(pg.dsn(database=database), "not-the-password", connect_timeout=2)

    async def go() -> str:
        try:
            await wrong.open()
        except StoreError as exc:
            return str(exc)
        finally:
            await wrong.close()
        raise AssertionError("a wrong password was accepted")

    message = asyncio.run(go())
    assert "password authentication failed" in message or "PoolTimeout" in message, message
    assert "not-the-password" not in message and pg.password not in message


def test_a_log_started_while_the_database_is_down_replays_everything_once(tmp_path: Path) -> None:
    """PredictionLog + PostgresStore: the database is down at start (schema not there yet), the
    records spool; it comes up, the schema is created and every record lands once."""
    server = PgServer(password=f"pw-{secrets.token_hex(8)}")
    try:
        server.stop("fast")
        store = PostgresStore(server.dsn(), server.password, connect_timeout=1)
        metrics = Metrics()
        log = PredictionLog(store, tmp_path / "spool", metrics, flush_records=20, flush_seconds=0.05, retry_seconds=0.2)

        async def go() -> int:
            await log.start()
            for i in range(100):
                rows = np.full((2, 4), float(i), dtype=np.float32)
                probs = np.full((2, 3), 1 / 3, dtype=np.float32)
                log.record(f"req-{i}", "v1", "m", "v", time.time(), 0.001, rows, probs, [i % 3, (i + 1) % 3])
                if i % 10 == 0:
                    await asyncio.sleep(0.02)
            deadline = time.monotonic() + 20
            while log.spooled + log.queued < 200 or log.queued:
                assert time.monotonic() < deadline, (log.spooled, log.queued)
                await asyncio.sleep(0.05)
            assert not log.store_up
            await asyncio.to_thread(server.start)
            while log.spooled:
                assert time.monotonic() < deadline + 20, log.spooled
                await asyncio.sleep(0.05)
            count = await store.count()
            await log.close()
            return count

        assert asyncio.run(go()) == 200
        with server.connect() as conn:
            keys = Counter(conn.execute("SELECT request_id, idx FROM predictions").fetchall())
        assert keys == Counter({(f"req-{i}", j): 1 for i in range(100) for j in range(2)})
        assert not list((tmp_path / "spool").glob("*.jsonl"))
    finally:
        server.destroy()


# -- the service ----------------------------------------------------------------------------------


def _env(pg: PgServer, database: str, demo_model: Path, **extra: str) -> dict[str, str]:
    return {
        "MODEL_URI": str(demo_model / "model.onnx"),
        "STORE": "postgres",
        "PG_DSN": pg.dsn(database=database),
        "PG_PASSWORD": pg.password,
        **extra,
    }


def test_every_prediction_lands_with_its_fields(
    pg: PgServer, database: str, demo_model: Path, services: Any, digits: tuple
) -> None:
    svc: ServiceProcess = services(**_env(pg, database, demo_model))
    x_test = digits[0]
    sent: dict[str, dict[str, Any]] = {}
    with svc.client() as http:
        for i, n in enumerate([1, 3, 64, 2]):
            headers = {"X-Request-ID": f"P{i}"}
            response = http.post("/v1/predict", json={"instances": x_test[:n].tolist()}, headers=headers)
            assert response.status_code == 200, response.text
            sent[f"P{i}"] = response.json()
        body = {"inputs": [{"name": "float_input", "shape": [2, 64], "datatype": "FP32", "data": x_test[:2].tolist()}]}
        assert http.post("/v2/models/digits-mlp/infer", json=body, headers={"X-Request-ID": "P-v2"}).status_code == 200
    assert svc.stop() == 0  # shutdown flushes what is queued
    with pg.connect(database) as conn:
        rows, _ = read_records(conn, 0, 1000)
        chunk_ids = conn.execute("SELECT count(*) FROM predictions WHERE chunk_id IS NULL").fetchone()
    assert len(rows) == 72 and chunk_ids == (0,)
    by_key = {(r["request_id"], r["index"]): r for r in rows}
    assert len(by_key) == 72
    for request_id, answer in sent.items():
        for index, prediction in enumerate(answer["predictions"]):
            record = by_key[(request_id, index)]
            assert record["label"] == prediction["label"]
            assert record["probabilities"] == prediction["probabilities"]  # real[] keeps float32 exactly
            assert record["endpoint"] == "v1" and record["model"] == "digits-mlp"
            assert record["model_version"] == answer["model"]["version"]
            assert record["time"].endswith("Z") and record["latency_ms"] > 0
    assert {r["endpoint"] for r in rows if r["request_id"] == "P-v2"} == {"v2"}
    log = svc.log_path.read_text()
    assert "prediction store postgresql://inference@localhost" in log
    assert pg.password not in log


@pytest.mark.slow
def test_database_stopped_under_load_loses_and_duplicates_nothing(
    pg: PgServer, database: str, demo_model: Path, services: Any, digits: tuple
) -> None:
    """Many concurrent predictions while PostgreSQL is killed and started again: every request is
    answered 200, and afterwards the table holds each predicted row exactly once."""
    svc: ServiceProcess = services(
        **_env(pg, database, demo_model, STORE_FLUSH_RECORDS="40", PG_CONNECT_TIMEOUT="1", PG_POOL_MAX="2")
    )
    x_test = digits[0]
    done: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    stop_at = time.monotonic() + 7.0

    def client(worker: int) -> None:
        n = 0
        with httpx.Client(base_url=svc.base, timeout=30) as http:
            while time.monotonic() < stop_at:
                rows = 1 + n % 3
                request_id = f"w{worker}-{n}"
                response = http.post(
                    "/v1/predict",
                    json={"instances": x_test[n % 100 : n % 100 + rows].tolist()},
                    headers={"X-Request-ID": request_id},
                )
                with lock:
                    statuses[response.status_code] += 1
                    if response.status_code == 200:
                        done[request_id] = rows
                n += 1

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(client, w) for w in range(8)]
        time.sleep(1.5)
        pg.stop("immediate")  # as if the server crashed, under load
        time.sleep(2.5)
        metrics = httpx.get(f"{svc.base}/metrics").text
        pg.start()
        for future in futures:
            future.result()
    assert set(statuses) == {200}, statuses  # a store outage never fails a request
    assert metric_value(metrics, "prediction_store_up", store="postgres") == 0
    assert (metric_value(metrics, "prediction_store_spooled_records_total") or 0) > 0

    expected = Counter({(rid, i): 1 for rid, rows in done.items() for i in range(rows)})
    total = sum(expected.values())
    assert total > 200, total  # the load was real

    def landed() -> int:
        with psycopg.connect(pg.dsn(database=database), password=pg.password) as conn:
            return count_records(conn)

    wait_until(lambda: landed() >= total, timeout=60, interval=0.2, what=f"{total} rows in PostgreSQL")
    assert svc.stop() == 0
    with pg.connect(database) as conn:
        keys = Counter(conn.execute("SELECT request_id, idx FROM predictions").fetchall())
        assert count_records(conn) == total
    assert keys == expected  # nothing lost, nothing duplicated, nothing else
    assert not list(Path(svc.env["SPOOL_DIR"]).glob("*.jsonl"))
    final = svc.log_path.read_text()
    assert "replayed" in final and pg.password not in final


def test_connections_use_tls_and_the_service_user(pg: PgServer) -> None:
    with pg.connect(DATABASE) as conn:
        assert conn.execute("SELECT current_database(), current_user").fetchone() == (DATABASE, "inference")
        assert conn.execute("SHOW ssl").fetchone() == ("on",)
        assert conn.info.pgconn.ssl_in_use


def test_configuration_errors_name_the_variable_and_never_echo_a_password(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.service.helpers import ROOT, service_env

    cases = {
        "postgresql://inference:hunter2-secret@db:6432/predictions": "PG_DSN must not carry a password",
        "host=db user=inference password=hunter2-secret dbname=predictions": "PG_DSN must not carry a password",
        "": "STORE=postgres needs PG_DSN",
    }
    for dsn, words in cases.items():
        env = service_env(tmp_path, STORE="postgres", PG_DSN=dsn, PG_PASSWORD="pw")
        done = subprocess.run(
            [sys.executable, "-m", "service"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 2, done.stderr
        assert words in done.stderr, done.stderr
        assert "hunter2" not in done.stdout + done.stderr
