"""The alerts, declared once and rendered for each stage's monitoring.

Each :class:`Alert` names a condition on a metric (:data:`ALERTS`), its threshold (a field of
:class:`AlertThresholds`), how long it must hold and its severity. Two renderings read the same
declarations, so the stages cannot drift apart:

- :func:`prometheus_rules` for partner: Prometheus alerting rules on the scrape jobs of the GPU host
  (``components.monitoring`` writes them to the host; promtool checks and unit-tests them);
- :func:`kibana_rules` for prod: Kibana alerting rules over the Metricbeat documents
  (:mod:`components.metricbeat` names the fields), of rule types that Elastic's free Basic licence
  includes: ``.index-threshold`` (count / min / max / avg of a field, optionally per group) and, where
  a condition needs arithmetic between two aggregations (a ratio) or a percentile,
  ``observability.rules.custom_threshold``. A Prometheus ``for:`` becomes the rule's ``alert_delay``
  (that many consecutive one-minute runs must meet the condition).

The model server differs between the stages (Triton on partner's host, TF Serving in prod), so its
alerts carry the server's name: ``TritonDown`` on partner is ``TfServingDown`` in prod. The
descriptions differ too, because what to check differs (a compose service on a VM, a pod in the
cluster); the condition, threshold, duration and severity do not.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from components import metricbeat as mb
from components.base import ValidationError


@dataclass(frozen=True)
class AlertThresholds:
    #: Share of predict requests answered with 5xx.
    error_ratio: float = 0.05
    #: p99 latency of predict requests, seconds.
    p99_latency_s: float = 0.5
    #: Share of the GPU's framebuffer memory in use.
    gpu_memory_ratio: float = 0.9
    #: Average GPU utilisation over 10 minutes, percent.
    gpu_utilisation_percent: float = 95.0

    def __post_init__(self) -> None:
        for name, value, high in (("error_ratio", self.error_ratio, 1.0),
                                  ("gpu_memory_ratio", self.gpu_memory_ratio, 1.0),
                                  ("gpu_utilisation_percent", self.gpu_utilisation_percent, 100.0)):
            if not 0 < value <= high:
                raise ValidationError(f"alert threshold {name} {value} is out of range: allowed (0, {high:g}]")
        if not 0 < self.p99_latency_s <= 60:
            raise ValidationError(f"alert threshold p99_latency_s {self.p99_latency_s} is out of range: "
                                  "allowed (0, 60] seconds")


Stage = Literal["partner", "prod"]


@dataclass(frozen=True)
class Source:
    """One scraped endpoint as each stage names it: partner's Prometheus job, prod's Metricbeat target."""

    job: str
    target: str


SERVICE = Source(job="inference", target="inference")
MODEL_SERVER = Source(job="triton", target="tf-serving")
GPU = Source(job="dcgm", target="dcgm-exporter")
#: Partner's blackbox probe of Triton's model readiness (prod polls TF Serving's model status instead).
MODEL_READY_JOB = "triton-model-ready"
#: The model server's name in alert names, per stage.
SERVER_NAMES: dict[str, str] = {"partner": "Triton", "prod": "TfServing"}

#: Requests that run the model: partner's route regex and, for KQL (which has no regex), every route
#: template the service labels predict requests with (a test keeps the two equal to the service's).
PREDICT_ROUTES = "/v1/predict|/v2/models/.+/infer"
PREDICT_ROUTE_TEMPLATES = ("/v1/predict", "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer")
#: The one label that identifies a GPU across nodes in prod (partner's host has ``gpu`` 0..n).
GPU_ID_LABEL = "UUID"
#: Kibana evaluates every rule once a minute; ``for`` durations count runs of this length.
RULE_INTERVAL_MINUTES = 1


# --- conditions -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TargetDown:
    """The source's metrics endpoint does not answer (no successful scrape)."""

    source: Source


@dataclass(frozen=True)
class GaugeZero:
    """A 0/1 gauge of the source reads 0 (per instance: per pod in prod)."""

    source: Source
    metric: str


@dataclass(frozen=True)
class ModelNotReady:
    """The model server does not report the model as loaded."""

    source: Source


@dataclass(frozen=True)
class ErrorRatio:
    """Share of the source's predict requests (a counter by ``route`` and ``status``) answered 5xx."""

    source: Source
    metric: str
    window_minutes: int


