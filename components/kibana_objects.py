"""prod's Kibana content as files: dashboards (saved objects), connectors and alerting rules.

Everything is generated here and imported by a Kubernetes Job (:mod:`components.elk`) through
Kibana's documented APIs, never by hand:

- ``saved-objects.ndjson``: two data views (``metricbeat-*`` and the alert documents' index) and
  three dashboards whose panels are Lens visualizations stored by value, imported with
  ``POST /api/saved_objects/_import?overwrite=true`` (fixed ids: a second import overwrites the
  same objects);
- ``connector.<id>.create.json`` / ``.update.json``: the connectors every rule notifies, types that
  the Basic licence includes: ``.server-log`` (Kibana's log, which Filebeat ships to the logs index)
  and ``.index`` (one document per fired alert in :data:`ALERTS_INDEX`);
- ``rule.<id>.create.json`` / ``.update.json``: the alerting rules of :mod:`components.alerts`;
- ``kibana-setup.sh``: waits for Kibana, imports the saved objects, then for each connector and rule
  asks ``GET <api>/<id>`` and either creates it (``POST``, on 404) or updates it (``PUT``, on 200).
  Ids are fixed UUIDs, so running it twice leaves the same objects: it is idempotent.

The dashboards read only fields that :mod:`components.metricbeat` documents; the tests check every
metric they name against the service's registry and the exporters' documented metrics.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from components import alerts
from components import metricbeat as mb

DATA_VIEW_ID = "aistack-metricbeat"
ALERTS_DATA_VIEW_ID = "aistack-alerts"
ALERTS_INDEX = "aistack-alerts"
SCRIPT = "kibana-setup.sh"
SAVED_OBJECTS = "saved-objects.ndjson"
CONNECTORS_API = "/api/actions/connector"
RULES_API = "/api/alerting/rule"
IMPORT_API = "/api/saved_objects/_import?overwrite=true"
#: The saved-object versions these objects are written in (Kibana migrates them on import).
CORE_MIGRATION_VERSION = "8.8.0"
TYPE_MIGRATION_VERSION = {"index-pattern": "7.11.0", "dashboard": "8.7.0"}
PANEL_VERSION = "8.11.0"
NOTIFIERS = alerts.Notifiers(server_log=alerts.stable_uuid("aistack-connector-server-log"),
                             index=alerts.stable_uuid("aistack-connector-alert-index"))

#: What the connectors are (the body of ``POST /api/actions/connector/<id>``).
CONNECTORS: dict[str, dict[str, Any]] = {
    NOTIFIERS.server_log: {"name": "aistack: Kibana log", "connector_type_id": ".server-log",
                           "config": {}, "secrets": {}},
    NOTIFIERS.index: {"name": "aistack: alert documents", "connector_type_id": ".index",
                      "config": {"index": ALERTS_INDEX, "refresh": False, "executionTimeField": "@timestamp"},
                      "secrets": {}},
}
#: What ``PUT /api/actions/connector/<id>`` accepts (the type is fixed at creation).
CONNECTOR_UPDATE_FIELDS = ("name", "config", "secrets")


# --- Lens ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Agg:
    """One aggregation of a field (Lens operation types: ``average``, ``max``, ``min``, ``sum``,
    ``percentile``, ``unique_count``)."""

    op: str
    field: str
    #: KQL restricting this column only.
    kql: str | None = None
    percentile: int | None = None
    #: Normalise by second (Lens' ``timeScale``): a sum of increases becomes a rate.
    per_second: bool = False


@dataclass(frozen=True)
class BinOp:
    """``left <op> right`` of a Lens formula (``divide``, ``add``, ``subtract``, ``multiply``)."""

    op: str
    left: Agg | BinOp
    right: Agg | BinOp


Expr = Agg | BinOp

_SYMBOL = {"divide": "/", "add": "+", "subtract": "-", "multiply": "*"}
_FORMULA_NAME = {"average": "average", "max": "max", "min": "min", "sum": "sum", "percentile": "percentile",
                 "unique_count": "unique_count"}


@dataclass(frozen=True)
class Series:
    label: str
    expr: Expr
    #: Lens number format: ``number``, ``percent`` or ``bytes``.
    unit: str = "number"


@dataclass(frozen=True)
class Panel:
    title: str
    series: tuple[Series, ...]
    #: ``line`` (over time) or ``metric`` (one number).
    kind: str = "line"
    #: KQL for the whole panel (typically the scrape target).
    query: str = ""
    #: A field to split the series by (top 10 values).
    split_by: str | None = None


def aggs(expr: Expr) -> list[Agg]:
    """The aggregations ``expr`` reads, in order."""
    if isinstance(expr, Agg):
        return [expr]
    return [*aggs(expr.left), *aggs(expr.right)]


def fields_of(panel: Panel) -> set[str]:
    """Every field a panel reads (columns, split)."""
    found = {a.field for s in panel.series for a in aggs(s.expr)}
    return found | ({panel.split_by} if panel.split_by else set())


def _agg_text(agg: Agg) -> str:
    args = [agg.field]
    if agg.percentile is not None:
        args.append(f"percentile={agg.percentile}")
    if agg.kql:
        args.append("kql='" + agg.kql.replace("'", "\\'") + "'")
    return f"{_FORMULA_NAME[agg.op]}({', '.join(args)})"


def formula_text(expr: Expr, top: bool = True) -> str:
    if isinstance(expr, Agg):
        return _agg_text(expr)
    text = f"{formula_text(expr.left, False)} {_SYMBOL[expr.op]} {formula_text(expr.right, False)}"
    return text if top else f"({text})"


class _Layer:
    """Builds one form-based Lens layer: columns in order, with stable ids."""

    def __init__(self, layer_id: str) -> None:
        self.layer_id = layer_id
        self.columns: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []

    def add(self, column_id: str, column: dict[str, Any]) -> str:
        self.columns[column_id] = column
        self.order.append(column_id)
        return column_id

    def agg_column(self, agg: Agg, label: str, unit: str, custom: bool = True) -> dict[str, Any]:
        column: dict[str, Any] = {
            "label": label, "dataType": "number", "operationType": agg.op, "sourceField": agg.field,
            "isBucketed": False, "scale": "ratio", "customLabel": custom,
            "params": {"emptyAsNull": True, "format": {"id": unit, "params": {"decimals": 2}}},
        }
        if agg.percentile is not None:
            column["params"]["percentile"] = agg.percentile
        if agg.kql:
            column["filter"] = {"query": agg.kql, "language": "kuery"}
        if agg.per_second:
            column["timeScale"] = "s"
        return column

    def series(self, column_id: str, series: Series) -> str:
        if isinstance(series.expr, Agg):
            return self.add(column_id, self.agg_column(series.expr, series.label, series.unit))
        text = formula_text(series.expr)
        part = f"Part of {series.label}"
        counter = iter(range(1000))

        def walk(expr: Expr, offset: int) -> tuple[Any, int]:
            """(tinymath node, text length) of ``expr`` printed at ``offset``."""
            if isinstance(expr, Agg):
                sub = f"{column_id}X{next(counter)}"
                column = self.agg_column(expr, part, series.unit)
                column["params"]["emptyAsNull"] = False
                self.add(sub, column)
                return sub, len(_agg_text(expr))
            nested = offset != 0
            start = offset + (1 if nested else 0)
            left, left_len = walk(expr.left, start)
            right_start = start + left_len + len(f" {_SYMBOL[expr.op]} ")
            right, right_len = walk(expr.right, right_start)
            inner = left_len + len(f" {_SYMBOL[expr.op]} ") + right_len
            node = {"type": "function", "name": expr.op, "args": [left, right],
                    "location": {"min": start, "max": start + inner},
                    "text": text[start:start + inner]}
            return node, inner + (2 if nested else 0)

        ast, _ = walk(series.expr, 0)
        math_id = f"{column_id}X{next(counter)}"
        refs = [c for c in self.order if c.startswith(f"{column_id}X")]
        self.add(math_id, {"label": part, "dataType": "number", "operationType": "math", "isBucketed": False,
                           "scale": "ratio", "params": {"tinymathAst": ast}, "references": refs,
                           "customLabel": True})
        return self.add(column_id, {
            "label": series.label, "dataType": "number", "operationType": "formula", "isBucketed": False,
            "scale": "ratio", "customLabel": True, "references": [math_id],
            "params": {"formula": text, "isFormulaBroken": False,
                       "format": {"id": series.unit, "params": {"decimals": 2}}},
        })

    def state(self) -> dict[str, Any]:
        return {"columns": self.columns, "columnOrder": self.order, "incompleteColumns": {}}


def _ids(seed: str, n: int) -> list[str]:
    return [alerts.stable_uuid(f"{seed}-{i}") for i in range(n)]


def lens_attributes(panel: Panel, seed: str) -> dict[str, Any]:
    """The ``attributes`` of a by-value Lens panel."""
    layer_id, x_id, split_id, *series_ids = _ids(seed, 3 + len(panel.series))
    layer = _Layer(layer_id)
    accessors = []
    split_column = None
    if panel.split_by:
        split_column = {"label": f"Top values of {panel.split_by}", "dataType": "string", "operationType": "terms",
                        "sourceField": panel.split_by, "isBucketed": True, "scale": "ordinal",
                        "params": {"size": 10, "orderBy": {"type": "column", "columnId": series_ids[0]},
                                   "orderDirection": "desc", "otherBucket": True, "missingBucket": False,
                                   "parentFormat": {"id": "terms"}}}
        layer.add(split_id, split_column)
    # Buckets first: the split (top values over the whole range), then time.
    if panel.kind == "line":
        layer.add(x_id, {"label": mb.TIME_FIELD, "dataType": "date", "operationType": "date_histogram",
                         "sourceField": mb.TIME_FIELD, "isBucketed": True, "scale": "interval",
                         "params": {"interval": "auto", "includeEmptyRows": True, "dropPartials": False}})
    for column_id, series in zip(series_ids, panel.series, strict=True):
        accessors.append(layer.series(column_id, series))
    if panel.kind == "line":
        visualization: dict[str, Any] = {
            "legend": {"isVisible": True, "position": "right"},
            "valueLabels": "hide",
            "fittingFunction": "None",
            "preferredSeriesType": "line",
            "layers": [{"layerId": layer_id, "layerType": "data", "seriesType": "line", "xAccessor": x_id,
                        "accessors": accessors, **({"splitAccessor": split_id} if split_column else {})}],
            "axisTitlesVisibilitySettings": {"x": False, "yLeft": True, "yRight": True},
            "tickLabelsVisibilitySettings": {"x": True, "yLeft": True, "yRight": True},
            "gridlinesVisibilitySettings": {"x": True, "yLeft": True, "yRight": True},
            "yLeftExtent": {"mode": "full"},
            "yRightExtent": {"mode": "full"},
        }
        visualization_type = "lnsXY"
    else:
        visualization = {"layerId": layer_id, "layerType": "data", "metricAccessor": accessors[0],
                         **({"breakdownByAccessor": split_id} if split_column else {})}
        visualization_type = "lnsMetric"
    return {
        "title": panel.title,
        "description": "",
        "visualizationType": visualization_type,
        "type": "lens",
        "references": [{"type": "index-pattern", "id": DATA_VIEW_ID,
                        "name": f"indexpattern-datasource-layer-{layer_id}"}],
        "state": {
            "visualization": visualization,
            "query": {"query": panel.query, "language": "kuery"},
            "filters": [],
            "datasourceStates": {"formBased": {"layers": {layer_id: layer.state()}}, "textBased": {"layers": {}}},
            "internalReferences": [],
            "adHocDataViews": {},
        },
    }


# --- the dashboards -------------------------------------------------------------------------------

def _predict() -> str:
    routes = " or ".join(mb.kql_string(r) for r in alerts.PREDICT_ROUTE_TEMPLATES)
    return f"{mb.label('route')}: ({routes})"


SERVICE_Q = mb.target_query(alerts.SERVICE.target)
TF_Q = mb.target_query(alerts.MODEL_SERVER.target)
GPU_Q = mb.target_query(alerts.GPU.target)
_UP = f"{mb.gauge('up')} >= 1"
_PODS = "kubernetes.pod.name"
_TF_REQUESTS = ":tensorflow:serving:request_count"
_TF_LATENCY = ":tensorflow:serving:request_latency"
_TF_RUNTIME = ":tensorflow:serving:runtime_latency"
_TF_PODS = 'kubernetes.namespace: "{namespace}" and kubernetes.pod.name: tf-serving-*'


def service_panels() -> list[Panel]:
    latency = mb.histogram("http_request_duration_seconds")
    requests = mb.rate("http_requests_total")
    return [
        Panel("Pods answering /metrics", (Series("pods", Agg("unique_count", _PODS, kql=_UP)),), "metric", SERVICE_Q),
        Panel("Model ready (min over pods)", (Series("ready", Agg("min", mb.gauge("model_ready"))),), "metric",
              SERVICE_Q),
        Panel("Prediction store up (min over pods)",
              (Series("store up", Agg("min", mb.gauge("prediction_store_up"))),), "metric", SERVICE_Q),
        Panel("Predict requests per second by status",
              (Series("requests/s", Agg("sum", requests, per_second=True)),), "line",
              f"{SERVICE_Q} and {_predict()}", split_by=mb.label("status")),
        Panel("Predict error ratio (5xx)",
              (Series("5xx share", BinOp("divide", Agg("sum", mb.HTTP_5XX_RATE), Agg("sum", requests)),
                      "percent"),), "line", f"{SERVICE_Q} and {_predict()}"),
        Panel("Predict latency (s)",
              tuple(Series(f"p{p}", Agg("percentile", latency, percentile=p)) for p in (50, 95, 99)), "line",
              f"{SERVICE_Q} and {_predict()}"),
        Panel("Rows predicted per second",
              (Series("rows/s", Agg("sum", mb.rate("predictions_total"), per_second=True)),), "line", SERVICE_Q,
              split_by=mb.label("model")),
        Panel("Backend time per batch, p99 (s)",
              (Series("p99", Agg("percentile", mb.histogram("inference_duration_seconds"), percentile=99)),),
              "line", SERVICE_Q, split_by=mb.label("backend")),
        Panel("Rows per backend run",
              tuple(Series(f"p{p}", Agg("percentile", mb.histogram("inference_batch_size"), percentile=p))
                    for p in (50, 99)), "line", SERVICE_Q),
        Panel("Prediction store backlog (max over pods)",
              (Series("queued in memory", Agg("max", mb.gauge("prediction_store_queue_depth"))),
               Series("spooled to disk", Agg("max", mb.gauge("prediction_store_spool_records")))), "line",
              SERVICE_Q),
    ]


def tf_serving_panels(namespace: str) -> list[Panel]:
    pods = _TF_PODS.format(namespace=namespace)
    return [
        Panel("TF Serving pods answering", (Series("pods", Agg("unique_count", _PODS, kql=_UP)),), "metric", TF_Q),
        Panel("Pods with the model AVAILABLE",
              (Series("pods", Agg("unique_count", _PODS,
                                  kql=f"{mb.MODEL_STATE_FIELD}: {mb.kql_string('AVAILABLE')}")),), "metric", TF_Q),
        Panel("Requests per second by status",
              (Series("requests/s", Agg("sum", mb.rate(_TF_REQUESTS), per_second=True)),), "line", TF_Q,
              split_by=mb.label("status")),
        Panel("Request latency (µs)",
              tuple(Series(f"p{p}", Agg("percentile", mb.histogram(_TF_LATENCY), percentile=p)) for p in (50, 99)),
              "line", TF_Q),
        Panel("TensorFlow runtime latency, p99 (µs)",
              (Series("p99", Agg("percentile", mb.histogram(_TF_RUNTIME), percentile=99)),), "line", TF_Q,
              split_by=mb.label("API")),
        Panel("Pod CPU (nanocores)", (Series("nanocores", Agg("average", "kubernetes.pod.cpu.usage.nanocores")),),
              "line", pods, split_by=_PODS),
        Panel("Pod memory (working set)",
              (Series("working set", Agg("average", "kubernetes.pod.memory.working_set.bytes"), "bytes"),), "line",
              pods, split_by=_PODS),
    ]


def gpu_panels(namespace: str) -> list[Panel]:
    gpu = mb.label(alerts.GPU_ID_LABEL)
    used, free = mb.gauge("DCGM_FI_DEV_FB_USED"), mb.gauge("DCGM_FI_DEV_FB_FREE")
    return [
        Panel("GPU utilisation (%)", (Series("utilisation", Agg("average", mb.gauge("DCGM_FI_DEV_GPU_UTIL"))),),
              "line", GPU_Q, split_by=gpu),
        Panel("GPU memory in use",
              (Series("in use", BinOp("divide", Agg("average", used),
                                      BinOp("add", Agg("average", used), Agg("average", free))), "percent"),),
              "line", GPU_Q, split_by=gpu),
        Panel("GPU temperature (°C)", (Series("temperature", Agg("average", mb.gauge("DCGM_FI_DEV_GPU_TEMP"))),),
              "line", GPU_Q, split_by=gpu),
        Panel("GPU power (W)", (Series("power", Agg("average", mb.gauge("DCGM_FI_DEV_POWER_USAGE"))),), "line",
              GPU_Q, split_by=gpu),
        Panel("Node CPU (nanocores)", (Series("nanocores", Agg("average", "kubernetes.node.cpu.usage.nanocores")),),
              "line", "metricset.name: node", split_by="kubernetes.node.name"),
        Panel("Node memory (working set)",
              (Series("working set", Agg("average", "kubernetes.node.memory.workingset.bytes"), "bytes"),), "line",
              "metricset.name: node", split_by="kubernetes.node.name"),
        Panel("Deployments: available replicas",
              (Series("available", Agg("min", "kubernetes.deployment.replicas.available")),), "line",
              f'metricset.name: state_deployment and kubernetes.namespace: "{namespace}"',
              split_by="kubernetes.deployment.name"),
        Panel("Container restarts",
              (Series("restarts", Agg("max", "kubernetes.container.status.restarts")),), "line",
              f'metricset.name: state_container and kubernetes.namespace: "{namespace}"',
              split_by="kubernetes.container.name"),
    ]


@dataclass(frozen=True)
class Dashboard:
    id: str
    title: str
    description: str
    panels: list[Panel] = field(default_factory=list)


def dashboards(app_namespace: str) -> list[Dashboard]:
    return [
        Dashboard("aistack-service", "aistack: inference service",
                  "The backend: is it up, requests and errors, latency, batches, the prediction store.",
                  service_panels()),
        Dashboard("aistack-tf-serving", "aistack: TF Serving",
                  "The model server: replicas answering, model AVAILABLE, requests, latency, pod resources.",
                  tf_serving_panels(app_namespace)),
        Dashboard("aistack-gpu", "aistack: GPUs, nodes and cluster",
                  "DCGM: GPU utilisation, memory, temperature, power; node CPU and memory; deployments and "
                  "restarts from kube-state-metrics.",
                  gpu_panels(app_namespace)),
    ]


def _layout(panels: Sequence[Panel]) -> list[dict[str, int]]:
    """Grid positions on Kibana's 48-column grid: metrics 12 wide and 6 high, charts 24 by 12."""
    boxes, x, y, row = [], 0, 0, 0
    for panel in panels:
        w, h = (12, 6) if panel.kind == "metric" else (24, 12)
        if x + w > 48:
            x, y, row = 0, y + row, 0
        boxes.append({"x": x, "y": y, "w": w, "h": h})
        x, row = x + w, max(row, h)
    return boxes


