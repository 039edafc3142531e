"""Move the prediction records when the application moves on to the next stage.

mvp -> partner: the JSON-lines objects the service wrote to Object Storage go into PostgreSQL.
partner -> prod: PostgreSQL rows go into ClickHouse.

Every run is idempotent (a record is keyed by request id and row index; ClickHouse inserts carry
a deduplication token per batch), resumable (a checkpoint file records what is done after every
batch), and ends by verifying counts. ``--dry-run`` reads the source and reports what would move.
Connection settings come from flags or the same environment variables the service uses;
passwords and keys only from the environment, never echoed.

It lives in the service package so that it ships in the service image, which runs inside each
stage's network, where the managed databases accept connections: ``python -m service.migrate
FROM TO ...`` (on the partner host, the compose tool service ``migrate``). ``stagectl migrate-data``
runs the same code from an engineer's machine.

Environment: ``STORE_S3_URI``, ``S3_ENDPOINT_URL``, ``AWS_REGION`` and the standard AWS key
variables (source bucket); ``MIGRATE_S3_ACCESS_KEY_ID`` / ``MIGRATE_S3_SECRET_ACCESS_KEY``, when the
source bucket needs another key than ``AWS_*`` (the mvp stage's own, read on the partner host);
``PG_DSN`` and ``PG_PASSWORD``; ``CLICKHOUSE_HOST``, ``_PORT``, ``_DATABASE``, ``_USER``,
``_PASSWORD``, ``_SECURE``, ``_CA_FILE``; ``MIGRATE_CHECKPOINT_DIR`` (default ``var/migrate``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson

ROUTES = {("mvp", "partner"): ("s3", "postgres"), ("partner", "prod"): ("postgres", "clickhouse")}


class MigrationError(Exception):
    pass


@dataclass
class Batch:
    records: list[dict[str, Any]]
    #: what the checkpoint records once the batch is written (an object key, a row id)
    position: Any
    #: stable identity of the batch (the same records always form the same batch)
    token: str


class Source(Protocol):
    def count(self) -> int: ...

    def batches(self, after: Any, size: int) -> Iterator[Batch]: ...

    def describe(self) -> str: ...


class Sink(Protocol):
    def count(self) -> int: ...

    def write(self, batch: Batch) -> None: ...

    def describe(self) -> str: ...


# --- sources --------------------------------------------------------------------------------------


class S3Source:
    """JSON-lines objects under ``s3://bucket/prefix/``, in key order (the service names them by time)."""

    def __init__(self, uri: str, endpoint: str | None, region: str,
                 credentials: tuple[str, str] | None = None) -> None:
        import boto3  # type: ignore[import-untyped]

        parts = urlsplit(uri)
        if parts.scheme != "s3" or not parts.netloc:
            raise MigrationError(f"source {uri!r} is not an s3://bucket/prefix/ URI")
        self.bucket, self.prefix = parts.netloc, parts.path.lstrip("/")
        self.uri = uri
        keys = {"aws_access_key_id": credentials[0], "aws_secret_access_key": credentials[1]} if credentials else {}
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name=region, **keys)
        self._keys: list[str] | None = None

    def keys(self) -> list[str]:
        if self._keys is None:
            keys: list[str] = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
                keys += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith((".jsonl", ".json"))]
            self._keys = sorted(keys)
        return self._keys

    def _body(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def _read(self, key: str) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self._body(key).splitlines() if line.strip()]

    def count(self) -> int:
        return sum(sum(1 for line in self._body(key).splitlines() if line.strip()) for key in self.keys())

    def batches(self, after: Any, size: int) -> Iterator[Batch]:
        """Whole objects per batch (at least one), so the checkpoint is the last key written."""
        pending: list[dict[str, Any]] = []
        first = None
        for key in self.keys():
            if after is not None and key <= after:
                continue
            first = first or key
            pending += self._read(key)
            if len(pending) >= size:
                yield Batch(pending, key, f"s3:{first}..{key}")
                pending, first = [], None
        if pending:
            yield Batch(pending, self.keys()[-1], f"s3:{first}..{self.keys()[-1]}")

    def describe(self) -> str:
        return self.uri


