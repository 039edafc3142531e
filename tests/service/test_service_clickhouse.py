"""``STORE=clickhouse`` and the dashboard queries, on the real ClickHouse engine (chdb, in-process)
through clickhouse-connect's ``chdb://`` client, with the production DDL.

chdb opens one data directory per process at a time: every test closes its clients.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import clickhouse_connect
import httpx
import numpy as np
import pytest

from service import analytics
from service.metrics import Metrics
from service.prediction_log import PredictionLog
from service.settings import settings_from_env
from service.stores import create_store
from service.stores.base import RecordChunk, StoreError
from service.stores.clickhouse import (
    DEDUP_WINDOW,
    MINUTE_TABLE,
    MINUTE_VIEW,
    TABLE,
    ClickhouseParams,
    ClickhouseStore,
    count_records,
    ensure_schema,
    insert_records,
)
from tests.service.helpers import metric_value, wait_until


def _client(path: Path) -> Any:
    return clickhouse_connect.get_client(dsn=f"chdb://{path}")


@pytest.fixture
def ch(tmp_path: Path) -> Iterator[Any]:
    client = _client(tmp_path / "ch")
    yield client
    client.close()


def _records(n: int, *, start: datetime, model: str = "digits-mlp", rows: int = 2, tag: str = "r") -> list[dict]:
    """Records shaped like the service's JSON lines (``service.prediction_log``)."""
    out = []
    for i in range(n):
        when = start + timedelta(seconds=i)
        for j in range(rows):
            out.append(
                {
                    "request_id": f"{tag}{i}",
                    "time": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                    "model": model,
                    "model_version": "abc123def456",
                    "endpoint": "v1",
                    "latency_ms": 1.0 + i,
                    "index": j,
                    "input_sha256": "0" * 64,
                    "label": (i + j) % 10,
                    "probabilities": [0.1] * 10,
                }
            )
    return out


def _minute_totals(client: Any) -> tuple[int, int]:
    requests, predictions = client.query(f"SELECT sum(requests), sum(predictions) FROM {MINUTE_TABLE}").result_rows[0]
    return int(requests), int(predictions)


def test_the_schema_is_the_production_ddl(ch: Any) -> None:
    ensure_schema(ch)
    ensure_schema(ch)  # idempotent
    tables = dict(
        ch.query("SELECT name, engine_full FROM system.tables WHERE database = currentDatabase()").result_rows
    )
    assert set(tables) == {TABLE, MINUTE_TABLE, MINUTE_VIEW}
    raw = tables[TABLE]
    assert raw.startswith("MergeTree PARTITION BY toYYYYMM(time) ORDER BY (model, time, request_id, idx)")
    assert "TTL toDateTime(time) + toIntervalDay(365)" in raw
    assert f"non_replicated_deduplication_window = {DEDUP_WINDOW}" in raw
    assert tables[MINUTE_TABLE].startswith("AggregatingMergeTree PARTITION BY toYYYYMM(minute)")
    view = ch.query(
        "SELECT create_table_query FROM system.tables WHERE name = {n:String}", parameters={"n": MINUTE_VIEW}
    ).result_rows[0][0]
    assert f"TO default.{MINUTE_TABLE}" in view and "quantilesIfState(0.5, 0.9, 0.99)" in view

    ensure_schema(ch, ttl_days=30)  # CLICKHOUSE_TTL_DAYS changed: the TTL follows
    ensure_schema(ch)  # a caller without a TTL (the migration tool) leaves it alone
    ttls = dict(ch.query("SELECT name, engine_full FROM system.tables WHERE database = currentDatabase()").result_rows)
    assert "toIntervalDay(30)" in ttls[TABLE] and "toIntervalDay(30)" in ttls[MINUTE_TABLE]