@dataclass(frozen=True)
class LatencyQuantile:
    """A quantile of a latency histogram of the predict routes, in seconds."""

    source: Source
    metric: str
    quantile: float
    window_minutes: int


@dataclass(frozen=True)
class GaugeShare:
    """``used / (used + free)`` of two gauges, per GPU."""

    source: Source
    used: str
    free: str


@dataclass(frozen=True)
class GaugeAverage:
    """The average of a gauge over a window, per GPU."""

    source: Source
    metric: str
    window_minutes: int


Condition = TargetDown | GaugeZero | ModelNotReady | ErrorRatio | LatencyQuantile | GaugeShare | GaugeAverage


@dataclass(frozen=True)
class Text:
    """Summary and description; ``{threshold}`` or ``{threshold:FORMAT}`` is replaced by the threshold."""

    summary: str
    description: str


@dataclass(frozen=True)
class Alert:
    #: ``{server}`` is replaced by the stage's model server name (``TritonDown`` / ``TfServingDown``).
    name: str
    severity: Literal["critical", "warning"]
    condition: Condition
    #: How long the condition must hold before the alert fires.
    for_minutes: int
    #: partner's annotations (Prometheus templating) and prod's (what to check in the cluster).
    partner: Text
    prod: Text
    #: The :class:`AlertThresholds` field compared with, or ``None`` for a down/not-ready condition.
    threshold: str | None = None

    def name_for(self, stage: Stage) -> str:
        return self.name.replace("{server}", SERVER_NAMES[stage])

    def threshold_value(self, thresholds: AlertThresholds) -> float | None:
        return None if self.threshold is None else float(getattr(thresholds, self.threshold))


_FILL = re.compile(r"\{threshold(?::([^}]*))?\}")


def fill(text: str, value: float | None) -> str:
    if value is None:
        return text
    return _FILL.sub(lambda m: format(value, m.group(1) or "g"), text)


