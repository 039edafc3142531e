"""The data migration (``service.migrate``, also ``stagectl migrate-data``): real moto S3, real
PostgreSQL and the real ClickHouse engine (chdb): thousands of records moved, counted, re-run without
duplicates, interrupted and resumed; and the partner host's compose tool service ``migrate`` run
for real with its own entrypoint, environment and mounts, on the secrets its ``secrets`` service
fetched (from a stand-in of the metadata service and Lockbox) and TLS verified against the CA it
downloaded."""

from __future__ import annotations

import dataclasses
import fnmatch
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

from components.host_workload import MIGRATE_COMMAND, MIGRATE_SERVICE, compose_yaml
from service import migrate
from tests.infra.host_sim import (
    WORKLOAD,
    ContainerView,
    ca_rewrite,
    fake_cloud,
    host_directory,
    normalized,
    run_python_service,
    secrets_env,
    sourced_env_file,
)
from tests.service.helpers import CREDENTIALS, MotoS3
from tests.service.pg_server import PgServer

ROOT = Path(__file__).resolve().parents[2]

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


@pytest.mark.parametrize("command", [["-m", "stagectl", "migrate-data"], ["-m", "service.migrate"]],
                         ids=["stagectl", "service-module"])
def test_cli_moves_and_never_echoes_the_password(s3, pg, pg_dsn, tmp_path, command):
    server, uri = s3
    env = {**CREDENTIALS, "PG_PASSWORD": pg.password, "AWS_REGION": "ru-central1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, *command, "mvp", "partner", "--s3-uri", uri,
                             "--s3-endpoint", server.endpoint, "--pg-dsn", pg_dsn, "--checkpoint",
                             str(tmp_path / "cp.json")], env=env, capture_output=True, text=True, timeout=300,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert f"source records: {RECORDS:,}" in result.stdout and "verified: every source record" in result.stdout
    assert pg.password not in result.stdout + result.stderr