def test_insert_records_is_idempotent_per_token_raw_rows_and_aggregates(ch: Any) -> None:
    ensure_schema(ch)
    batch = _records(50, start=datetime(2026, 3, 31, 23, 59, 30, tzinfo=UTC))  # spans two months (partitions)
    insert_records(ch, batch, "batch-1")
    assert count_records(ch) == 100 and _minute_totals(ch) == (50, 100)
    insert_records(ch, batch, "batch-1")  # replayed: nothing new, in the table or in the aggregates
    assert count_records(ch) == 100 and _minute_totals(ch) == (50, 100)
    insert_records(ch, _records(5, start=datetime(2026, 4, 1, tzinfo=UTC), tag="s"), "batch-2")
    assert count_records(ch) == 110 and _minute_totals(ch) == (55, 110)
    row = ch.query(f"SELECT request_id, idx, label, probabilities, time FROM {TABLE} ORDER BY time, idx LIMIT 1")
    request_id, idx, label, probabilities, when = row.result_rows[0]
    assert (request_id, idx, label) == ("r0", 0, 0)
    assert np.allclose(probabilities, [0.1] * 10)
    assert when.replace(tzinfo=None) == datetime(2026, 3, 31, 23, 59, 30)
    parts = ch.query(f"SELECT DISTINCT partition FROM system.parts WHERE table = '{TABLE}' AND active").result_rows
    assert sorted(p[0] for p in parts) == ["202603", "202604"]


def _chunk(records: list[dict], chunk_id: str) -> RecordChunk:
    return RecordChunk.from_jsonl(chunk_id, b"".join(json.dumps(r).encode() + b"\n" for r in records))


def test_the_store_writes_chunks_once_even_when_a_chunk_is_replayed(tmp_path: Path) -> None:
    settings = settings_from_env({}, store="clickhouse", clickhouse_dsn=f"chdb://{tmp_path / 'ch'}")
    store = create_store(settings)
    assert isinstance(store, ClickhouseStore) and store.describe() == f"chdb://{tmp_path / 'ch'}"
    chunk = _chunk(_records(30, start=datetime.now(UTC)), "20260101T000000000Z-abc-1-00000001")

    async def go() -> None:
        await store.open()
        await store.write(chunk)
        await store.write(chunk)  # a replay after a lost answer
        await store.close()

    asyncio.run(go())
    client = _client(tmp_path / "ch")
    try:
        assert count_records(client) == 60
        keys = client.query(f"SELECT request_id, idx, count() FROM {TABLE} GROUP BY request_id, idx").result_rows
        assert len(keys) == 60 and {k[2] for k in keys} == {1}
    finally:
        client.close()


def test_an_unusable_clickhouse_fails_writes_with_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "ch"
    blocker.write_text("a file where ClickHouse's data directory should be")
    store = ClickhouseStore(ClickhouseParams(dsn=f"chdb://{blocker}"))

    async def go() -> None:
        with pytest.raises(StoreError, match="chdb://"):
            await store.open()
        with pytest.raises(StoreError, match="insert of chunk c1 failed"):
            await store.write(_chunk(_records(1, start=datetime.now(UTC)), "c1"))
        await store.close()

    asyncio.run(go())
    https = ClickhouseParams(host="c-abc.rw.mdb.yandexcloud.net", user="aistack", database="predictions")
    assert https.describe() == "clickhouse https://aistack@c-abc.rw.mdb.yandexcloud.net:8443/predictions"


def _record(log: PredictionLog, i: int, rows: int = 2) -> None:
    x = np.full((rows, 4), float(i), dtype=np.float32)
    p = np.full((rows, 3), 1 / 3, dtype=np.float32)
    log.record(f"req-{i}", "v1", "digits-mlp", "abc123def456", time.time(), 0.002, x, p, [i % 3] * rows)