class PostgresSource:
    def __init__(self, dsn: str, password: str | None) -> None:
        self.conn = _pg_connect(dsn, password)
        self.dsn = dsn

    def count(self) -> int:
        from service.stores.postgres import count_records

        return int(count_records(self.conn))

    def batches(self, after: Any, size: int) -> Iterator[Batch]:
        from service.stores.postgres import read_records

        last = int(after or 0)
        while True:
            records, new_last = read_records(self.conn, last, size)
            if not records:
                return
            yield Batch(records, new_last, f"pg:{last + 1}-{new_last}")
            last = new_last

    def describe(self) -> str:
        return _redact_dsn(self.dsn)


# --- sinks ----------------------------------------------------------------------------------------


class PostgresSink:
    def __init__(self, dsn: str, password: str | None) -> None:
        from service.stores.postgres import ensure_schema

        self.conn = _pg_connect(dsn, password)
        self.dsn = dsn
        ensure_schema(self.conn)

    def count(self) -> int:
        from service.stores.postgres import count_records

        return int(count_records(self.conn))

    def write(self, batch: Batch) -> None:
        from service.stores.postgres import insert_records

        insert_records(self.conn, batch.records)
        self.conn.commit()

    def describe(self) -> str:
        return _redact_dsn(self.dsn)


class ClickHouseSink:
    def __init__(self, client: Any, where: str) -> None:
        from service.stores.clickhouse import ensure_schema

        self.client = client
        self.where = where
        ensure_schema(client)

    def count(self) -> int:
        from service.stores.clickhouse import count_records

        return int(count_records(self.client))

    def write(self, batch: Batch) -> None:
        from service.stores.clickhouse import insert_records

        insert_records(self.client, batch.records, batch.token)

    def describe(self) -> str:
        return self.where


def _pg_connect(dsn: str, password: str | None) -> Any:
    import psycopg

    try:
        return psycopg.connect(dsn, password=password) if password else psycopg.connect(dsn)
    except psycopg.OperationalError as exc:
        raise MigrationError(f"cannot connect to PostgreSQL at {_redact_dsn(dsn)}: {exc}") from None


def _redact_dsn(dsn: str) -> str:
    """A DSN fit for printing: any password in it replaced."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        if parts.password:
            return dsn.replace(f":{parts.password}@", ":***@")
        return dsn
    return " ".join("password=***" if item.startswith("password=") else item for item in dsn.split())


def clickhouse_client(dsn: str | None, env: Mapping[str, str]) -> tuple[Any, str]:
    """A clickhouse-connect client from ``--clickhouse-dsn`` or the service's CLICKHOUSE_* variables."""
    import clickhouse_connect

    if dsn:
        return clickhouse_connect.get_client(dsn=dsn), _redact_dsn(dsn)
    host = env.get("CLICKHOUSE_HOST")
    if not host:
        raise MigrationError("no ClickHouse target: pass --clickhouse-dsn or set CLICKHOUSE_HOST (and _PORT, "
                             "_DATABASE, _USER, _PASSWORD, _SECURE as the service reads them)")
    secure = env.get("CLICKHOUSE_SECURE", "true").lower() in ("1", "true", "yes")
    client = clickhouse_connect.get_client(
        host=host, port=int(env.get("CLICKHOUSE_PORT", "8443" if secure else "8123")),
        username=env.get("CLICKHOUSE_USER", "default"), password=env.get("CLICKHOUSE_PASSWORD", ""),
        database=env.get("CLICKHOUSE_DATABASE", "default"), secure=secure,
        ca_cert=env.get("CLICKHOUSE_CA_FILE") or None)
    return client, f"clickhouse://{host}"


