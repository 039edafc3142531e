"""Typed settings of the inference service, read from environment variables.

Every name below is the upper-cased field name (``MODEL_URI`` for ``model_uri``). The defaults run
on a laptop with nothing else installed: the demo model from ``models/digits`` (what
``stagectl model build`` writes), in-process ONNX Runtime, the file-based ``local`` prediction store.
The Pulumi stacks set the same names in the Serverless Container / VM / Deployment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from service.s3 import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_REGION,
    DEFAULT_S3_ENDPOINT,
    S3Params,
)

DEFAULT_MODEL_URI = "models/digits/model.onnx"


class Settings(BaseModel):
    """Service configuration; see ``service/README.md`` for the meaning of each variable.

    Built from the environment by :meth:`from_env` (plain pydantic rather than pydantic-settings:
    the service's cold start is measured in tens of milliseconds).
    """

    model_config = ConfigDict(extra="forbid", validate_default=True, protected_namespaces=(), frozen=True)

    # Serving
    host: str = Field(default="0.0.0.0", description="listening address")
    port: int = Field(default=8080, ge=1, le=65535, description="listening port (Serverless Containers set it)")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        default="info",
        description="`debug`, `info`, `warning`, `error`, `critical`",
    )
    service_name: str = Field(default="yc-aistack-inference", description="`service.name` in logs, `/v2` server name")

    # Model
    model_uri: str = Field(
        default=DEFAULT_MODEL_URI,
        description="the model: a path, `file:///abs/path`, or `s3://bucket/key`",
    )
    model_card_uri: str | None = Field(
        default=None,
        description="the card, same forms; unset: `card.json` beside the model",
    )
    model_sha256: str | None = Field(
        default=None,
        description="pins the model: verified instead of the card's `sha256` (and the card must match it)",
    )
    model_retry_seconds: float = Field(
        default=30.0,
        ge=0,
        description="retry a failed load after this long, doubling up to 5 min; `0`: never",
    )

    # Inference backend
    backend: Literal["onnx", "triton", "tfserving"] = Field(
        default="onnx",
        description="the inference backend: `onnx` (in-process ONNX Runtime), `triton`, `tfserving`",
    )
    ort_threads: int = Field(
        default=1,
        ge=1,
        le=256,
        description="ONNX Runtime intra-op threads (1 keeps p99 low on small machines)",
    )
    batching: bool = Field(
        default=True,
        description="`on`/`off` (or `true`/`false`): merge concurrent requests into one backend run",
    )
    batch_max_size: int = Field(
        default=128,
        ge=1,
        le=65536,
        description="most rows in one merged run (a larger single request runs alone)",
    )
    infer_offload_ms: float = Field(
        default=0.5,
        ge=0,
        description="runs slower than this (moving average) go to the inference thread; faster ones run inline",
    )

    # Triton Inference Server (BACKEND=triton)
    triton_url: str = Field(
        default="localhost:8001",
        description=(
            "`BACKEND=triton`: Triton's `host:port`, no scheme (gRPC 8001, HTTP 8000; the GPU host: `triton:8001`)"
        ),
    )
    triton_protocol: Literal["grpc", "http"] = Field(
        default="grpc",
        description="`grpc` or `http` (KServe v2 either way)",
    )
    triton_model: str | None = Field(
        default=None,
        description=(
            "the model name in Triton's repository; unset: the card's `name` (the GPU host sets the card's name)"
        ),
    )
    triton_model_version: str | None = Field(
        default=None,
        description="pin a version of the model in the repository (e.g. `1`); unset: Triton's latest",
    )
    triton_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description="per call (gRPC deadline; HTTP session timeout)",
    )
    triton_retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description=(
            "extra attempts on connection failures, gRPC `UNAVAILABLE`/`RESOURCE_EXHAUSTED`, HTTP 429/502/503/504"
        ),
    )
    triton_retry_backoff_ms: float = Field(
        default=50.0,
        ge=0,
        le=10_000,
        description="backoff before the first extra attempt, doubling with each",
    )

    # TensorFlow Serving REST API (BACKEND=tfserving)
    tfserving_url: str = Field(
        default="http://localhost:8501",
        description="`BACKEND=tfserving`: TF Serving's REST API (prod: `http://tf-serving.<namespace>.svc:8501`)",
    )
    tfserving_model: str | None = Field(
        default=None,
        description=(
            "the model name TF Serving serves (`--model_name`; prod: the stage's `model.name`); unset: the card's "
            "`name`"
        ),
    )
    tfserving_model_version: int | None = Field(
        default=None,
        ge=1,
        description="pin a version: `/v1/models/<model>/versions/<v>:predict`; unset: the latest",
    )
    tfserving_signature: str = Field(default="serving_default", description="the SavedModel signature")
    tfserving_format: Literal["row", "columnar"] = Field(
        default="row",
        description='`row` (`{"instances": ...}`) or `columnar` (`{"inputs": {...}}`)',
    )
    tfserving_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description="per attempt (connect: at most 2 s)",
    )
    tfserving_retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="extra attempts on connection failures and 503/429/504",
    )
    tfserving_retry_backoff_ms: float = Field(
        default=50.0,
        ge=0,
        le=10_000,
        description="backoff before the first extra attempt, doubling with each",
    )

    # API
    max_instances: int = Field(default=64, ge=1, le=65536, description="most rows in one request")
    max_body_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        le=3_500_000,
        description="request body limit (Serverless Containers accept up to 3.5 MB)",
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="when set, the prediction endpoints require header `X-API-Key: <value>`",
    )

    # Prediction store
    store: Literal["local", "s3", "postgres", "clickhouse"] = Field(
        default="local",
        description="prediction store: `local` (files), `s3`, `postgres` or `clickhouse`",
    )
    store_path: Path = Field(
        default=Path("var/predictions"),
        description="`local` store: one `predictions-YYYY-MM-DD.jsonl` per UTC day",
    )
    store_s3_uri: str | None = Field(
        default=None,
        description="`s3` store: `s3://bucket/prefix/`; objects `prefix/dt=YYYY-MM-DD/<chunk id>.jsonl`",
    )
    store_flush_records: int = Field(
        default=500,
        ge=1,
        description="write a chunk when this many records are queued ...",
    )
    store_flush_seconds: float = Field(
        default=2.0,
        gt=0,
        description="... or when the oldest is this old, and at shutdown",
    )
    store_retry_seconds: float = Field(
        default=5.0,
        gt=0,
        description="while the store is down, retry (replay the spool) this often",
    )
    store_queue_max: int = Field(
        default=10_000,
        ge=1,
        description="more records waiting in memory than this are spilled to disk",
    )
    store_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description=(
            "a store call (write, replay) that has not answered by then counts as an outage: the store is marked down, "
            "the chunk spilled"
        ),
    )
    store_durability: Literal["buffered", "wal"] = Field(
        default="buffered",
        description='`buffered` or `wal` (see "Durability"); partner and prod set `wal`',
    )
    spool_dir: Path = Field(
        default=Path("var/spool"),
        description="where records wait while the store is down (and the write-ahead file of `wal`)",
    )
    # The platform's grace period between SIGTERM and SIGKILL: Kubernetes'
    # terminationGracePeriodSeconds (default 30, less a preStop hook's time), Docker Compose's
    # stop_grace_period (default 10 s). The stop is planned to finish before it.
    shutdown_grace_seconds: float = Field(
        default=10.0,
        ge=1,
        le=3600,
        description=(
            "the platform's time between SIGTERM and SIGKILL (Kubernetes' `terminationGracePeriodSeconds`, Compose's "
            "`stop_grace_period`): the stop is planned to end before it"
        ),
    )

    # PostgreSQL store (STORE=postgres); the password comes from PG_PASSWORD, never from PG_DSN
    pg_dsn: str | None = Field(
        default=None,
        description=(
            "`STORE=postgres`: libpq URI or `key=value` string **without a password**, e.g. `postgresql://inference@c-<"
            "id>.rw.mdb.yandexcloud.net:6432/db?sslmode=verify-full&sslrootcert=/path/root.crt` (a DSN with a password "
            "is refused)"
        ),
    )
    pg_password: SecretStr | None = Field(
        default=None,
        description="the password (the partner stack fills it from Lockbox); passed to libpq on its own, never logged",
    )
    pg_pool_min: int = Field(default=1, ge=0, le=100, description="connection pool size: fewest connections kept open")
    pg_pool_max: int = Field(default=4, ge=1, le=100, description="connection pool size: most connections")
    pg_connect_timeout: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="seconds to connect, and to wait for a pooled connection",
    )
    pg_statement_timeout_ms: int = Field(
        default=30_000,
        ge=0,
        description="`statement_timeout` of each insert (`SET LOCAL`, works behind the pooler); `0`: none",
    )

    # ClickHouse store (STORE=clickhouse): Managed ClickHouse over HTTPS (8443), or CLICKHOUSE_DSN
    clickhouse_host: str | None = Field(
        default=None,
        description="`STORE=clickhouse`: Managed ClickHouse host (`c-<id>.rw.mdb.yandexcloud.net`)",
    )
    clickhouse_port: int = Field(default=8443, ge=1, le=65535, description="HTTPS interface")
    clickhouse_database: str = Field(
        default="default",
        description=(
            "the database (the prod stack writes it, the user and the password into the Secret `backend-clickhouse`)"
        ),
    )
    clickhouse_user: str = Field(default="default", description="the user (prod: from the Secret `backend-clickhouse`)")
    clickhouse_password: SecretStr | None = Field(
        default=None,
        description="the password (prod: from the Secret `backend-clickhouse`)",
    )
    clickhouse_secure: bool = Field(default=True, description="TLS, certificate verified")
    clickhouse_ca_file: Path | None = Field(
        default=None,
        description=(
            "CA bundle to verify the server with (Managed ClickHouse: Yandex's root CA); unset: the system store"
        ),
    )
    clickhouse_dsn: str | None = Field(
        default=None,
        description=(
            "a clickhouse-connect DSN instead of the above, e.g. `chdb:///var/lib/predictions` (the ClickHouse engine "
            "in-process)"
        ),
    )
    clickhouse_ttl_days: int = Field(
        default=365,
        ge=1,
        le=36_500,
        description=(
            "rows (and per-minute aggregates) expire this long after their `time`; a change is applied at start"
        ),
    )
    clickhouse_connect_timeout: float = Field(default=5.0, gt=0, le=300, description="seconds to connect")
    clickhouse_send_receive_timeout: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="seconds to send a query and receive its answer",
    )

    # Object Storage (S3 API); credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
    s3_endpoint_url: str = Field(
        default=DEFAULT_S3_ENDPOINT,
        description="Object Storage endpoint (model and `s3` store)",
    )
    aws_region: str = Field(default=DEFAULT_REGION, description="region for request signing")
    s3_connect_timeout: float = Field(
        default=DEFAULT_CONNECT_TIMEOUT,
        gt=0,
        description="seconds to connect to Object Storage",
    )
    s3_read_timeout: float = Field(
        default=DEFAULT_READ_TIMEOUT,
        gt=0,
        description="seconds to wait for Object Storage's answer",
    )

    @field_validator("log_level", "store_durability", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator(
        "model_sha256",
        "model_card_uri",
        "store_s3_uri",
        "api_key",
        "triton_model",
        "triton_model_version",
        "pg_dsn",
        "pg_password",
        "tfserving_model",
        "tfserving_model_version",
        "clickhouse_host",
        "clickhouse_password",
        "clickhouse_ca_file",
        "clickhouse_dsn",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("model_sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().lower()
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise ValueError("MODEL_SHA256 must be 64 hex characters (a sha256 digest)")
        return value

    @field_validator("model_uri", "model_card_uri")
    @classmethod
    def _model_scheme(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme = urlparse(value).scheme
        if scheme not in ("", "file", "s3"):
            raise ValueError(f"unsupported scheme {scheme!r}: use a path, file://... or s3://bucket/key")
        if scheme == "s3" and not _s3_parts_ok(value, need_key=True):
            raise ValueError("expected s3://bucket/key")
        return value

    @field_validator("triton_url")
    @classmethod
    def _host_port(cls, value: str) -> str:
        value = value.strip()
        if "://" in value or "/" in value:
            raise ValueError("TRITON_URL is host:port (e.g. triton:8001), without a scheme or path")
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError("TRITON_URL must be host:port (e.g. triton:8001 for gRPC, triton:8000 for HTTP)")
        return value

    @field_validator("pg_dsn")
    @classmethod
    def _dsn_without_password(cls, value: str | None) -> str | None:
        if value is not None and _dsn_has_password(value):
            # the message never repeats the value: it holds a secret
            raise ValueError("PG_DSN must not carry a password: set it in PG_PASSWORD")
        return value

    @model_validator(mode="after")
    def _postgres_needs_dsn(self) -> Settings:
        if self.store == "postgres" and not self.pg_dsn:
            raise ValueError("STORE=postgres needs PG_DSN=postgresql://user@host:port/dbname (password in PG_PASSWORD)")
        if self.pg_pool_min > self.pg_pool_max:
            raise ValueError(f"PG_POOL_MIN ({self.pg_pool_min}) must not exceed PG_POOL_MAX ({self.pg_pool_max})")
        return self

    @field_validator("tfserving_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError("TFSERVING_URL must be http(s)://host:port (TF Serving's REST port, e.g. 8501)")
        return value

    @model_validator(mode="after")
    def _clickhouse_needs_host(self) -> Settings:
        if self.store == "clickhouse" and not (self.clickhouse_host or self.clickhouse_dsn):
            raise ValueError(
                "STORE=clickhouse needs CLICKHOUSE_HOST (or CLICKHOUSE_DSN, e.g. chdb:///path for local runs)"
            )
        return self

    @property
    def clickhouse_password_value(self) -> str | None:
        return self.clickhouse_password.get_secret_value() if self.clickhouse_password is not None else None

    @model_validator(mode="after")
    def _store_needs_uri(self) -> Settings:
        if self.store == "s3":
            if not self.store_s3_uri:
                raise ValueError("STORE=s3 needs STORE_S3_URI=s3://bucket/prefix/")
            if not _s3_parts_ok(self.store_s3_uri, need_key=False):
                raise ValueError("STORE_S3_URI must look like s3://bucket/prefix/")
        return self

    @property
    def s3(self) -> S3Params:
        return S3Params(self.s3_endpoint_url, self.aws_region, self.s3_connect_timeout, self.s3_read_timeout)

    @property
    def api_key_value(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key is not None else None

    @property
    def pg_password_value(self) -> str | None:
        return self.pg_password.get_secret_value() if self.pg_password is not None else None


def _dsn_has_password(dsn: str) -> bool:
    """Whether a libpq connection string (URI or ``key=value`` form) carries a password."""
    text = dsn.strip()
    if "://" in text:
        parsed = urlparse(text)
        if parsed.password is not None:
            return True
        return any(part.split("=", 1)[0].strip().lower() == "password" for part in parsed.query.split("&"))
    return any(word.split("=", 1)[0].strip().lower() == "password" for word in text.split() if "=" in word)


def _s3_parts_ok(uri: str, *, need_key: bool) -> bool:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        return False
    return bool(parsed.path.strip("/")) or not need_key


def settings_from_env(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Settings from environment variables (``MODEL_URI`` -> ``model_uri``); ``overrides`` win.

    Raises ``pydantic.ValidationError``; its ``loc`` is the field name, i.e. the variable lower-cased.
    """
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for name in Settings.model_fields:
        raw = env.get(name.upper())
        if raw is not None:
            values[name] = raw
    values.update(overrides)
    return Settings.model_validate(values)