def dashboard_object(board: Dashboard) -> dict[str, Any]:
    panels, references = [], []
    for index, (panel, box) in enumerate(zip(board.panels, _layout(board.panels), strict=True)):
        panel_index = alerts.stable_uuid(f"{board.id}-panel-{index}")
        attributes = lens_attributes(panel, f"{board.id}-{index}")
        panels.append({"version": PANEL_VERSION, "type": "lens", "panelIndex": panel_index,
                       "gridData": {**box, "i": panel_index}, "title": panel.title,
                       "embeddableConfig": {"attributes": attributes, "enhancements": {}}})
        references += [{**ref, "name": f"{panel_index}:{ref['name']}"} for ref in attributes["references"]]
    return {
        "type": "dashboard",
        "id": board.id,
        "attributes": {
            "title": board.title,
            "description": board.description,
            "panelsJSON": json.dumps(panels, sort_keys=True),
            "optionsJSON": json.dumps({"useMargins": True, "syncColors": False, "syncCursor": True,
                                       "syncTooltips": False, "hidePanelTitles": False}),
            "timeRestore": True,
            "timeFrom": "now-3h",
            "timeTo": "now",
            "refreshInterval": {"pause": False, "value": 30000},
            "kibanaSavedObjectMeta": {"searchSourceJSON": json.dumps({"query": {"query": "", "language": "kuery"},
                                                                      "filter": []})},
            "version": 1,
        },
        "references": references,
        "coreMigrationVersion": CORE_MIGRATION_VERSION,
        "typeMigrationVersion": TYPE_MIGRATION_VERSION["dashboard"],
    }


