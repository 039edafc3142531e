"""The prediction log: every prediction recorded; store outages spill to disk and replay, no loss."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from service.metrics import Metrics
from service.prediction_log import PredictionLog
from service.stores.base import PredictionStore, RecordChunk, StoreError
from tests.service.helpers import MotoS3, metric_value, wait_until


class FlakyStore(PredictionStore):
    """An in-memory store that can be switched off, counting what it was given."""

    name = "flaky"

    def __init__(self) -> None:
        self.down = False
        self.slow = 0.0
        self.records: list[dict] = []
        self.attempts = 0

    async def write(self, chunk: RecordChunk) -> None:
        self.attempts += 1
        if self.slow:
            await asyncio.sleep(self.slow)
        if self.down:
            raise StoreError("connection refused")
        # what a real store persists: the JSON lines
        self.records.extend(json.loads(line) for line in chunk.jsonl().splitlines())

    def describe(self) -> str:
        return "memory"


def _record(log: PredictionLog, i: int, rows: int = 1) -> None:
    x = np.full((rows, 4), float(i), dtype=np.float32)
    p = np.full((rows, 3), 1 / 3, dtype=np.float32)
    log.record(f"req-{i}", "v1", "m", "v1", time.time(), 0.001, x, p, [i % 3] * rows)


def _keys(records: list[dict]) -> Counter:
    return Counter((r["request_id"], r["index"]) for r in records)


def _expected(requests: int, rows: int) -> Counter:
    return Counter((f"req-{i}", j) for i in range(requests) for j in range(rows))


async def _until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


def test_an_outage_spills_to_disk_and_replays_every_record_once(tmp_path: Path) -> None:
    store, metrics = FlakyStore(), Metrics()
    log = PredictionLog(store, tmp_path / "spool", metrics, flush_records=25, flush_seconds=0.05, retry_seconds=0.1)

    async def go() -> None:
        await log.start()
        for i in range(100):  # the store works
            _record(log, i, rows=2)
        await _until(lambda: len(store.records) == 200)
        store.down = True
        for i in range(100, 400):  # outage: requests keep coming
            _record(log, i, rows=2)
            if i % 50 == 0:
                await asyncio.sleep(0.01)
        await _until(lambda: log.spooled + log.queued == 600 and log.queued == 0)
        assert not log.store_up
        assert len(list((tmp_path / "spool").glob("*.jsonl"))) > 1
        store.down = False  # the store is back: the replayer drains the spool
        await _until(lambda: log.spooled == 0 and len(store.records) == 800)
        await log.close()

    asyncio.run(go())
    assert _keys(store.records) == _expected(400, 2)  # every record, exactly once
    assert list((tmp_path / "spool").glob("*")) == []
    text = metrics.render().decode()
    assert metric_value(text, "prediction_store_spooled_records_total") == 600
    assert metric_value(text, "prediction_store_replayed_records_total") == 600
    assert metric_value(text, "prediction_store_written_records_total", store="flaky") == 800
    assert (metric_value(text, "prediction_store_errors_total", store="flaky", operation="write") or 0) >= 1
    assert metric_value(text, "prediction_store_up", store="flaky") == 1
    assert metric_value(text, "prediction_store_queue_depth") == 0
    assert metric_value(text, "prediction_store_spool_records") == 0


def test_shutdown_during_an_outage_keeps_records_for_the_next_start(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    down = FlakyStore()
    down.down = True

    async def first_life() -> None:
        log = PredictionLog(down, spool, Metrics(), flush_records=1000, flush_seconds=10, retry_seconds=10)
        await log.start()
        for i in range(123):
            _record(log, i)
        await log.close(asyncio.get_running_loop().time() + 2.0)  # the write fails: the chunk goes to disk

    asyncio.run(first_life())
    on_disk = sum(len(p.read_bytes().splitlines()) for p in spool.glob("*.jsonl"))
    assert on_disk == 123

    store = FlakyStore()

    async def second_life() -> None:
        log = PredictionLog(store, spool, Metrics(), flush_records=1000, flush_seconds=0.05, retry_seconds=0.05)
        await log.start()
        await _until(lambda: len(store.records) == 123)
        await log.close()

    asyncio.run(second_life())
    assert _keys(store.records) == _expected(123, 1)
    assert list(spool.glob("*.jsonl")) == []


def test_a_slow_store_spills_beyond_the_queue_limit_instead_of_dropping(tmp_path: Path) -> None:
    store = FlakyStore()
    store.slow = 0.3
    log = PredictionLog(
        store, tmp_path / "spool", Metrics(), flush_records=10, flush_seconds=0.05, retry_seconds=0.05, queue_max=50
    )

    async def go() -> None:
        await log.start()
        for i in range(500):
            _record(log, i)
            if i % 100 == 0:
                await asyncio.sleep(0)
        assert log.queued <= 50
        store.slow = 0.0
        await _until(lambda: len(store.records) == 500 and log.spooled == 0, timeout=20)
        await log.close()

    asyncio.run(go())
    assert _keys(store.records) == _expected(500, 1)


def test_when_even_the_spool_fails_records_stay_in_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "spool"
    blocker.write_text("a file where the spool directory should be")
    store, metrics = FlakyStore(), Metrics()
    store.down = True
    log = PredictionLog(store, blocker, metrics, flush_records=5, flush_seconds=0.05, retry_seconds=0.05)

    async def go() -> None:
        await log.start()
        for i in range(40):
            _record(log, i)

        def spool_failed() -> bool:
            text = metrics.render().decode()
            return (metric_value(text, "prediction_store_errors_total", store="flaky", operation="spool") or 0) >= 1

        await _until(lambda: store.attempts >= 1 and spool_failed())
        assert log.queued == 40 and log.spooled == 0  # neither written nor on disk: kept in memory
        store.down = False
        await _until(lambda: len(store.records) == 40)
        await log.close()

    asyncio.run(go())
    assert _keys(store.records) == _expected(40, 1)


def test_local_store_records_every_prediction(services, demo_model: Path, digits: tuple) -> None:  # type: ignore[no-untyped-def]
    svc = services(MODEL_URI=str(demo_model / "model.onnx"))
    x_test = digits[0]
    sizes = [1, 5, 2, 64, 3]
    with svc.client() as http:
        for i, n in enumerate(sizes):
            r = http.post("/v1/predict", json={"instances": x_test[:n].tolist()}, headers={"X-Request-ID": f"L{i}"})
            assert r.status_code == 200
        r = http.post(
            "/v2/models/digits-mlp/infer",
            json={
                "inputs": [{"name": "float_input", "shape": [2, 64], "datatype": "FP32", "data": x_test[:2].tolist()}]
            },
            headers={"X-Request-ID": "L-v2"},
        )
        assert r.status_code == 200
    assert svc.stop() == 0  # shutdown flushes what is queued
    lines = [
        json.loads(line) for p in Path(svc.env["STORE_PATH"]).glob("*.jsonl") for line in p.read_bytes().splitlines()
    ]
    keys = _keys(lines)
    assert keys == Counter(
        {(f"L{i}", j): 1 for i, n in enumerate(sizes) for j in range(n)} | {("L-v2", 0): 1, ("L-v2", 1): 1}
    )
    assert {r["endpoint"] for r in lines} == {"v1", "v2"}


def _s3_records(moto: MotoS3, bucket: str, prefix: str) -> list[dict]:
    s3 = moto.client()
    records = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            assert obj["Key"].endswith(".jsonl") and "/dt=" in obj["Key"]
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            records.extend(json.loads(line) for line in body.splitlines())
    return records


def test_s3_store_outage_and_replay_end_to_end(services, demo_model: Path, digits: tuple) -> None:  # type: ignore[no-untyped-def]
    moto = MotoS3()
    try:
        moto.create_bucket("predictions")
        svc = services(
            MODEL_URI=str(demo_model / "model.onnx"),
            STORE="s3",
            STORE_S3_URI="s3://predictions/mvp/",
            STORE_FLUSH_RECORDS="10",
            S3_CONNECT_TIMEOUT="0.5",
            S3_READ_TIMEOUT="2",
            **moto.env(),
        )
        x_test = digits[0]
        with svc.client() as http:

            def burst(tag: str, count: int) -> None:
                for i in range(count):
                    r = http.post(
                        "/v1/predict",
                        json={"instances": x_test[i % 50 : i % 50 + 2].tolist()},
                        headers={"X-Request-ID": f"{tag}{i}"},
                    )
                    assert r.status_code == 200, r.text

            burst("up", 30)  # 60 records while the store is up
            wait_until(lambda: len(_s3_records(moto, "predictions", "mvp/")) == 60, what="records in S3")

            moto.stop()  # outage: Object Storage unreachable
            burst("down", 40)  # 80 more records; requests still succeed
            metrics = wait_until(
                lambda: (
                    (t := httpx.get(f"{svc.base}/metrics").text)
                    and (metric_value(t, "prediction_store_spooled_records_total") or 0) >= 80
                    and t
                ),
                what="records spilled to disk",
            )
            assert metric_value(metrics, "prediction_store_up", store="s3") == 0
            assert (metric_value(metrics, "prediction_store_errors_total", store="s3", operation="write") or 0) >= 1

            moto.start()  # Object Storage is back (same endpoint, same buckets)
            records = wait_until(
                lambda: (r := _s3_records(moto, "predictions", "mvp/")) and len(r) >= 140 and r,
                timeout=30,
                what="replayed records",
            )
        assert svc.stop() == 0
        records = _s3_records(moto, "predictions", "mvp/")
        keys = _keys(records)
        expected = Counter({(f"up{i}", j): 1 for i in range(30) for j in range(2)}) + Counter(
            {(f"down{i}", j): 1 for i in range(40) for j in range(2)}
        )
        assert keys == expected, "records lost or duplicated"
        assert list(Path(svc.env["SPOOL_DIR"]).glob("*.jsonl")) == []
    finally:
        moto.stop()
