"""``STORE=postgres``: prediction records in PostgreSQL (the ``partner`` stage's Managed PostgreSQL).

Schema (created and migrated by :func:`ensure_schema`, idempotently, at every start; concurrent
starters serialise on an advisory lock):

- ``predictions``: one row per predicted row (the JSON-lines record of ``service.prediction_log``):
  ``id bigserial``, ``request_id``, ``idx`` (the row in the request; ``index`` in the JSON lines),
  ``time timestamptz``, ``model``, ``model_version``, ``endpoint``, ``latency_ms``,
  ``input_sha256``, ``label``, ``probabilities real[]``, ``chunk_id`` (the prediction-log chunk the
  row came in; NULL for rows imported by :func:`insert_records`), ``UNIQUE (request_id, idx)``;
  indexes ``(model, time)`` and ``(model, model_version, time)`` for per-model time queries;
- ``schema_version``: one row per applied migration (:data:`MIGRATIONS`); a new migration is
  appended there and runs once, in order, on the next start.

Writes: the prediction log hands the store chunks (``STORE_FLUSH_RECORDS`` records or
``STORE_FLUSH_SECONDS`` old). Each chunk is one ``INSERT ... SELECT FROM unnest(<column arrays>)
ON CONFLICT (request_id, idx) DO NOTHING`` in one transaction, pipelined with its ``BEGIN``,
``statement_timeout`` and ``COMMIT`` (one round trip): a chunk replayed after an outage, or after a
commit whose answer was lost, adds no duplicate. A failed write raises :class:`StoreError`; the
prediction log spools the chunk to disk and replays it once PostgreSQL answers again (the same
no-loss guarantee as the other stores).

Connection: ``PG_DSN`` (a libpq URI or ``key=value`` string without a password, e.g.
``postgresql://user@host:6432/db?sslmode=verify-full&sslrootcert=/path/ca.pem``) and
``PG_PASSWORD``, passed to libpq separately and never logged. A pool of ``PG_POOL_MIN`` ..
``PG_POOL_MAX`` connections (psycopg_pool) checks each connection before use, so a restarted
server costs no failed write. Server-side prepared statements are off (``prepare_threshold=None``):
Managed PostgreSQL's connection pooler (Odyssey, port 6432) runs in transaction mode.

The synchronous helpers :func:`ensure_schema`, :func:`insert_records`, :func:`count_records` and
:func:`read_records` take a ``psycopg.Connection`` (data-migration tools import them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from service.stores.base import PredictionStore, RecordChunk, StoreError

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import AsyncConnectionPool

    from service.settings import Settings

log = logging.getLogger("service.stores.postgres")

TABLE = "predictions"
VERSION_TABLE = "schema_version"
#: ``pg_advisory_xact_lock`` key that serialises schema migrations (any constant bigint)
_LOCK_KEY = 0x79632D61697374  # "yc-aist"

#: (version, description, statements), applied in order, each exactly once.
MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        "predictions: one row per prediction, unique (request_id, idx), per-model time indexes",
        (
            f"""
            CREATE TABLE IF NOT EXISTS {TABLE} (
                id            bigserial PRIMARY KEY,
                request_id    text             NOT NULL,
                idx           integer          NOT NULL,
                time          timestamptz      NOT NULL,
                model         text             NOT NULL,
                model_version text             NOT NULL,
                endpoint      text             NOT NULL,
                latency_ms    double precision NOT NULL,
                input_sha256  text             NOT NULL,
                label         bigint           NOT NULL,
                probabilities real[]           NOT NULL,
                chunk_id      text,
                CONSTRAINT {TABLE}_request_row UNIQUE (request_id, idx)
            )
            """,
            f"CREATE INDEX IF NOT EXISTS {TABLE}_model_time ON {TABLE} (model, time)",
            f"CREATE INDEX IF NOT EXISTS {TABLE}_model_version_time ON {TABLE} (model, model_version, time)",
        ),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

_VERSION_DDL = f"""
CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (
    version     integer     PRIMARY KEY,
    description text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""

_INSERT = f"""
INSERT INTO {TABLE} (request_id, idx, time, model, model_version, endpoint, latency_ms, input_sha256,
                     label, probabilities, chunk_id)
SELECT r.request_id, r.idx, r.time, r.model, r.model_version, r.endpoint, r.latency_ms, r.input_sha256,
       r.label, r.probabilities::real[], r.chunk_id
FROM unnest(%(request_id)s::text[], %(idx)s::integer[], %(time)s::timestamptz[], %(model)s::text[],
            %(model_version)s::text[], %(endpoint)s::text[], %(latency_ms)s::float8[],
            %(input_sha256)s::text[], %(label)s::bigint[], %(probabilities)s::text[], %(chunk_id)s::text[])
     WITH ORDINALITY AS r(request_id, idx, time, model, model_version, endpoint, latency_ms, input_sha256,
                          label, probabilities, chunk_id, n)
ORDER BY r.n
ON CONFLICT (request_id, idx) DO NOTHING
"""

_SELECT = f"""
SELECT id, request_id, time, model, model_version, endpoint, latency_ms, idx, input_sha256, label, probabilities
FROM {TABLE} WHERE id > %s ORDER BY id LIMIT %s
"""

#: the record fields, in the order the JSON lines carry them
RECORD_FIELDS = (
    "request_id",
    "time",
    "model",
    "model_version",
    "endpoint",
    "latency_ms",
    "index",
    "input_sha256",
    "label",
    "probabilities",
)


# -- shared by the async store and the sync helpers ---------------------------------------------


def _columns(records: Sequence[Mapping[str, Any]], chunk_id: str | None = None) -> dict[str, list[Any]]:
    """The insert's column arrays from JSON-lines records (``index`` -> ``idx``)."""
    cols: dict[str, list[Any]] = {
        "request_id": [],
        "idx": [],
        "time": [],
        "model": [],
        "model_version": [],
        "endpoint": [],
        "latency_ms": [],
        "input_sha256": [],
        "label": [],
        "probabilities": [],
        "chunk_id": [],
    }
    for n, rec in enumerate(records):
        try:
            cols["request_id"].append(str(rec["request_id"]))
            cols["idx"].append(int(rec["index"]))
            cols["time"].append(str(rec["time"]))
            cols["model"].append(str(rec["model"]))
            cols["model_version"].append(str(rec["model_version"]))
            cols["endpoint"].append(str(rec["endpoint"]))
            cols["latency_ms"].append(float(rec["latency_ms"]))
            cols["input_sha256"].append(str(rec["input_sha256"]))
            cols["label"].append(int(rec["label"]))
            probabilities = rec["probabilities"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"prediction record {n} is not a complete record ({type(exc).__name__}: {exc})") from None
        # a real[] literal: {0.1,0.2,...} (orjson writes the shortest round-tripping form)
        cols["probabilities"].append("{" + orjson.dumps(list(probabilities)).decode()[1:-1] + "}")
        cols["chunk_id"].append(rec.get("chunk_id", chunk_id))
    return cols


def _iso(value: datetime) -> str:
    """The JSON lines' time format: ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (UTC)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _record(row: Sequence[Any]) -> dict[str, Any]:
    _, request_id, time, model, version, endpoint, latency_ms, idx, sha, label, probabilities = row
    return {
        "request_id": request_id,
        "time": _iso(time),
        "model": model,
        "model_version": version,
        "endpoint": endpoint,
        "latency_ms": latency_ms,
        "index": idx,
        "input_sha256": sha,
        "label": label,
        "probabilities": list(probabilities),
    }


def describe_dsn(dsn: str) -> str:
    """``postgresql://user@host:port/dbname`` for logs: never the password, whatever the DSN holds."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return "postgresql (unparsable PG_DSN)"
    user = f"{params['user']}@" if params.get("user") else ""
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = f":{params['port']}" if params.get("port") else ""
    dbname = params.get("dbname") or params.get("user") or ""
    return f"postgresql://{user}{host}{port}/{dbname}"


def _pending_migrations(current: int) -> list[tuple[int, str, tuple[str, ...]]]:
    if current > SCHEMA_VERSION:
        log.warning(
            "the predictions schema is at version %d, newer than this service's %d; using it as it is",
            current,
            SCHEMA_VERSION,
        )
    return [m for m in MIGRATIONS if m[0] > current]


# -- synchronous helpers (psycopg.Connection) -----------------------------------------------------


def ensure_schema(conn: psycopg.Connection[Any]) -> None:
    """Create or migrate the schema (idempotent; safe with several processes starting at once)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(_VERSION_DDL)
        row = conn.execute(f"SELECT coalesce(max(version), 0) FROM {VERSION_TABLE}").fetchone()
        for version, description, statements in _pending_migrations(int(row[0]) if row else 0):
            for statement in statements:
                conn.execute(statement)
            conn.execute(
                f"INSERT INTO {VERSION_TABLE} (version, description) VALUES (%s, %s)", (version, description)
            )
            log.info("predictions schema migrated to version %d: %s", version, description)


def insert_records(conn: psycopg.Connection[Any], records: list[dict[str, Any]]) -> int:
    """Insert JSON-lines records in one statement; returns how many were new (a record whose
    ``(request_id, index)`` is already there is skipped, so a repeated import adds nothing).

    Commits on an idle connection; inside the caller's transaction it uses a savepoint and the
    caller commits (psycopg's ``Connection.transaction`` semantics)."""
    if not records:
        return 0
    with conn.transaction():
        cursor = conn.execute(_INSERT, _columns(records))
        return max(cursor.rowcount, 0)


def count_records(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
    return int(row[0]) if row else 0


def read_records(conn: psycopg.Connection[Any], after_id: int, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Up to ``limit`` records with ``id > after_id``, in id order, as the JSON-lines dicts
    (``time`` an ISO 8601 string), and the last id read (``after_id`` when there are none)."""
    rows = conn.execute(_SELECT, (after_id, limit)).fetchall()
    if not rows:
        return [], after_id
    return [_record(row) for row in rows], int(rows[-1][0])


# -- the store ------------------------------------------------------------------------------------


class PostgresStore(PredictionStore):
    name: ClassVar[str] = "postgres"

    def __init__(
        self,
        dsn: str,
        password: str | None = None,
        pool_min: int = 1,
        pool_max: int = 4,
        connect_timeout: float = 5.0,
        statement_timeout_ms: int = 30_000,
        application_name: str = "yc-aistack-inference",
    ) -> None:
        self._dsn = dsn
        self._password = password
        self._pool_min = min(pool_min, pool_max)
        self._pool_max = pool_max
        self._connect_timeout = connect_timeout
        self._statement_timeout_ms = statement_timeout_ms
        self._application_name = application_name
        self._pool: AsyncConnectionPool[Any] | None = None
        self._schema_ready = False
        self._where = describe_dsn(dsn)

    @classmethod
    def from_settings(cls, settings: Settings) -> PostgresStore:
        assert settings.pg_dsn is not None  # the settings refuse STORE=postgres without PG_DSN
        return cls(
            settings.pg_dsn,
            settings.pg_password_value,
            pool_min=settings.pg_pool_min,
            pool_max=settings.pg_pool_max,
            connect_timeout=settings.pg_connect_timeout,
            statement_timeout_ms=settings.pg_statement_timeout_ms,
            application_name=settings.service_name,
        )

    def _connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            # libpq takes whole seconds (and treats less than 2 as 2)
            "connect_timeout": max(2, round(self._connect_timeout)),
            "application_name": self._application_name,
            "prepare_threshold": None,
        }
        if self._password is not None:
            kwargs["password"] = self._password
        return kwargs

    async def open(self) -> None:
        """Start the pool (connections are made in the background) and create/migrate the schema;
        raises :class:`StoreError` while the database cannot be reached (the prediction log then
        starts with the store down and calls this again)."""
        from psycopg_pool import AsyncConnectionPool

        if self._pool is None:
            self._pool = AsyncConnectionPool(
                self._dsn,
                kwargs=self._connect_kwargs(),
                min_size=self._pool_min,
                max_size=self._pool_max,
                timeout=self._connect_timeout,
                check=AsyncConnectionPool.check_connection,
                name="predictions",
                open=False,
            )
            await self._pool.open(wait=False)
        if not self._schema_ready:
            try:
                async with self._pool.connection(timeout=self._connect_timeout) as conn:
                    await self._ensure_schema(conn)
            except Exception as exc:
                reason = await self._why(exc)
                raise StoreError(f"{self._where}: cannot prepare the schema: {reason}") from exc
            self._schema_ready = True
            log.info("prediction store %s ready (schema version %d)", self._where, SCHEMA_VERSION)

    @staticmethod
    async def _ensure_schema(conn: psycopg.AsyncConnection[Any]) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            await conn.execute(_VERSION_DDL)
            cursor = await conn.execute(f"SELECT coalesce(max(version), 0) FROM {VERSION_TABLE}")
            row = await cursor.fetchone()
            for version, description, statements in _pending_migrations(int(row[0]) if row else 0):
                for statement in statements:
                    await conn.execute(statement)
                await conn.execute(
                    f"INSERT INTO {VERSION_TABLE} (version, description) VALUES (%s, %s)", (version, description)
                )
                log.info("predictions schema migrated to version %d: %s", version, description)

    async def _why(self, exc: BaseException) -> str:
        """The reason behind a pool timeout (the pool only says it waited): one direct connection
        attempt, whose error names the cause (refused, TLS, authentication); never the password."""
        from psycopg_pool import PoolTimeout

        if not isinstance(exc, PoolTimeout):
            return self._message(exc)
        import psycopg

        try:
            conn = await psycopg.AsyncConnection.connect(self._dsn, **self._connect_kwargs())
        except Exception as direct:
            return f"{self._message(exc)}; connecting: {self._message(direct)}"
        await conn.close()
        return self._message(exc)

    @staticmethod
    def _message(exc: BaseException) -> str:
        text = str(exc).strip().replace("\n", " ")
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

    async def write(self, chunk: RecordChunk) -> None:
        await self.insert(chunk.records(), chunk.id)

    async def insert(self, records: Sequence[Mapping[str, Any]], chunk_id: str | None = None) -> int:
        """Insert records in one transaction (one round trip); returns how many were new."""
        if not records:
            return 0
        if self._pool is None or not self._schema_ready:
            await self.open()
        assert self._pool is not None
        try:
            columns = _columns(records, chunk_id)
        except ValueError as exc:
            raise StoreError(f"{self._where}: {exc}") from None
        try:
            async with self._pool.connection(timeout=self._connect_timeout) as conn:
                async with conn.pipeline(), conn.transaction():
                    if self._statement_timeout_ms:
                        await conn.execute(
                            "SELECT set_config('statement_timeout', %s, true)", (str(self._statement_timeout_ms),)
                        )
                    cursor = await conn.execute(_INSERT, columns)
                return max(int(cursor.rowcount), 0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # psycopg.Error, PoolTimeout, OSError, ...
            raise StoreError(f"{self._where}: insert of {len(records)} records failed: {self._message(exc)}") from exc

    async def count(self) -> int:
        if self._pool is None:
            await self.open()
        assert self._pool is not None
        async with self._pool.connection(timeout=self._connect_timeout) as conn:
            cursor = await conn.execute(f"SELECT count(*) FROM {TABLE}")
            row = await cursor.fetchone()
            return int(row[0]) if row else 0

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        self._schema_ready = False
        if pool is not None:
            with contextlib.suppress(Exception):
                await pool.close(timeout=5.0)

    def describe(self) -> str:
        return self._where