def data_view(object_id: str, title: str, name: str, time_field: str) -> dict[str, Any]:
    return {"type": "index-pattern", "id": object_id,
            "attributes": {"title": title, "name": name, "timeFieldName": time_field},
            "references": [],
            "coreMigrationVersion": CORE_MIGRATION_VERSION,
            "typeMigrationVersion": TYPE_MIGRATION_VERSION["index-pattern"]}


def saved_objects(app_namespace: str) -> list[dict[str, Any]]:
    return [
        data_view(DATA_VIEW_ID, mb.INDEX_PATTERN, "aistack metrics (Metricbeat)", mb.TIME_FIELD),
        data_view(ALERTS_DATA_VIEW_ID, ALERTS_INDEX, "aistack alerts (fired alerts)", "@timestamp"),
        *(dashboard_object(board) for board in dashboards(app_namespace)),
    ]


def ndjson(objects: Sequence[dict[str, Any]]) -> str:
    return "".join(json.dumps(o, sort_keys=True) + "\n" for o in objects)


# --- the setup Job's files ------------------------------------------------------------------------

SETUP_SCRIPT = """\
#!/bin/sh
# Imports aistack's Kibana saved objects, connectors and alerting rules (generated by
# components/kibana_objects.py). Running it again leaves the same objects: saved objects are
# imported with overwrite, connectors and rules have fixed ids and are updated when they exist.
set -eu
DIR="${SETUP_DIR:-/setup}"
KB="${KIBANA_URL:?KIBANA_URL is not set}"
: "${ELASTIC_PASSWORD:?ELASTIC_PASSWORD is not set}"
OUT="$(mktemp)"
trap 'rm -f "$OUT"' EXIT

# kb METHOD PATH [curl options...]: prints the HTTP status; the body is left in $OUT.
kb() {
  method=$1
  path=$2
  shift 2
  if [ -n "${KIBANA_CA:-}" ]; then
    set -- --cacert "$KIBANA_CA" "$@"
  fi
  curl --silent --show-error --max-time 60 --user "elastic:$ELASTIC_PASSWORD" \\
    --header 'kbn-xsrf: aistack-setup' --output "$OUT" --write-out '%{http_code}' \\
    --request "$method" "$@" "$KB$path"
}

fail() {
  echo "kibana-setup: $*" >&2
  cat "$OUT" >&2 || true
  echo >&2
  exit 1
}

tries=0
while :; do
  code=$(kb GET /api/status || true)
  case "$code" in
    200) break ;;
    401 | 403) fail "Kibana refused the elastic user's credentials ($code)" ;;
  esac
  tries=$((tries + 1))
  [ "$tries" -lt "${WAIT_TRIES:-90}" ] || fail "Kibana at $KB is not available (last answer: $code)"
  echo "kibana-setup: waiting for Kibana ($tries)"
  sleep "${WAIT_SECONDS:-10}"
done

code=$(kb POST '__IMPORT__' --form "file=@$DIR/__OBJECTS__")
[ "$code" = 200 ] || fail "saved objects import answered $code"
grep -q '"success":true' "$OUT" || fail "saved objects import reported errors"
echo "kibana-setup: saved objects imported"

# upsert API ID FILE_PREFIX: update the object when it exists, create it when it does not.
upsert() {
  api=$1
  id=$2
  prefix=$3
  code=$(kb GET "$api/$id")
  case "$code" in
    200) verb=PUT body="$prefix.update.json" ;;
    404) verb=POST body="$prefix.create.json" ;;
    *) fail "GET $api/$id answered $code" ;;
  esac
  code=$(kb "$verb" "$api/$id" --header 'Content-Type: application/json' --data-binary "@$body")
  [ "$code" = 200 ] || fail "$verb $api/$id answered $code"
  echo "kibana-setup: $verb $api/$id"
}

for kind in connector rule; do
  case "$kind" in
    connector) api='__CONNECTORS__' ;;
    rule) api='__RULES__' ;;
  esac
  for file in "$DIR/$kind".*.create.json; do
    [ -e "$file" ] || continue
    id=${file##*/"$kind".}
    id=${id%.create.json}
    upsert "$api" "$id" "${file%.create.json}"
  done
done
echo "kibana-setup: done"
"""