# --- the run -----------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    path: Path
    route: str
    position: Any = None
    moved: int = 0

    @classmethod
    def load(cls, path: Path, route: str) -> Checkpoint:
        if path.is_file():
            data = json.loads(path.read_text())
            if data.get("route") != route:
                raise MigrationError(f"checkpoint {path} belongs to {data.get('route')}, not {route}: "
                                     "remove it or pass another --checkpoint")
            return cls(path, route, data.get("position"), int(data.get("moved", 0)))
        return cls(path, route)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"route": self.route, "position": self.position, "moved": self.moved}))
        tmp.replace(self.path)  # atomic: an interruption never leaves a torn checkpoint


@dataclass
class Report:
    route: str
    source: str
    sink: str
    source_records: int
    sink_before: int
    sink_after: int
    moved_this_run: int
    resumed_from: Any
    dry_run: bool
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return self.dry_run or self.sink_after >= self.source_records

    def render(self) -> str:
        rate = self.moved_this_run / self.seconds if self.seconds > 0 else 0.0
        lines = [f"{self.route}: {self.source} -> {self.sink}",
                 f"  source records: {self.source_records:,}",
                 f"  target records: {self.sink_before:,} before, {self.sink_after:,} after"]
        if self.dry_run:
            lines.append(f"  dry run: would move {self.source_records:,} records (nothing written)")
        else:
            lines.append(f"  moved this run: {self.moved_this_run:,} in {self.seconds:.1f} s ({rate:,.0f} records/s)"
                         + (f", resumed after {self.resumed_from}" if self.resumed_from is not None else ""))
            lines.append("  verified: every source record is in the target" if self.verified else
                         f"  NOT verified: the target holds {self.sink_after:,} < {self.source_records:,}")
        return "\n".join(lines + [f"  {n}" for n in self.notes])


def run(source: Source, sink: Sink | None, checkpoint: Checkpoint, *, batch_size: int = 5000,
        dry_run: bool = False, progress: Callable[[str], None] | None = None,
        stop_after_batches: int | None = None) -> Report:
    """Move everything after the checkpoint; ``stop_after_batches`` simulates an interruption (tests)."""
    started = time.monotonic()
    total = source.count()
    before = sink.count() if sink is not None else 0
    resumed = checkpoint.position
    moved = 0
    if not dry_run:
        assert sink is not None
        last_report = time.monotonic()
        for index, batch in enumerate(source.batches(checkpoint.position, batch_size)):
            if stop_after_batches is not None and index >= stop_after_batches:
                raise KeyboardInterrupt(f"stopped after {index} batches")
            sink.write(batch)
            checkpoint.position = batch.position
            checkpoint.moved += len(batch.records)
            checkpoint.save()
            moved += len(batch.records)
            if progress and (time.monotonic() - last_report > 2.0):
                elapsed = time.monotonic() - started
                progress(f"moved {checkpoint.moved:,}/{total:,} records ({moved / elapsed:,.0f}/s)")
                last_report = time.monotonic()
    after = sink.count() if sink is not None else before
    report = Report(checkpoint.route, source.describe(), sink.describe() if sink else "(dry run)", total, before,
                    after, moved, resumed, dry_run, time.monotonic() - started)
    if not dry_run and report.verified:
        checkpoint.path.unlink(missing_ok=True)  # done: a later run starts over (and writes nothing new)
    return report