ALERTS: tuple[Alert, ...] = (
    Alert("InferenceServiceDown", "critical", TargetDown(SERVICE), 2,
          partner=Text("The inference service does not answer /metrics",
                       "Prometheus could not scrape {{ $labels.instance }} for 2 minutes: the service container is "
                       "down or hanging. Check `docker ps` and the container's logs on the GPU host."),
          prod=Text("No pod of the inference service answers /metrics",
                    "No inference pod has been scraped successfully for 2 minutes: the pods are down, crash-looping "
                    "or not scheduled. Check `kubectl -n aistack get pods -l app.kubernetes.io/name=inference` and "
                    "the ArgoCD application.")),
    Alert("InferenceErrorRatioHigh", "warning", ErrorRatio(SERVICE, "http_requests_total", 5), 5,
          threshold="error_ratio",
          partner=Text("More than {{ $value | humanizePercentage }} of predict requests fail",
                       "Over {threshold:.0%} of predict requests answered 5xx in the last 5 minutes (503 means "
                       "Triton or the model is not ready)."),
          prod=Text("More than {threshold:.0%} of predict requests fail",
                    "Over {threshold:.0%} of predict requests answered 5xx in the last 5 minutes (503 means TF "
                    "Serving or the model is not ready).")),
    Alert("InferenceLatencyP99High", "warning",
          LatencyQuantile(SERVICE, "http_request_duration_seconds", 0.99, 5), 10, threshold="p99_latency_s",
          partner=Text("Predict p99 latency is {{ $value | humanizeDuration }}",
                       "The 99th percentile of predict latency stayed above {threshold:g} s for 10 minutes."),
          prod=Text("Predict p99 latency is above {threshold:g} s",
                    "The 99th percentile of predict latency stayed above {threshold:g} s for 10 minutes.")),
    Alert("PredictionStoreDown", "warning", GaugeZero(SERVICE, "prediction_store_up"), 5,
          partner=Text("Prediction records cannot be written to {{ $labels.store }}",
                       "The service spools prediction records to local disk and replays them when the store "
                       "returns; check the PostgreSQL cluster and the spool size."),
          prod=Text("Prediction records cannot be written to ClickHouse",
                    "The service spools prediction records to local disk and replays them when the store "
                    "returns; check the Managed ClickHouse cluster and the spool size.")),
    Alert("{server}Down", "critical", TargetDown(MODEL_SERVER), 2,
          partner=Text("Triton's metrics endpoint does not answer",
                       "Prometheus could not scrape Triton (port 8002) for 2 minutes: tritonserver is down or "
                       "restarting."),
          prod=Text("No TF Serving pod answers its metrics endpoint",
                    "No TF Serving pod has been scraped successfully for 2 minutes: the pods are down, restarting "
                    "or waiting for a GPU node. Check `kubectl -n aistack get pods -l "
                    "app.kubernetes.io/name=tf-serving`.")),
    Alert("{server}ModelNotReady", "critical", ModelNotReady(MODEL_SERVER), 2,
          partner=Text("Triton model {{ $labels.model }} is not ready",
                       "GET /v2/models/<model>/ready on Triton has failed for 2 minutes: the model failed to load "
                       "(repository, credentials or config.pbtxt) or Triton is down; predict answers 503."),
          prod=Text("No TF Serving pod reports the model AVAILABLE",
                    "GET /v1/models/<model> on TF Serving has reported no AVAILABLE version for 2 minutes: the "
                    "model failed to load (the init container's copy, the SavedModel) or TF Serving is down; "
                    "predict answers 503.")),
    Alert("GpuMemoryHigh", "warning", GaugeShare(GPU, "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"), 10,
          threshold="gpu_memory_ratio",
          partner=Text("GPU {{ $labels.gpu }} framebuffer is {{ $value | humanizePercentage }} full",
                       "More than {threshold:.0%} of GPU memory has been in use for 10 minutes."),
          prod=Text("A GPU's framebuffer is over {threshold:.0%} full",
                    "More than {threshold:.0%} of GPU memory has been in use for 10 minutes.")),
    Alert("GpuUtilisationHigh", "warning", GaugeAverage(GPU, "DCGM_FI_DEV_GPU_UTIL", 10), 15,
          threshold="gpu_utilisation_percent",
          partner=Text("GPU {{ $labels.gpu }} is saturated ({{ $value }}% busy)",
                       "The 10-minute average GPU utilisation has stayed above {threshold:g}% for 15 minutes: the "
                       "host is at capacity; consider a larger shape or a second host."),
          prod=Text("A GPU is saturated (over {threshold:g}% busy)",
                    "The 10-minute average GPU utilisation has stayed above {threshold:g}% for 15 minutes: TF "
                    "Serving is at capacity; raise tfServing.maxReplicas and the GPU group's max.")),
    Alert("GpuMetricsMissing", "warning", TargetDown(GPU), 5,
          partner=Text("The DCGM exporter does not answer",
                       "No GPU metrics for 5 minutes, so the GPU alerts cannot fire. Check the dcgm-exporter "
                       "container."),
          prod=Text("No DCGM exporter answers",
                    "No GPU metrics for 5 minutes, so the GPU alerts cannot fire. Check the nvidia-dcgm-exporter "
                    "pods of the GPU Operator (namespace gpu-operator) and that a GPU node is up.")),
)


def alert_names(stage: Stage) -> list[str]:
    return [a.name_for(stage) for a in ALERTS]


# --- Prometheus (partner) ---------------------------------------------------------------------------

def _predict(job: str) -> str:
    return f'job="{job}",route=~"{PREDICT_ROUTES}"'


def promql(condition: Condition, threshold: float | None) -> str:
    """The PromQL expression of ``condition`` (comparison included)."""
    match condition:
        case TargetDown(source):
            return f'up{{job="{source.job}"}} == 0'
        case GaugeZero(source, metric):
            return f'{metric}{{job="{source.job}"}} == 0'
        case ModelNotReady():
            return f'probe_success{{job="{MODEL_READY_JOB}"}} == 0'
        case ErrorRatio(source, metric, window):
            predict = _predict(source.job)
            return (f'sum(rate({metric}{{{predict},status=~"5.."}}[{window}m]))\n'
                    f"  / sum(rate({metric}{{{predict}}}[{window}m])) > {threshold:g}")
        case LatencyQuantile(source, metric, quantile, window):
            return (f"histogram_quantile({quantile:g},\n"
                    f"  sum by (le) (rate({metric}_bucket{{{_predict(source.job)}}}[{window}m]))) > {threshold:g}")
        case GaugeShare(_, used, free):
            return f"max by (gpu) ({used} / ({used} + {free})) > {threshold:g}"
        case GaugeAverage(_, metric, window):
            return f"avg by (gpu) (avg_over_time({metric}[{window}m])) > {threshold:g}"
    raise AssertionError(condition)


