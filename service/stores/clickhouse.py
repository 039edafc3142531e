"""``STORE=clickhouse``: prediction records in ClickHouse (the ``prod`` stage's Managed ClickHouse).

Schema (created by :func:`ensure_schema`; the same DDL runs in production and in the tests, which
use the real ClickHouse engine in-process through ``clickhouse-connect``'s ``chdb://`` client):

- ``predictions``: one row per predicted row (the JSON-lines record of ``service.prediction_log``),
  ``MergeTree`` partitioned by month (``toYYYYMM(time)``), ordered by ``(model, time, request_id,
  idx)`` for per-model time-range queries, rows expiring ``CLICKHOUSE_TTL_DAYS`` after ``time``;
- ``predictions_per_minute``: an ``AggregatingMergeTree`` of per-minute, per-model aggregates
  (requests, predictions, errors, latency quantile states), filled by the materialized view
  ``predictions_per_minute_mv`` on every insert; the dashboard queries (``service.analytics``)
  read it instead of scanning raw rows.

Writes: the prediction log hands the store chunks (``STORE_FLUSH_RECORDS`` records or
``STORE_FLUSH_SECONDS`` old), so every insert is already a batch; it runs on the store's own
thread, never on the event loop. Each chunk is inserted with ``insert_deduplication_token`` = its
chunk id, and the table keeps the tokens of its last ``non_replicated_deduplication_window``
inserts: a chunk replayed after an outage (or after a write whose answer was lost) is dropped by
ClickHouse instead of duplicated, and ``deduplicate_blocks_in_dependent_materialized_views``
keeps the per-minute aggregates exact too. A failed write raises :class:`StoreError`; the
prediction log then spools the chunk to disk and replays it once ClickHouse answers again (the
same no-loss guarantee as the other stores).

Connection: ``CLICKHOUSE_HOST``/``_PORT`` (8443, HTTPS)/``_DATABASE``/``_USER``/``_PASSWORD``, TLS
with ``CLICKHOUSE_SECURE=true`` (the default) verified against ``CLICKHOUSE_CA_FILE`` if set (Managed
ClickHouse's certificate is issued by Yandex's own root CA) or the system store. ``CLICKHOUSE_DSN``
replaces all of them with a clickhouse-connect DSN, e.g. ``chdb:///var/lib/predictions`` to run the
service with the ClickHouse engine in-process.

The sync helpers :func:`ensure_schema`, :func:`insert_records` and :func:`count_records` take a
clickhouse-connect client; ``stagectl migrate-data`` uses them too.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from service.stores.base import PredictionStore, RecordChunk, StoreError
from service.threads import DaemonExecutor

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger("service.stores.clickhouse")

TABLE = "predictions"
MINUTE_TABLE = "predictions_per_minute"
MINUTE_VIEW = "predictions_per_minute_mv"
DEFAULT_TTL_DAYS = 365
#: How many recent inserts (chunks) ClickHouse remembers the deduplication token of.
DEDUP_WINDOW = 10_000
#: The latency quantiles the per-minute aggregates keep (the dashboard's p50, p90, p99).
QUANTILES = (0.5, 0.9, 0.99)
_Q = ", ".join(str(q) for q in QUANTILES)
_TTL_DAYS = re.compile(r"\bTTL\b.*?(?:toIntervalDay\((\d+)\)|INTERVAL\s+(\d+)\s+DAY)", re.IGNORECASE)

COLUMNS = (
    "time",
    "model",
    "model_version",
    "endpoint",
    "request_id",
    "idx",
    "latency_ms",
    "input_sha256",
    "label",
    "probabilities",
    "error",
)

#: Settings of every insert: idempotent per token, the materialized view included.
INSERT_SETTINGS: dict[str, Any] = {
    "insert_deduplicate": 1,
    "deduplicate_blocks_in_dependent_materialized_views": 1,
}


def table_ddl(ttl_days: int = DEFAULT_TTL_DAYS) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {TABLE}
(
    time DateTime64(6, 'UTC') CODEC(Delta, ZSTD),
    model LowCardinality(String),
    model_version LowCardinality(String),
    endpoint LowCardinality(String),
    request_id String,
    idx UInt32,
    latency_ms Float32,
    input_sha256 String CODEC(ZSTD),
    label Int64,
    probabilities Array(Float32),
    error String DEFAULT '',
    inserted_at DateTime('UTC') DEFAULT now()
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (model, time, request_id, idx)
TTL toDateTime(time) + INTERVAL {int(ttl_days)} DAY
SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}
""".strip()


