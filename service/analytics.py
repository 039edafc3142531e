"""The prediction analytics a dashboard shows, as ClickHouse queries over ``STORE=clickhouse``'s tables.

- :func:`latency_quantiles`: p50/p90/p99 request latency, requests and predictions per model and
  time bucket (from the per-minute aggregates, so a month of traffic costs a few thousand rows);
- :func:`error_rate`: the share of logged predictions that carry an error, per model and bucket
  (aggregates too);
- :func:`label_distribution`: how often each label was predicted per model and bucket, with its
  share of the bucket (raw rows; the table is ordered by ``(model, time)``, so a model and a time
  range read only their own granules).

Result aliases never repeat a column name (the pre-24.3 query analyzer would substitute them).
Each function runs one query whose SQL is a module constant (a Grafana ClickHouse panel can use the
same text with its own macros) with server-side parameters (never string formatting of values).
Times are UTC; buckets are whole minutes for the aggregate-based queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from service.stores.clickhouse import MINUTE_TABLE, QUANTILES, TABLE

_Q = ", ".join(str(q) for q in QUANTILES)

LATENCY_SQL = f"""
SELECT
    toUnixTimestamp(toStartOfInterval(minute, INTERVAL {{bucket:UInt32}} SECOND)) AS t,
    model,
    sum(requests) AS n_requests,
    sum(predictions) AS n_predictions,
    sum(errors) AS n_errors,
    quantilesIfMerge({_Q})(latency_ms) AS latency
FROM {MINUTE_TABLE}
WHERE minute >= {{since:DateTime('UTC')}} AND minute < {{until:DateTime('UTC')}}
    AND ({{model:String}} = '' OR model = {{model:String}})
GROUP BY t, model
ORDER BY model, t
""".strip()

ERROR_RATE_SQL = f"""
SELECT
    toUnixTimestamp(toStartOfInterval(minute, INTERVAL {{bucket:UInt32}} SECOND)) AS t,
    model,
    sum(predictions) AS n_predictions,
    sum(errors) AS n_errors,
    if(n_predictions = 0, 0., n_errors / n_predictions) AS rate
FROM {MINUTE_TABLE}
WHERE minute >= {{since:DateTime('UTC')}} AND minute < {{until:DateTime('UTC')}}
    AND ({{model:String}} = '' OR model = {{model:String}})
GROUP BY t, model
ORDER BY model, t
""".strip()

LABEL_SQL = f"""
SELECT
    toUnixTimestamp(toStartOfInterval(time, INTERVAL {{bucket:UInt32}} SECOND)) AS t,
    model,
    label,
    count() AS n,
    n / sum(n) OVER (PARTITION BY t, model) AS share
FROM {TABLE}
WHERE time >= {{since:DateTime64(6, 'UTC')}} AND time < {{until:DateTime64(6, 'UTC')}}
    AND ({{model:String}} = '' OR model = {{model:String}})
    AND error = ''
GROUP BY t, model, label
ORDER BY model, t, label
""".strip()


@dataclass(frozen=True)
class LatencyPoint:
    time: datetime
    model: str
    requests: int
    predictions: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float


@dataclass(frozen=True)
class ErrorRatePoint:
    time: datetime
    model: str
    predictions: int
    errors: int
    rate: float


@dataclass(frozen=True)
class LabelCount:
    time: datetime
    model: str
    label: int
    count: int
    share: float


def _utc_text(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _params(since: datetime, until: datetime | None, model: str | None, bucket_seconds: int, minutes: bool) -> dict:
    if bucket_seconds < 1:
        raise ValueError("bucket_seconds must be positive")
    if minutes and bucket_seconds % 60:
        raise ValueError("the per-minute aggregates need bucket_seconds to be a multiple of 60")
    end = until or datetime.now(UTC)
    text_since, text_until = _utc_text(since), _utc_text(end)
    if minutes:  # DateTime parameters carry whole seconds
        text_since, text_until = text_since[:19], text_until[:19]
    return {"since": text_since, "until": text_until, "model": model or "", "bucket": bucket_seconds}


def _time(seconds: Any) -> datetime:
    return datetime.fromtimestamp(int(seconds), tz=UTC)


def latency_quantiles(
    client: Any, *, since: datetime, until: datetime | None = None, model: str | None = None, bucket_seconds: int = 60
) -> list[LatencyPoint]:
    """Latency quantiles (over requests), requests, predictions and errors per model and bucket."""
    rows = client.query(LATENCY_SQL, parameters=_params(since, until, model, bucket_seconds, minutes=True))
    return [
        LatencyPoint(_time(t), str(m), int(req), int(pred), int(err), float(q[0]), float(q[1]), float(q[2]))
        for t, m, req, pred, err, q in rows.result_rows
    ]


def error_rate(
    client: Any, *, since: datetime, until: datetime | None = None, model: str | None = None, bucket_seconds: int = 3600
) -> list[ErrorRatePoint]:
    """Errors / predictions per model and bucket."""
    rows = client.query(ERROR_RATE_SQL, parameters=_params(since, until, model, bucket_seconds, minutes=True))
    return [
        ErrorRatePoint(_time(t), str(m), int(pred), int(err), float(rate)) for t, m, pred, err, rate in rows.result_rows
    ]


def label_distribution(
    client: Any, *, since: datetime, until: datetime | None = None, model: str | None = None, bucket_seconds: int = 3600
) -> list[LabelCount]:
    """Predicted-label counts and shares per model and bucket (successful predictions only)."""
    rows = client.query(LABEL_SQL, parameters=_params(since, until, model, bucket_seconds, minutes=False))
    return [
        LabelCount(_time(t), str(m), int(label), int(n), float(share)) for t, m, label, n, share in rows.result_rows
    ]