async def _until(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


def test_outage_spools_and_replay_delivers_every_record_once(tmp_path: Path) -> None:
    """ClickHouse unusable from the start (its data path is a file), then back: nothing lost, nothing doubled."""
    data = tmp_path / "ch"
    data.write_text("not a directory")
    store, metrics = ClickhouseStore(ClickhouseParams(dsn=f"chdb://{data}")), Metrics()
    log = PredictionLog(store, tmp_path / "spool", metrics, flush_records=40, flush_seconds=0.05, retry_seconds=0.1)

    async def go() -> None:
        await log.start()
        for i in range(150):
            _record(log, i)
            if i % 25 == 0:
                await asyncio.sleep(0.01)
        await _until(lambda: log.spooled == 300 and log.queued == 0)
        assert not log.store_up
        assert len(list((tmp_path / "spool").glob("*.jsonl"))) > 1
        data.unlink()  # ClickHouse is back
        await _until(lambda: log.spooled == 0 and log.store_up)
        for i in range(150, 200):  # and takes new records directly
            _record(log, i)
        await log.close()

    asyncio.run(go())
    client = _client(data)
    try:
        assert count_records(client) == 400
        keys = Counter((r, i) for r, i in client.query(f"SELECT request_id, idx FROM {TABLE}").result_rows)
        assert keys == Counter({(f"req-{i}", j): 1 for i in range(200) for j in range(2)})
        assert _minute_totals(client)[1] == 400
    finally:
        client.close()
    text = metrics.render().decode()
    assert metric_value(text, "prediction_store_spooled_records_total") == 300
    assert metric_value(text, "prediction_store_replayed_records_total") == 300
    assert metric_value(text, "prediction_store_written_records_total", store="clickhouse") == 400
    assert (metric_value(text, "prediction_store_errors_total", store="clickhouse", operation="open") or 0) >= 1
    assert list((tmp_path / "spool").glob("*")) == []


def test_a_mid_run_insert_failure_spools_and_replays_exactly(tmp_path: Path) -> None:
    """ClickHouse refuses inserts while running (TOO_MANY_PARTS), then accepts them again."""
    path = tmp_path / "ch"
    admin = _client(path)
    ensure_schema(admin)
    store, metrics = ClickhouseStore(ClickhouseParams(dsn=f"chdb://{path}")), Metrics()
    log = PredictionLog(store, tmp_path / "spool", metrics, flush_records=20, flush_seconds=0.05, retry_seconds=0.1)

    async def go() -> None:
        await log.start()
        for i in range(50):
            _record(log, i)
        await _until(lambda: count_records(admin) == 100)
        admin.command(f"ALTER TABLE {TABLE} MODIFY SETTING parts_to_throw_insert = 1")
        for i in range(50, 120):
            _record(log, i)
            if i % 10 == 0:
                await asyncio.sleep(0.01)
        await _until(lambda: log.spooled == 140 and not log.store_up)
        admin.command(f"ALTER TABLE {TABLE} MODIFY SETTING parts_to_throw_insert = 3000")
        await _until(lambda: log.spooled == 0 and log.store_up)
        await log.close()

    try:
        asyncio.run(go())
        assert count_records(admin) == 240
        dupes = admin.command(f"SELECT count() - uniqExact(request_id, idx) FROM {TABLE}")
        assert int(dupes) == 0
        assert _minute_totals(admin) == (120, 240)
    finally:
        admin.close()
    text = metrics.render().decode()
    assert (metric_value(text, "prediction_store_errors_total", store="clickhouse", operation="write") or 0) >= 1
    assert metric_value(text, "prediction_store_replayed_records_total") == 140


def test_dashboard_queries(ch: Any) -> None:
    ensure_schema(ch)
    t0 = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)
    records: list[dict] = []
    latencies: dict[tuple[str, int], list[float]] = {}
    for minute in range(3):
        for model, n in (("digits-mlp", 6), ("other", 2)):
            for i in range(n):
                latency = 2.0 * (i + 1) + minute
                latencies.setdefault((model, minute), []).append(latency)
                for j in range(3):  # 3 rows per request: the request's latency counts once
                    records.append(
                        {
                            "request_id": f"{model}-{minute}-{i}",
                            "time": (t0 + timedelta(minutes=minute, seconds=i)).isoformat(),
                            "model": model,
                            "model_version": "v1",
                            "endpoint": "v1",
                            "latency_ms": latency,
                            "index": j,
                            "input_sha256": "",
                            "label": (i + j) % 4,
                            "probabilities": [0.25] * 4,
                            **({"error": "non-finite output"} if model == "digits-mlp" and i == 0 and j == 2 else {}),
                        }
                    )
    outside = _records(3, start=t0 + timedelta(hours=2), tag="late")
    insert_records(ch, records, "dash-1")
    insert_records(ch, outside, "dash-2")
    since, until = t0, t0 + timedelta(hours=1)

    points = analytics.latency_quantiles(ch, since=since, until=until, model="digits-mlp")
    assert [p.time for p in points] == [t0 + timedelta(minutes=m) for m in range(3)]
    for minute, point in enumerate(points):
        values = latencies[("digits-mlp", minute)]
        assert (point.requests, point.predictions, point.errors) == (6, 18, 1)
        expected = np.quantile(values, [0.5, 0.9, 0.99])
        assert [point.p50_ms, point.p90_ms, point.p99_ms] == pytest.approx(expected.tolist(), rel=1e-6)
    wide = analytics.latency_quantiles(ch, since=since, until=until, bucket_seconds=3600)
    assert {(p.model, p.time, p.requests) for p in wide} == {("digits-mlp", t0, 18), ("other", t0, 6)}
    with pytest.raises(ValueError, match="multiple of 60"):
        analytics.latency_quantiles(ch, since=since, bucket_seconds=90)

    rates = analytics.error_rate(ch, since=since, until=until, bucket_seconds=3600)
    assert [(r.model, r.predictions, r.errors) for r in rates] == [("digits-mlp", 54, 3), ("other", 18, 0)]
    assert rates[0].rate == pytest.approx(3 / 54)

    labels = analytics.label_distribution(ch, since=since, until=until, model="other", bucket_seconds=60)
    expected_counts: Counter[tuple[datetime, int]] = Counter()
    for r in records:
        if r["model"] == "other":
            expected_counts[(t0 + timedelta(minutes=int(r["request_id"].split("-")[1])), r["label"])] += 1
    assert {(lc.time, lc.label): lc.count for lc in labels} == dict(expected_counts)
    for minute in range(3):
        shares = [lc.share for lc in labels if lc.time == t0 + timedelta(minutes=minute)]
        assert sum(shares) == pytest.approx(1.0)
    ok_only = analytics.label_distribution(ch, since=since, until=until, model="digits-mlp", bucket_seconds=3600)
    assert sum(lc.count for lc in ok_only) == 54 - 3  # failed predictions carry no label worth counting