def source_credentials(env: Mapping[str, str]) -> tuple[str, str] | None:
    """The source bucket's own key, when it is not the one in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY."""
    key_id, secret = env.get("MIGRATE_S3_ACCESS_KEY_ID"), env.get("MIGRATE_S3_SECRET_ACCESS_KEY")
    if bool(key_id) != bool(secret):
        raise MigrationError("set both MIGRATE_S3_ACCESS_KEY_ID and MIGRATE_S3_SECRET_ACCESS_KEY (the key that "
                             "reads the source bucket), or neither to use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
    return (key_id, secret) if key_id and secret else None


def build(source_stage: str, target_stage: str, args: Any, env: Mapping[str, str] | None = None,
          dry_run: bool = False) -> tuple[Source, Sink | None]:
    env = os.environ if env is None else env
    route = ROUTES.get((source_stage, target_stage))
    if route is None:
        raise MigrationError(f"no migration {source_stage} -> {target_stage}: data moves mvp -> partner "
                             "(Object Storage -> PostgreSQL) and partner -> prod (PostgreSQL -> ClickHouse)")
    source: Source
    sink: Sink | None
    if route[0] == "s3":
        uri = args.s3_uri or env.get("STORE_S3_URI")
        if not uri:
            raise MigrationError("no source: pass --s3-uri s3://bucket/prefix/ or set STORE_S3_URI")
        source = S3Source(uri, args.s3_endpoint or env.get("S3_ENDPOINT_URL") or "https://storage.yandexcloud.net",
                          env.get("AWS_REGION", "ru-central1"), source_credentials(env))
    else:
        dsn = args.pg_dsn or env.get("PG_DSN")
        if not dsn:
            raise MigrationError("no PostgreSQL: pass --pg-dsn or set PG_DSN (password in PG_PASSWORD)")
        source = PostgresSource(dsn, env.get("PG_PASSWORD"))
    if dry_run:
        return source, None
    if route[1] == "postgres":
        dsn = args.pg_dsn or env.get("PG_DSN")
        if not dsn:
            raise MigrationError("no PostgreSQL target: pass --pg-dsn or set PG_DSN (password in PG_PASSWORD)")
        sink = PostgresSink(dsn, env.get("PG_PASSWORD"))
    else:
        client, where = clickhouse_client(args.clickhouse_dsn, env)
        sink = ClickHouseSink(client, where)
    return source, sink


def default_checkpoint(source_stage: str, target_stage: str, env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("MIGRATE_CHECKPOINT_DIR") or "var/migrate") / f"{source_stage}-{target_stage}.json"


def add_arguments(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("source", metavar="FROM", choices=("mvp", "partner"))
    cmd.add_argument("target", metavar="TO", choices=("partner", "prod"))
    cmd.add_argument("--s3-uri", help="mvp records: s3://bucket/prefix/ (default: STORE_S3_URI)")
    cmd.add_argument("--s3-endpoint", help="S3 endpoint (default: S3_ENDPOINT_URL or Yandex Object Storage)")
    cmd.add_argument("--pg-dsn", help="PostgreSQL DSN without password (default: PG_DSN; password: PG_PASSWORD)")
    cmd.add_argument("--clickhouse-dsn", help="ClickHouse DSN (default: the CLICKHOUSE_* variables)")
    cmd.add_argument("--batch", type=int, default=5000, help="records per batch (default 5000)")
    cmd.add_argument("--checkpoint", help="checkpoint file (default $MIGRATE_CHECKPOINT_DIR/FROM-TO.json, "
                                          "MIGRATE_CHECKPOINT_DIR defaulting to var/migrate)")
    cmd.add_argument("--dry-run", action="store_true", help="count what would move; write nothing")


def execute(args: argparse.Namespace, prog: str) -> int:
    """Run the migration ``args`` describe; the exit status (0 verified, 2 refused, 5 not verified, 130 stopped)."""
    route = f"{args.source}->{args.target}"
    try:
        source, sink = build(args.source, args.target, args, dry_run=args.dry_run)
        path = Path(args.checkpoint) if args.checkpoint else default_checkpoint(args.source, args.target)
        checkpoint = Checkpoint.load(path, route)
        report = run(source, sink, checkpoint, batch_size=args.batch, dry_run=args.dry_run,
                     progress=lambda line: print(line, file=sys.stderr, flush=True))
    except MigrationError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print(report.render())
    return 0 if report.verified else 5


PROG = "python -m service.migrate"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Move prediction records to the next stage's store.")
    add_arguments(parser)
    return execute(parser.parse_args(argv), PROG)


if __name__ == "__main__":
    sys.exit(main())