def minute_table_ddl(ttl_days: int = DEFAULT_TTL_DAYS) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {MINUTE_TABLE}
(
    minute DateTime('UTC'),
    model LowCardinality(String),
    model_version LowCardinality(String),
    endpoint LowCardinality(String),
    requests SimpleAggregateFunction(sum, UInt64),
    predictions SimpleAggregateFunction(sum, UInt64),
    errors SimpleAggregateFunction(sum, UInt64),
    latency_ms AggregateFunction(quantilesIf({_Q}), Float32, UInt8)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (model, minute, model_version, endpoint)
TTL minute + INTERVAL {int(ttl_days)} DAY
SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}
""".strip()


# A request's latency is repeated on each of its rows: the quantiles count it once (row 0).
MINUTE_VIEW_DDL = f"""
CREATE MATERIALIZED VIEW IF NOT EXISTS {MINUTE_VIEW} TO {MINUTE_TABLE} AS
SELECT
    toStartOfMinute(time) AS minute,
    model,
    model_version,
    endpoint,
    toUInt64(countIf(idx = 0)) AS requests,
    toUInt64(count()) AS predictions,
    toUInt64(countIf(error != '')) AS errors,
    quantilesIfState({_Q})(latency_ms, toUInt8(idx = 0)) AS latency_ms
