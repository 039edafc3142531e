"""``stagectl migrate-data``: real moto S3, real PostgreSQL and the real ClickHouse engine (chdb):
thousands of records moved, counted, re-run without duplicates, interrupted and resumed."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest

from stagectl import migrate
from tests.service.helpers import CREDENTIALS, MotoS3
from tests.service.pg_server import PgServer

RECORDS = 3000
PER_OBJECT = 100


def make_records(n: int) -> list[dict[str, Any]]:
    return [{"request_id": f"req-{i // 4:06d}", "time": f"2026-11-{1 + i % 28:02d}T10:{i % 60:02d}:00.000Z",
             "model": "digits-mlp", "model_version": "94dd454b771d", "endpoint": "/v1/predict",
             "latency_ms": round(1 + (i % 50) / 10, 3), "index": i % 4, "input_sha256": f"{i:064x}",
             "label": i % 10, "probabilities": [0.1] * 10} for i in range(n)]


@pytest.fixture(scope="module")
def s3(monkeypatch_module: pytest.MonkeyPatch) -> Iterator[tuple[MotoS3, str]]:
    server = MotoS3()
    for key, value in CREDENTIALS.items():
        monkeypatch_module.setenv(key, value)
    server.create_bucket("records")
    client = server.client()
    records = make_records(RECORDS)
    for start in range(0, RECORDS, PER_OBJECT):
        body = "".join(json.dumps(r) + "\n" for r in records[start:start + PER_OBJECT])
        client.put_object(Bucket="records", Key=f"predictions/2026/11/{start:08d}.jsonl", Body=body.encode())
    yield server, "s3://records/predictions/"
    server.stop()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    patch = pytest.MonkeyPatch()
    yield patch
    patch.undo()


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    server = PgServer(password=f"pw-{secrets.token_hex(12)}")
    yield server
    server.destroy()


@pytest.fixture
def pg_dsn(pg: PgServer) -> str:
    return pg.create_database(f"m_{secrets.token_hex(5)}")


def args(**kw: Any) -> SimpleNamespace:
    return SimpleNamespace(**{"s3_uri": None, "s3_endpoint": None, "pg_dsn": None, "clickhouse_dsn": None, **kw})


def test_s3_to_postgres_moves_everything_once_and_resumes(s3, pg, pg_dsn, tmp_path):
    server, uri = s3
    env = {"PG_PASSWORD": pg.password, "AWS_REGION": "ru-central1"}
    source, sink = migrate.build("mvp", "partner", args(s3_uri=uri, s3_endpoint=server.endpoint, pg_dsn=pg_dsn),
                                 env)
    assert sink is not None
    checkpoint = migrate.Checkpoint.load(tmp_path / "cp.json", "mvp->partner")
    with pytest.raises(KeyboardInterrupt):
        migrate.run(source, sink, checkpoint, batch_size=500, stop_after_batches=2)
    saved = json.loads((tmp_path / "cp.json").read_text())
    assert saved["moved"] == 1000 and saved["position"] == "predictions/2026/11/00000900.jsonl"
    assert sink.count() == 1000

    resumed = migrate.run(source, sink, migrate.Checkpoint.load(tmp_path / "cp.json", "mvp->partner"),
                          batch_size=500)
    assert resumed.resumed_from == "predictions/2026/11/00000900.jsonl"
    assert resumed.moved_this_run == RECORDS - 1000
    assert (resumed.source_records, resumed.sink_after) == (RECORDS, RECORDS) and resumed.verified
    assert not (tmp_path / "cp.json").exists(), "a finished run removes its checkpoint"

    again = migrate.run(source, sink, migrate.Checkpoint.load(tmp_path / "cp.json", "mvp->partner"))
    assert again.moved_this_run == RECORDS and again.sink_after == RECORDS, "a re-run creates no duplicates"
    with pg.connect(urlsplit(pg_dsn).path.lstrip("/")) as conn:
        assert conn.execute("SELECT count(DISTINCT (request_id, idx)) FROM predictions").fetchone()[0] == RECORDS


def test_postgres_to_clickhouse_moves_everything_once_and_resumes(s3, pg, pg_dsn, tmp_path):
    server, uri = s3
    env = {"PG_PASSWORD": pg.password, "AWS_REGION": "ru-central1"}
    source, sink = migrate.build("mvp", "partner", args(s3_uri=uri, s3_endpoint=server.endpoint, pg_dsn=pg_dsn),
                                 env)
    assert sink is not None
    migrate.run(source, sink, migrate.Checkpoint.load(tmp_path / "a.json", "mvp->partner"))

    ch = f"chdb://{tmp_path / 'ch'}"
    source, sink = migrate.build("partner", "prod", args(pg_dsn=pg_dsn, clickhouse_dsn=ch), env)
    assert sink is not None
    checkpoint = migrate.Checkpoint.load(tmp_path / "b.json", "partner->prod")
    with pytest.raises(KeyboardInterrupt):
        migrate.run(source, sink, checkpoint, batch_size=700, stop_after_batches=1)
    assert sink.count() == 700
    report = migrate.run(source, sink, migrate.Checkpoint.load(tmp_path / "b.json", "partner->prod"),
                         batch_size=700)
    assert report.moved_this_run == RECORDS - 700 and report.sink_after == RECORDS and report.verified
    again = migrate.run(source, sink, migrate.Checkpoint.load(tmp_path / "b.json", "partner->prod"),
                        batch_size=700)
    assert again.sink_after == RECORDS, "the same batches carry the same tokens: nothing is added twice"
    sink.client.close()


def test_dry_run_writes_nothing(s3, pg, pg_dsn, tmp_path):
    server, uri = s3
    source, sink = migrate.build("mvp", "partner", args(s3_uri=uri, s3_endpoint=server.endpoint, pg_dsn=pg_dsn),
                                 {"PG_PASSWORD": pg.password}, dry_run=True)
    assert sink is None
    report = migrate.run(source, None, migrate.Checkpoint.load(tmp_path / "cp.json", "mvp->partner"), dry_run=True)
    assert report.source_records == RECORDS and report.moved_this_run == 0
    assert f"dry run: would move {RECORDS:,} records" in report.render()
    with pg.connect(urlsplit(pg_dsn).path.lstrip("/")) as conn:
        assert conn.execute("SELECT to_regclass('predictions')").fetchone()[0] is None


def test_cli_moves_and_never_echoes_the_password(s3, pg, pg_dsn, tmp_path):
    server, uri = s3
    env = {**CREDENTIALS, "PG_PASSWORD": pg.password, "AWS_REGION": "ru-central1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "stagectl", "migrate-data", "mvp", "partner", "--s3-uri", uri,
                             "--s3-endpoint", server.endpoint, "--pg-dsn", pg_dsn, "--checkpoint",
                             str(tmp_path / "cp.json")], env=env, capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    assert f"source records: {RECORDS:,}" in result.stdout and "verified: every source record" in result.stdout
    assert pg.password not in result.stdout + result.stderr


@pytest.mark.parametrize(("source", "target", "message"), [
    ("mvp", "prod", "no migration mvp -> prod"),
    ("prod", "partner", "no migration prod -> partner"),
])
def test_unknown_routes_are_refused(source, target, message):
    with pytest.raises(migrate.MigrationError, match=message):
        migrate.build(source, target, args(), {})


def test_missing_settings_are_named():
    with pytest.raises(migrate.MigrationError, match="pass --s3-uri s3://bucket/prefix/ or set STORE_S3_URI"):
        migrate.build("mvp", "partner", args(), {})
    with pytest.raises(migrate.MigrationError, match="pass --pg-dsn or set PG_DSN"):
        migrate.build("partner", "prod", args(), {})


def test_a_checkpoint_of_another_route_is_refused(tmp_path):
    path = tmp_path / "cp.json"
    path.write_text(json.dumps({"route": "partner->prod", "position": 5, "moved": 5}))
    with pytest.raises(migrate.MigrationError, match="belongs to partner->prod, not mvp->partner"):
        migrate.Checkpoint.load(path, "mvp->partner")


def test_passwords_are_redacted_from_dsns():
    assert migrate._redact_dsn("postgresql://u:hunter2@h:6432/db") == "postgresql://u:***@h:6432/db"
    assert migrate._redact_dsn("host=h user=u password=hunter2") == "host=h user=u password=***"