def prometheus_rules(thresholds: AlertThresholds | None = None) -> dict[str, Any]:
    """partner's rule file: one group, one rule per alert."""
    t = thresholds or AlertThresholds()
    rules = []
    for alert in ALERTS:
        value = alert.threshold_value(t)
        rules.append({
            "alert": alert.name_for("partner"),
            "expr": promql(alert.condition, value),
            "for": f"{alert.for_minutes}m",
            "labels": {"severity": alert.severity},
            "annotations": {"summary": fill(alert.partner.summary, value),
                            "description": fill(alert.partner.description, value)},
        })
    return {"groups": [{"name": "aistack", "rules": rules}]}


# --- Kibana (prod) ----------------------------------------------------------------------------------

INDEX_THRESHOLD = ".index-threshold"
CUSTOM_THRESHOLD = "observability.rules.custom_threshold"
#: The action group each rule type fires in.
FIRED_GROUP = {INDEX_THRESHOLD: "threshold met", CUSTOM_THRESHOLD: "custom_threshold.fired"}
#: The alert context's text each rule type offers to actions.
CONTEXT_TEXT = {INDEX_THRESHOLD: "{{context.message}}", CUSTOM_THRESHOLD: "{{context.reason}}"}
CONSUMER = "alerts"
_GROUP_SIZE = 20


def stable_uuid(name: str) -> str:
    """A UUID (version 4 layout) derived from ``name``: the same id on every run, as Kibana requires
    UUIDs for objects with encrypted attributes (rules, connectors)."""
    return str(uuid.UUID(bytes=hashlib.sha256(name.encode()).digest()[:16], version=4))


def rule_id(alert: Alert) -> str:
    return stable_uuid(f"aistack-rule-{alert.name_for('prod')}")


def _predict_query(source: Source) -> str:
    routes = " or ".join(mb.kql_string(r) for r in PREDICT_ROUTE_TEMPLATES)
    return f"{mb.target_query(source.target)} and {mb.label('route')}: ({routes})"