def test_both_entry_points_run_the_same_code():
    from stagectl.cli import build_parser

    args = build_parser().parse_args(["migrate-data", "partner", "prod", "--batch", "7"])
    refused = subprocess.run([sys.executable, "-m", "service.migrate", "partner", "prod"], cwd=ROOT,
                             env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert refused.stderr.strip() == "python -m service.migrate: no PostgreSQL: pass --pg-dsn or set PG_DSN " \
                                     "(password in PG_PASSWORD)"
    assert (args.source, args.target, args.batch) == ("partner", "prod", 7)
    assert args.func.__module__ == "stagectl.migrate"
    stagectl_migrate = sys.modules["stagectl.migrate"]
    assert stagectl_migrate.migrate is migrate, "stagectl registers the service package's migration"
    assert {n for n in vars(stagectl_migrate) if not n.startswith("_")} <= {
        "annotations", "argparse", "Any", "migrate", "PROG", "add_commands"}, "no second implementation"


def test_the_source_bucket_may_take_its_own_key(s3):
    server, uri = s3
    env = {"MIGRATE_S3_ACCESS_KEY_ID": "mvp-key-id", "MIGRATE_S3_SECRET_ACCESS_KEY": "mvp-secret",
           "AWS_ACCESS_KEY_ID": "partner-key-id", "AWS_SECRET_ACCESS_KEY": "partner-secret"}
    source, _ = migrate.build("mvp", "partner", args(s3_uri=uri, s3_endpoint=server.endpoint), env, dry_run=True)
    assert isinstance(source, migrate.S3Source)
    assert source.client._request_signer._credentials.access_key == "mvp-key-id"
    assert source.count() == RECORDS
    with pytest.raises(migrate.MigrationError, match="set both MIGRATE_S3_ACCESS_KEY_ID and "
                                                     "MIGRATE_S3_SECRET_ACCESS_KEY"):
        migrate.build("mvp", "partner", args(s3_uri=uri), {"MIGRATE_S3_ACCESS_KEY_ID": "x"}, dry_run=True)


def test_the_default_checkpoint_follows_migrate_checkpoint_dir(tmp_path):
    assert migrate.default_checkpoint("mvp", "partner", {}) == Path("var/migrate/mvp-partner.json")
    assert migrate.default_checkpoint("partner", "prod", {"MIGRATE_CHECKPOINT_DIR": str(tmp_path)}) == \
        tmp_path / "partner-prod.json"


# --- the partner host's migrate tool service -------------------------------------------------------------

def _dockerignored(relative: str) -> bool:
    patterns = [p.strip() for p in (ROOT / "service" / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    return any(fnmatch.fnmatch(relative, p.removeprefix("**/")) or fnmatch.fnmatch(relative, p) for p in patterns)


def test_the_image_holds_the_module_the_migrate_service_runs():
    """service/Dockerfile copies the build context (service/) to /app/service and works in /app, so
    ``python -m service.migrate`` there runs this repository's service/migrate.py."""
    dockerfile = (ROOT / "service" / "Dockerfile").read_text().splitlines()
    assert "WORKDIR /app" in dockerfile and "COPY . /app/service/" in dockerfile
    module = MIGRATE_COMMAND.split()[-1]
    assert MIGRATE_COMMAND.split()[:2] == ["python", "-m"] and module == "service.migrate"
    relative = Path(*module.split(".")[1:]).with_suffix(".py")
    assert (ROOT / "service" / relative).is_file() and not _dockerignored(str(relative))
    for imported in ("boto3", "orjson", "psycopg", "clickhouse-connect"):
        assert any(line.split(">")[0].split("[")[0].strip() == imported
                   for line in (ROOT / "service" / "requirements.in").read_text().splitlines()), imported


def test_the_partner_hosts_migrate_service_moves_the_records(s3, pg, pg_dsn, tmp_path):
    server, uri = s3
    database = urlsplit(pg_dsn).path.lstrip("/")
    # the stage's DSN shape, pointing at the local server; the compose file adds sslrootcert itself
    workload = dataclasses.replace(WORKLOAD,
                                   pg_dsn=f"postgresql://inference@localhost:{pg.port}/{database}?sslmode=verify-full")
    compose = normalized(compose_yaml(workload), tmp_path)
    service = compose["services"][MIGRATE_SERVICE]
    assert service["profiles"] == ["tools"]
    assert "sslmode=verify-full" in service["environment"]["PG_DSN"]
    (ca,) = [p.split("=", 1)[1] for p in service["environment"]["PG_DSN"].split("&") if p.startswith("sslrootcert=")]
    downloads = json.loads(compose["services"]["secrets"]["environment"]["AISTACK_DOWNLOADS"])
    assert ca in downloads, "sslrootcert names the CA the secrets service downloads"
    assert service["environment"]["CLICKHOUSE_CA_FILE"] == ca
    with fake_cloud() as cloud, host_directory() as root:
        cloud.state.payloads = {
            WORKLOAD.secrets.storage_key: [{"key": k, "textValue": v} for k, v in CREDENTIALS.items()],
            WORKLOAD.secrets.database: [{"key": "PG_PASSWORD", "textValue": pg.password}],
            WORKLOAD.secrets.grafana: [{"key": "GF_SECURITY_ADMIN_PASSWORD", "textValue": "unused"}],
        }
        cloud.state.ca = pg.ca_file.read_bytes()  # the test server's CA stands for Yandex's
        # what `docker compose run migrate` starts first: its dependencies, the two one-shot writers
        assert set(service["depends_on"]) == {"config", "secrets"}
        done = run_python_service(compose["services"]["config"], root)
        assert done.returncode == 0, done.stderr
        done = run_python_service(compose["services"]["secrets"], root, secrets_env(cloud.url),
                                  rewrite=ca_rewrite(compose, cloud.url))
        assert done.returncode == 0, done.stderr
        view = ContainerView(service, root)
        assert view.mount_of(sourced_env_file(service["entrypoint"])).read_only
        assert view.local(ca).read_bytes() == pg.ca_file.read_bytes()
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1",
               **{name: view.localize(str(value)) for name, value in service["environment"].items()}}
        entrypoint = [view.localize(part) for part in service["entrypoint"]]

        def compose_run(*arguments: str) -> subprocess.CompletedProcess[str]:
            """`docker compose run --rm migrate ARGS`: the arguments follow the entrypoint; WORKDIR is /app."""
            return subprocess.run([*entrypoint, *arguments], env=env, cwd=ROOT, capture_output=True, text=True,
                                  timeout=300)

        # the checkpoint lives on the state volume the service names (a stale one there is found and refused)
        checkpoints = view.local(service["environment"]["MIGRATE_CHECKPOINT_DIR"])
        assert checkpoints.is_dir() and checkpoints.stat().st_uid == int(service["user"].split(":")[0])
        stale = checkpoints / "mvp-partner.json"
        stale.write_text(json.dumps({"route": "partner->prod", "position": 1, "moved": 1}))
        refused = compose_run("mvp", "partner", "--s3-uri", uri, "--s3-endpoint", server.endpoint)
        assert refused.returncode == 2 and f"checkpoint {stale} belongs to partner->prod" in refused.stderr
        stale.unlink()
        moved = compose_run("mvp", "partner", "--s3-uri", uri, "--s3-endpoint", server.endpoint)
        assert moved.returncode == 0, moved.stderr
        assert f"source records: {RECORDS:,}" in moved.stdout and "verified: every source record" in moved.stdout
        assert pg.password not in moved.stdout + moved.stderr
        assert not stale.exists(), "a finished run removes its checkpoint"
        with pg.connect(database) as conn:
            assert conn.execute("SELECT count(*) FROM predictions").fetchone()[0] == RECORDS
        # partner -> prod from the same tool service: PostgreSQL (its DSN and password from the host) into
        # ClickHouse (here the engine in-process; on the host CLICKHOUSE_* passed with -e)
        onward = compose_run("partner", "prod", "--clickhouse-dsn", f"chdb://{tmp_path / 'ch'}")
        assert onward.returncode == 0, onward.stderr
        assert "partner->prod" in onward.stdout and "verified: every source record" in onward.stdout
        # without the CA it names, TLS to the database is not verified and the run stops
        view.local(ca).unlink()
        unverified = compose_run("mvp", "partner", "--s3-uri", uri, "--s3-endpoint", server.endpoint)
        assert unverified.returncode == 2 and "cannot connect to PostgreSQL" in unverified.stderr


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