FROM {TABLE}
GROUP BY minute, model, model_version, endpoint
""".strip()


def _current_ttl_days(client: Any, table: str) -> int | None:
    """The TTL in days of ``table`` as ClickHouse reports it (``toIntervalDay(N)``), None if unknown."""
    result = client.query(
        "SELECT engine_full FROM system.tables WHERE database = currentDatabase() AND name = {t:String}",
        parameters={"t": table},
    )
    if not result.result_rows:
        return None
    match = _TTL_DAYS.search(str(result.result_rows[0][0]))
    if match is None:
        return None
    return int(match.group(1) or match.group(2))


def ensure_schema(client: Any, *, ttl_days: int | None = None) -> None:
    """Create the table, the per-minute aggregate table and its materialized view if missing (in the
    client's current database).

    ``ttl_days`` (``CLICKHOUSE_TTL_DAYS``) is the retention of new tables; when given and an
    existing table has another TTL, the TTL is changed (``ALTER TABLE ... MODIFY TTL``). Without it
    an existing TTL is left alone (what a migration tool wants) and new tables get
    :data:`DEFAULT_TTL_DAYS`.
    """
    days = DEFAULT_TTL_DAYS if ttl_days is None else int(ttl_days)
    if days < 1:
        raise ValueError("the TTL must be at least 1 day")
    client.command(table_ddl(days))
    client.command(minute_table_ddl(days))
    client.command(MINUTE_VIEW_DDL)
    if ttl_days is None:
        return
    if _current_ttl_days(client, TABLE) != days:
        client.command(f"ALTER TABLE {TABLE} MODIFY TTL toDateTime(time) + INTERVAL {days} DAY")
    if _current_ttl_days(client, MINUTE_TABLE) != days:
        client.command(f"ALTER TABLE {MINUTE_TABLE} MODIFY TTL minute + INTERVAL {days} DAY")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _parse_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(float(value), tz=UTC)
    if isinstance(value, str) and value:
        parsed = datetime.fromisoformat(value)
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    return _EPOCH


def records_to_columns(records: Iterable[Mapping[str, Any]]) -> list[list[Any]]:
    """The service's JSON-lines records as insert columns (the order of :data:`COLUMNS`)."""
    columns: list[list[Any]] = [[] for _ in COLUMNS]
    (time_c, model_c, version_c, endpoint_c, rid_c, idx_c, latency_c, sha_c, label_c, probs_c, error_c) = columns
    for record in records:
        time_c.append(_parse_time(record.get("time")))
        model_c.append(str(record.get("model") or ""))
        version_c.append(str(record.get("model_version") or ""))
        endpoint_c.append(str(record.get("endpoint") or ""))
        rid_c.append(str(record.get("request_id") or ""))
        idx_c.append(int(record.get("index", record.get("idx", 0)) or 0))
        latency_c.append(float(record.get("latency_ms") or 0.0))
        sha_c.append(str(record.get("input_sha256") or ""))
        label = record.get("label")
        label_c.append(int(label) if label is not None else -1)
        probs_c.append([float(p) for p in (record.get("probabilities") or [])])
        error = record.get("error")
        error_c.append("" if error in (None, False) else str(error))
    return columns


def insert_records(client: Any, records: list[dict[str, Any]], token: str) -> None:
    """Insert ``records`` as one batch; inserting the same token again changes nothing (within the
    last :data:`DEDUP_WINDOW` inserts)."""
    if not records:
        return
    if not token:
        raise ValueError("insert_records needs a non-empty deduplication token")
    client.insert(
        TABLE,
        records_to_columns(records),
        column_names=list(COLUMNS),
        column_oriented=True,
        settings={**INSERT_SETTINGS, "insert_deduplication_token": token},
    )


def count_records(client: Any) -> int:
    """Rows in the predictions table."""
    return int(client.command(f"SELECT count() FROM {TABLE}"))


# --- connection -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClickhouseParams:
    """How to reach ClickHouse (from :class:`service.settings.Settings`); the password is not part of
    ``repr``."""

    host: str | None = None
    port: int = 8443
    database: str = "default"
    user: str = "default"
    secure: bool = True
    ca_file: Path | None = None
    dsn: str | None = None
    ttl_days: int = DEFAULT_TTL_DAYS
    connect_timeout: float = 5.0
    send_receive_timeout: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ClickhouseParams:
        return cls(
            host=settings.clickhouse_host,
            port=settings.clickhouse_port,
            database=settings.clickhouse_database,
            user=settings.clickhouse_user,
            secure=settings.clickhouse_secure,
            ca_file=settings.clickhouse_ca_file,
            dsn=settings.clickhouse_dsn,
            ttl_days=settings.clickhouse_ttl_days,
            connect_timeout=settings.clickhouse_connect_timeout,
            send_receive_timeout=settings.clickhouse_send_receive_timeout,
        )

    def describe(self) -> str:
        if self.dsn:
            scheme, _, rest = self.dsn.partition("://")
            return f"{scheme}://{rest.rpartition('@')[2]}"  # never the credentials of a DSN
        scheme = "https" if self.secure else "http"
        return f"clickhouse {scheme}://{self.user}@{self.host}:{self.port}/{self.database}"


def connect(params: ClickhouseParams, password: str | None = None) -> Any:
    """A clickhouse-connect client (HTTP(S), or whatever ``params.dsn`` names)."""
    import clickhouse_connect

    if params.dsn:
        return clickhouse_connect.get_client(dsn=params.dsn)
    if not params.host:
        raise StoreError("no ClickHouse host: set CLICKHOUSE_HOST (or CLICKHOUSE_DSN)")
    kwargs: dict[str, Any] = {}
    if params.secure and params.ca_file is not None:
        kwargs["ca_cert"] = str(params.ca_file)
    return clickhouse_connect.get_client(
        host=params.host,
        port=params.port,
        username=params.user,
        password=password or "",
        database=params.database,
        secure=params.secure,
        verify=True,
        connect_timeout=params.connect_timeout,
        send_receive_timeout=params.send_receive_timeout,
        # one client shared by a worker thread and the event loop: no server-side session to lock
        autogenerate_session_id=False,
        **kwargs,
    )


class ClickhouseStore(PredictionStore):
    name: ClassVar[str] = "clickhouse"

    def __init__(self, params: ClickhouseParams, password: str | None = None) -> None:
        self.params = params
        self._password = password
        self._client: Any = None
        # one daemon thread (the client is not shared between threads); a call stuck on a server
        # that never answers does not hold the process at exit
        self._pool = DaemonExecutor(1, "clickhouse")

    @classmethod
    def from_settings(cls, settings: Settings) -> ClickhouseStore:
        return cls(ClickhouseParams.from_settings(settings), settings.clickhouse_password_value)

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await self._pool.run(fn, *args)

    def _connected(self) -> Any:
        if self._client is None:
            client = connect(self.params, self._password)
            try:
                ensure_schema(client, ttl_days=self.params.ttl_days)
            except BaseException:
                with contextlib.suppress(Exception):
                    client.close()
                raise
            self._client = client
        return self._client

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def _open(self) -> None:
        try:
            self._connected()
        except StoreError:
            raise
        except Exception as exc:
            self._drop_client()
            raise StoreError(f"{self.describe()}: {type(exc).__name__}: {exc}") from exc

    def _insert(self, chunk: RecordChunk) -> None:
        try:
            insert_records(self._connected(), chunk.records(), chunk.id)
        except Exception as exc:
            # a new connection (and a schema check) for the next attempt
            self._drop_client()
            raise StoreError(
                f"{self.describe()}: insert of chunk {chunk.id} failed: {type(exc).__name__}: {exc}"
            ) from exc

    async def open(self) -> None:
        await self._run(self._open)

    async def write(self, chunk: RecordChunk) -> None:
        if chunk.count:
            await self._run(self._insert, chunk)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._run(self._drop_client)

    def describe(self) -> str:
        return self.params.describe()