def _index_threshold(filter_kuery: str, agg: str, threshold: float, comparator: str, window: int,
                     field: str | None = None, group_by: str | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {
        "index": [mb.INDEX_PATTERN],
        "timeField": mb.TIME_FIELD,
        "aggType": agg,
        "groupBy": "top" if group_by else "all",
        "filterKuery": filter_kuery,
        "timeWindowSize": window,
        "timeWindowUnit": "m",
        "thresholdComparator": comparator,
        "threshold": [threshold],
    }
    if field is not None:
        params["aggField"] = field
    if group_by is not None:
        params["termField"] = group_by
        params["termSize"] = _GROUP_SIZE
    return params


def _custom_threshold(data_view: str, query: str, metrics: list[dict[str, str]], equation: str, label: str,
                      threshold: float, window: int, group_by: Sequence[str] = ()) -> dict[str, Any]:
    params: dict[str, Any] = {
        "criteria": [{
            "comparator": ">",
            "threshold": [threshold],
            "timeSize": window,
            "timeUnit": "m",
            "metrics": metrics,
            "equation": equation,
            "label": label,
        }],
        "alertOnNoData": False,
        "alertOnGroupDisappear": False,
        "searchConfiguration": {"index": data_view, "query": {"language": "kuery", "query": query}},
    }
    if group_by:
        params["groupBy"] = list(group_by)
    return params


def kibana_condition(condition: Condition, threshold: float | None, data_view: str) -> tuple[str, dict[str, Any]]:
    """``(rule_type_id, params)`` of ``condition`` over the Metricbeat documents."""
    match condition:
        case TargetDown(source):
            # No successful scrape of any pod in the last minute (Metricbeat's `up` is 1 per successful one).
            return INDEX_THRESHOLD, _index_threshold(
                f"{mb.target_query(source.target)} and {mb.gauge('up')} >= 1", "count", 1, "<", 1)
        case GaugeZero(source, metric):
            return INDEX_THRESHOLD, _index_threshold(
                mb.target_query(source.target), "max", 1, "<", 1, field=mb.gauge(metric),
                group_by="kubernetes.pod.name")
        case ModelNotReady(source):
            return INDEX_THRESHOLD, _index_threshold(
                f"{mb.target_query(source.target)} and {mb.MODEL_STATE_FIELD}: {mb.kql_string('AVAILABLE')}",
                "count", 1, "<", 1)
        case ErrorRatio(source, metric, window):
            assert threshold is not None
            return CUSTOM_THRESHOLD, _custom_threshold(
                data_view, _predict_query(source),
                [{"name": "A", "aggType": "sum", "field": mb.HTTP_5XX_RATE},
                 {"name": "B", "aggType": "sum", "field": mb.rate(metric)}],
                "A / B", "share of predict requests answered 5xx", threshold, window)
        case LatencyQuantile(source, metric, quantile, window):
            assert threshold is not None
            aggregation = {0.95: "p95", 0.99: "p99"}.get(quantile)
            if aggregation is None:
                raise ValidationError(f"quantile {quantile} has no Kibana aggregation: use 0.95 or 0.99")
            return CUSTOM_THRESHOLD, _custom_threshold(
                data_view, _predict_query(source),
                [{"name": "A", "aggType": aggregation, "field": mb.histogram(metric)}],
                "A", f"predict latency {aggregation} (s)", threshold, window)
        case GaugeShare(source, used, free):
            assert threshold is not None
            return CUSTOM_THRESHOLD, _custom_threshold(
                data_view, mb.target_query(source.target),
                [{"name": "A", "aggType": "avg", "field": mb.gauge(used)},
                 {"name": "B", "aggType": "avg", "field": mb.gauge(free)}],
                "A / (A + B)", "share of GPU memory in use", threshold, RULE_INTERVAL_MINUTES,
                group_by=[mb.label(GPU_ID_LABEL)])
        case GaugeAverage(source, metric, window):
            assert threshold is not None
            return INDEX_THRESHOLD, _index_threshold(
                mb.target_query(source.target), "avg", threshold, ">", window, field=mb.gauge(metric),
                group_by=mb.label(GPU_ID_LABEL))
    raise AssertionError(condition)


@dataclass(frozen=True)
class KibanaRule:
    id: str
    #: The body of ``POST /api/alerting/rule/<id>``.
    create: dict[str, Any]

    @property
    def update(self) -> dict[str, Any]:
        """The body of ``PUT /api/alerting/rule/<id>`` (the fields an update accepts)."""
        return {k: v for k, v in self.create.items() if k in UPDATE_FIELDS}


#: What ``PUT /api/alerting/rule/<id>`` accepts (the type, consumer and enabled flag are fixed at creation).
UPDATE_FIELDS = ("name", "tags", "schedule", "params", "actions", "alert_delay")


@dataclass(frozen=True)
class Notifiers:
    """The connectors every rule notifies: Kibana's log and an index of alert documents."""

    server_log: str
    index: str


def kibana_rules(data_view: str, notifiers: Notifiers, thresholds: AlertThresholds | None = None) -> list[KibanaRule]:
    t = thresholds or AlertThresholds()
    rules = []
    for alert in ALERTS:
        value = alert.threshold_value(t)
        rule_type, params = kibana_condition(alert.condition, value, data_view)
        name = alert.name_for("prod")
        summary, description = fill(alert.prod.summary, value), fill(alert.prod.description, value)
        group = FIRED_GROUP[rule_type]
        frequency = {"summary": False, "notify_when": "onActionGroupChange", "throttle": None}
        message = f"[{alert.severity}] {name}: {summary}. {CONTEXT_TEXT[rule_type]} {description}"
        actions = [
            {"group": group, "id": notifiers.server_log, "frequency": frequency,
             "params": {"level": "error" if alert.severity == "critical" else "warn", "message": message}},
            {"group": group, "id": notifiers.index, "frequency": frequency,
             "params": {"documents": [{"rule": name, "severity": alert.severity, "alert": "{{alert.id}}",
                                       "summary": summary, "context": CONTEXT_TEXT[rule_type],
                                       "description": description}]}},
        ]
        rules.append(KibanaRule(rule_id(alert), {
            "name": name,
            "rule_type_id": rule_type,
            "consumer": CONSUMER,
            "enabled": True,
            "tags": ["aistack", alert.severity, alert.condition.source.target],
            "schedule": {"interval": f"{RULE_INTERVAL_MINUTES}m"},
            "params": params,
            "actions": actions,
            "alert_delay": {"active": max(1, alert.for_minutes // RULE_INTERVAL_MINUTES)},
        }))
    return rules