def setup_script() -> str:
    return (SETUP_SCRIPT.replace("__IMPORT__", IMPORT_API).replace("__OBJECTS__", SAVED_OBJECTS)
            .replace("__CONNECTORS__", CONNECTORS_API).replace("__RULES__", RULES_API))


def _json(body: dict[str, Any]) -> str:
    return json.dumps(body, indent=2, sort_keys=True) + "\n"


def rules(thresholds: alerts.AlertThresholds | None = None) -> list[alerts.KibanaRule]:
    """The alerting rules, over the Metricbeat data view, notifying both connectors."""
    return alerts.kibana_rules(DATA_VIEW_ID, NOTIFIERS, thresholds)


def setup_files(app_namespace: str, thresholds: alerts.AlertThresholds | None = None) -> dict[str, str]:
    """The setup ConfigMap's data: file name -> content."""
    files = {SCRIPT: setup_script(), SAVED_OBJECTS: ndjson(saved_objects(app_namespace))}
    for connector_id, body in CONNECTORS.items():
        files[f"connector.{connector_id}.create.json"] = _json(body)
        files[f"connector.{connector_id}.update.json"] = _json(
            {k: v for k, v in body.items() if k in CONNECTOR_UPDATE_FIELDS})
    for rule in rules(thresholds):
        files[f"rule.{rule.id}.create.json"] = _json(rule.create)
        files[f"rule.{rule.id}.update.json"] = _json(rule.update)
    return files


def digest(files: dict[str, str]) -> str:
    """A short digest of the setup files: the Job's name changes (and it runs again) when they do."""
    text = json.dumps(files, sort_keys=True).encode()
    return hashlib.sha256(text).hexdigest()[:10]


def dashboard_path(board: Dashboard) -> str:
    return f"/app/dashboards#/view/{board.id}"


def rule_path(rule_id: str) -> str:
    return f"/app/management/insightsAndAlerting/triggersActions/rule/{rule_id}"