@pytest.mark.slow
def test_service_with_clickhouse_store_outage_and_replay_end_to_end(
    services: Any, demo_model: Path, digits: tuple, tmp_path: Path
) -> None:
    data = tmp_path / "clickhouse"
    data.write_text("ClickHouse is not there yet")
    svc = services(
        MODEL_URI=str(demo_model / "model.onnx"),
        STORE="clickhouse",
        CLICKHOUSE_DSN=f"chdb://{data}",
        CLICKHOUSE_TTL_DAYS="90",
        STORE_FLUSH_RECORDS="10",
    )
    x_test = digits[0]
    with svc.client() as http:
        for i in range(25):
            r = http.post(
                "/v1/predict", json={"instances": x_test[i : i + 3].tolist()}, headers={"X-Request-ID": f"c{i}"}
            )
            assert r.status_code == 200, r.text
        wait_until(
            lambda: metric_value(httpx.get(f"{svc.base}/metrics").text, "prediction_store_spool_records") == 75,
            what="75 records spooled while ClickHouse is unusable",
        )
        assert metric_value(httpx.get(f"{svc.base}/metrics").text, "prediction_store_up", store="clickhouse") == 0
        data.unlink()  # ClickHouse is back
        wait_until(
            lambda: (
                (t := httpx.get(f"{svc.base}/metrics").text)
                and metric_value(t, "prediction_store_spool_records") == 0
                and metric_value(t, "prediction_store_written_records_total", store="clickhouse") == 75
            ),
            timeout=30,
            what="the spool replayed into ClickHouse",
        )
        r = http.post("/v1/predict", json={"instances": x_test[:2].tolist()}, headers={"X-Request-ID": "after"})
        assert r.status_code == 200
    assert svc.stop() == 0
    client = _client(data)
    try:
        rows = client.query(f"SELECT request_id, idx, label, model, endpoint FROM {TABLE}").result_rows
        assert Counter((r[0], r[1]) for r in rows) == Counter(
            {(f"c{i}", j): 1 for i in range(25) for j in range(3)} | {("after", 0): 1, ("after", 1): 1}
        )
        assert {(r[3], r[4]) for r in rows} == {("digits-mlp", "v1")}
        assert "toIntervalDay(90)" in client.command(
            f"SELECT engine_full FROM system.tables WHERE name = '{TABLE}' AND database = currentDatabase()"
        )
    finally:
        client.close()
