"""prod's monitoring in Elastic: Metricbeat's targets, Kibana's dashboards and alerting rules, the setup Job.

- The alerts are declared once (components.alerts): partner's Prometheus rules and prod's Kibana
  rules are both rendered from them and carry the same names, severities, thresholds and durations;
  the Prometheus side goes through promtool here too (its unit tests are in test_partner_artifacts).
- Every metric a dashboard panel or a rule reads exists: in the service's registry (its real
  ``/metrics`` exposition, as Metricbeat parses it), in the DCGM exporter's default collectors file,
  in TF Serving's metric definitions, or in Metricbeat's documented fields; every label a panel or
  rule reads exists on one of the metrics it reads.
- Saved objects and rule bodies have the documented shapes; the setup Job's script, run twice
  against a local Kibana stand-in (tests/infra/kibana_fake.py) over TLS, leaves the same objects
  and is refused nothing.
- Metricbeat's autodiscover conditions match the pods the stack and deploy/ really run, and the
  Job's pod meets the restricted Pod Security level.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from components import alerts, kibana_objects, metricbeat, monitoring, tfserving
from components.elk import (
    KIBANA_SETUP_CONFIGMAP,
    KIBANA_SETUP_DIR,
    KUBE_STATE_METRICS,
    KUBE_STATE_METRICS_PORT,
    METRICBEAT_POD_LABELS,
    SERVICE_PORT,
    ElkArgs,
    elastic_user_secret,
    kibana_ca_secret,
    scrape_targets,
)
from components.gpu_operator import DCGM_EXPORTER_LABELS, GpuOperatorArgs, gpu_operator_values
from tests.infra.host_sim import tool
from tests.infra.kibana_fake import (
    CONNECTOR_TYPES,
    RULE_TYPES,
    FakeKibana,
    KibanaState,
    check_actions,
    check_rule_common,
    check_rule_params,
    kql_fields,
    self_signed,
)
from tests.infra.test_prod_manifests import (
    DEPLOY,
    OVERLAY,
    kustomization,
    objects_of,
    prod_config,
    render,
    restricted_violations,
    validate_strict,
)

NAMESPACE = "aistack"


# --- what exists: the service's registry and the exporters' documented metrics ------------------------------

@cache
def service_families() -> dict[str, tuple[str, frozenset[str]]]:
    """Family name -> (type, label names) of the service's ``/metrics``, as the exposition's TYPE lines
    name them (what Metricbeat's Prometheus parser reads)."""
    from service.metrics import Metrics

    m = Metrics()
    m.observe_request("/v1/predict", "POST", 200, 0.01)
    m.inference.labels("tfserving").observe(0.001)
    m.batch_rows.observe(3)
    m.batch_requests.observe(1)
    m.predictions.labels("digits", "1").inc()
    m.model_info.labels("digits", "1", "ab", "tfserving").set(1)
    m.model_ready.set(1)
    m.model_load_failures.labels("missing").inc()
    m.store_up.labels("clickhouse").set(1)
    m.store_written.labels("clickhouse").inc()
    m.store_errors.labels("clickhouse", "write").inc()
    text = m.render().decode()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    families: dict[str, tuple[str, frozenset[str]]] = {}
    for name, kind in types.items():
        names: set[str] = set()
        for sample, body in re.findall(r"^([A-Za-z_:][\w:]*)\{([^}]*)\}", text, re.M):
            if sample in (name, f"{name}_bucket", f"{name}_sum", f"{name}_count"):
                names |= {k for k in re.findall(r'(\w+)="', body) if k != "le"}
        families[name] = (kind, frozenset(names))
    return families


#: Metrics the exporters document: the GPU Operator's DCGM exporter (its default collectors file,
#: /etc/dcgm-exporter/dcp-metrics-included.csv, with the labels it adds), TF Serving's metric
#: definitions (tensorflow_serving/servables/tensorflow/util.cc, '/' becoming ':' in Prometheus
#: names), and the ``up`` gauge Metricbeat's Prometheus collector adds to every scrape.
_DCGM_LABELS = frozenset({"gpu", "UUID", "device", "modelName", "Hostname", "DCGM_FI_DRIVER_VERSION", "container",
                          "namespace", "pod"})
EXPORTER_FAMILIES: dict[str, tuple[str, frozenset[str]]] = {
    **{name: ("gauge", _DCGM_LABELS) for name in (
        "DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_MEM_CLOCK", "DCGM_FI_DEV_MEMORY_TEMP", "DCGM_FI_DEV_GPU_TEMP",
        "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_MEM_COPY_UTIL", "DCGM_FI_DEV_ENC_UTIL",
        "DCGM_FI_DEV_DEC_UTIL", "DCGM_FI_DEV_XID_ERRORS", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_FB_USED",
        "DCGM_FI_DEV_FB_RESERVED")},
    ":tensorflow:serving:request_count": ("counter", frozenset({"model_name", "status"})),
    ":tensorflow:serving:request_latency": ("histogram", frozenset({"model_name", "API", "entrypoint"})),
    ":tensorflow:serving:runtime_latency": ("histogram", frozenset({"model_name", "API", "runtime"})),
    "up": ("gauge", frozenset({"instance", "job"})),
}
#: Fields of Metricbeat's kubernetes module (exported fields: node, pod, state_deployment,
#: state_container) and of the events' metadata.
KUBERNETES_FIELDS = {
    "kubernetes.node.cpu.usage.nanocores", "kubernetes.node.memory.workingset.bytes",
    "kubernetes.pod.cpu.usage.nanocores", "kubernetes.pod.memory.working_set.bytes",
    "kubernetes.deployment.replicas.available", "kubernetes.container.status.restarts",
}
METADATA_FIELDS = {"kubernetes.pod.name", "kubernetes.namespace", "kubernetes.node.name",
                   "kubernetes.deployment.name", "kubernetes.container.name", "metricset.name",
                   metricbeat.TARGET_FIELD, "@timestamp"}
#: TF Serving's model status response (GetModelStatus over REST: model_version_status[].state).
MODEL_STATUS_FIELDS = {metricbeat.MODEL_STATE_FIELD}
_KIND_TYPE = {"value": "gauge", "counter": "counter", "rate": "counter", "histogram": "histogram"}


def families_of(target: str) -> dict[str, tuple[str, frozenset[str]]]:
    """The metric families a scrape target serves (plus Metricbeat's ``up``)."""
    up = {"up": EXPORTER_FAMILIES["up"]}
    if target == alerts.SERVICE.target:
        return {**service_families(), **up}
    prefix = {alerts.MODEL_SERVER.target: ":tensorflow:", alerts.GPU.target: "DCGM_"}[target]
    return {k: v for k, v in EXPORTER_FAMILIES.items() if k.startswith(prefix)} | up


def derived_fields() -> dict[str, str]:
    """Fields Metricbeat's processors copy from a Prometheus field: target field -> source field."""
    found = {}
    for target in scrape_targets(ElkArgs()):
        for processor in target.processors:
            for copied in processor.get("copy_fields", {}).get("fields", []):
                found[copied["to"]] = copied["from"]
    return found


def resolve(field: str) -> str:
    return derived_fields().get(field, field)


def check_reads(fields: set[str], target: str | None, where: str) -> set[str]:
    """Every field is known; every Prometheus metric exists with the kind the field implies; every label
    is a label of one of the metrics read. Returns the metric names read."""
    families = families_of(target) if target else {}
    metrics, labels = set(), set()
    for raw in fields:
        field = resolve(raw)
        parsed = metricbeat.prometheus_metric(field)
        if parsed:
            name, kind = parsed
            assert name in families, f"{where}: {field} reads {name}, which {target} does not serve"
            kind_found = families[name][0]
            assert kind_found == _KIND_TYPE[kind], f"{where}: {name} is a {kind_found}, not read as {kind}"
            metrics.add(name)
        elif field.startswith("prometheus.labels."):
            labels.add(field.removeprefix("prometheus.labels."))
        else:
            assert field in KUBERNETES_FIELDS | METADATA_FIELDS | MODEL_STATUS_FIELDS, f"{where}: unknown field {field}"
    offered = set().union(*(families[m][1] for m in metrics)) if metrics else set()
    assert labels <= offered, f"{where}: labels {sorted(labels - offered)} are on none of {sorted(metrics)}"
    return metrics


def target_of(query: str) -> str | None:
    match = re.search(rf'{re.escape(metricbeat.TARGET_FIELD)}: "([^"]+)"', query)
    return match.group(1) if match else None


# --- alerts declared once ----------------------------------------------------------------------------------

def test_partner_rules_are_the_shared_declarations_rendered():
    assert monitoring.alert_rules() == alerts.prometheus_rules()
    assert monitoring.alert_names() == alerts.alert_names("partner")
    # the declared jobs are partner's scrape jobs
    jobs = {s["job_name"] for s in monitoring.prometheus_config("partner", "m")["scrape_configs"]}
    assert {alerts.SERVICE.job, alerts.MODEL_SERVER.job, alerts.GPU.job, alerts.MODEL_READY_JOB} <= jobs


@pytest.mark.parametrize("thresholds", [alerts.AlertThresholds(),
                                        alerts.AlertThresholds(error_ratio=0.1, p99_latency_s=1.0,
                                                               gpu_memory_ratio=0.8, gpu_utilisation_percent=90)])
def test_both_renderings_carry_the_same_alerts(thresholds):
    prom = {r["alert"]: r for r in alerts.prometheus_rules(thresholds)["groups"][0]["rules"]}
    kibana = {r.create["name"]: r.create for r in kibana_objects.rules(thresholds)}
    assert len(prom) == len(kibana) == len(alerts.ALERTS)
    for alert in alerts.ALERTS:
        p, k = prom[alert.name_for("partner")], kibana[alert.name_for("prod")]
        assert p["labels"]["severity"] == alert.severity and alert.severity in k["tags"]
        assert p["for"] == f"{alert.for_minutes}m"
        assert k["alert_delay"] == {"active": alert.for_minutes} and k["schedule"] == {"interval": "1m"}
        value = alert.threshold_value(thresholds)
        if value is None:
            assert p["expr"].endswith("== 0")
            continue
        assert p["expr"].endswith(f"> {value:g}")
        criteria = k["params"].get("criteria")
        assert (criteria[0]["threshold"] if criteria else k["params"]["threshold"]) == [value]
    assert set(kibana) == set(alerts.alert_names("prod"))
    assert {"TfServingDown", "TfServingModelNotReady"} <= set(kibana)
    assert {"TritonDown", "TritonModelNotReady"} <= set(prom)


def test_prometheus_rendering_with_other_thresholds_passes_promtool(tmp_path):
    t = alerts.AlertThresholds(error_ratio=0.2, p99_latency_s=2.5, gpu_memory_ratio=0.75, gpu_utilisation_percent=80)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(alerts.prometheus_rules(t)))
    result = subprocess.run([tool("promtool"), "check", "rules", str(tmp_path / "rules.yml")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts.ALERTS)} rules found" in result.stdout


def test_predict_routes_are_the_same_for_promql_and_kql():
    from service import asgi

    served = {asgi._ROUTE_PREDICT, asgi._ROUTE_INFER, asgi._ROUTE_INFER_VERSION}
    assert set(alerts.PREDICT_ROUTE_TEMPLATES) == served
    pattern = re.compile(f"^(?:{alerts.PREDICT_ROUTES})$")
    assert all(pattern.match(route) for route in served)
    assert not any(pattern.match(r) for r in ("/metrics", "/readyz", "/v2/models/{name}/ready", "unparsed"))


def test_latency_threshold_on_a_bucket_boundary_is_p99_exactly():
    """p99 > t, with t a bucket boundary, is 'more than 1% of requests slower than t' on both sides."""
    from service.metrics import LATENCY_BUCKETS

    assert alerts.AlertThresholds().p99_latency_s in LATENCY_BUCKETS


# --- every metric read exists ------------------------------------------------------------------------------

def test_rules_read_metrics_that_exist():
    used = set()
    for rule in kibana_objects.rules():
        body, where = rule.create, rule.create["name"]
        params = body["params"]
        if body["rule_type_id"] == alerts.INDEX_THRESHOLD:
            query = params["filterKuery"]
            fields = kql_fields(query) | {params.get("aggField"), params.get("termField")} - {None}
        else:
            query = params["searchConfiguration"]["query"]["query"]
            fields = kql_fields(query) | {m["field"] for c in params["criteria"] for m in c["metrics"]}
            fields |= set(params.get("groupBy", []))
        target = target_of(query)
        assert target in {s.target for s in (alerts.SERVICE, alerts.MODEL_SERVER, alerts.GPU)}, where
        used |= check_reads({f for f in fields if f}, target, where)
    assert {"http_requests_total", "http_request_duration_seconds", "prediction_store_up", "up",
            "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_GPU_UTIL"} <= used


def test_dashboards_read_metrics_that_exist():
    used: dict[str, set[str]] = {}
    for board in kibana_objects.dashboards(NAMESPACE):
        used[board.id] = set()
        for panel in board.panels:
            fields = kibana_objects.fields_of(panel) | kql_fields(panel.query)
            fields |= {f for s in panel.series for a in kibana_objects.aggs(s.expr) if a.kql for f in kql_fields(a.kql)}
            used[board.id] |= check_reads(fields, target_of(panel.query), f"{board.title}: {panel.title}")
    # Each dashboard covers its concern.
    assert {"http_requests_total", "http_request_duration_seconds", "model_ready"} <= used["aistack-service"]
    assert {":tensorflow:serving:request_count", ":tensorflow:serving:request_latency"} <= used["aistack-tf-serving"]
    assert {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED"} <= used["aistack-gpu"]


def test_the_metric_check_catches_unknown_metrics_kinds_and_labels():
    with pytest.raises(AssertionError, match="does not serve"):
        check_reads({"prometheus.http_requests.rate"}, "inference", "x")  # the family is http_requests_total
    with pytest.raises(AssertionError, match="is a counter, not read as value"):
        check_reads({"prometheus.http_requests_total.value"}, "inference", "x")
    with pytest.raises(AssertionError, match="labels"):
        check_reads({"prometheus.model_ready.value", "prometheus.labels.status"}, "inference", "x")
    with pytest.raises(AssertionError, match="does not serve"):
        check_reads({"prometheus.DCGM_FI_DEV_GPU_UTILIZATION.value"}, "dcgm-exporter", "x")


def test_the_error_ratio_numerator_is_copied_from_5xx_series_only():
    (processor,) = [p["copy_fields"] for t in scrape_targets(ElkArgs()) if t.name == "inference"
                    for p in t.processors]
    assert processor["fields"] == [{"from": metricbeat.rate("http_requests_total"), "to": metricbeat.HTTP_5XX_RATE}]
    regex = re.compile(processor["when"]["regexp"][metricbeat.label("status")])
    assert [s for s in ("200", "404", "500", "503", "5xx", "50") if regex.search(s)] == ["500", "503"]
    # and the index template maps it as a number
    assert {"name": metricbeat.HTTP_5XX_RATE, "type": "double"} in \
        metricbeat.metricbeat_config([], "ksm:8080")["setup.template.append_fields"]


# --- Kibana shapes --------------------------------------------------------------------------------------------

def connectors() -> dict[str, dict[str, Any]]:
    return copy.deepcopy(kibana_objects.CONNECTORS)


def test_rule_bodies_have_the_documented_shapes():
    data_views = {kibana_objects.DATA_VIEW_ID}
    ids = set()
    for rule in kibana_objects.rules():
        body = rule.create
        assert set(body) <= {"name", "rule_type_id", "consumer", "enabled", "tags", "params", "schedule", "actions",
                             "alert_delay"}
        assert RULE_TYPES[body["rule_type_id"]]["license"] == "basic"
        check_rule_common(body)
        check_rule_params(body["rule_type_id"], body["params"], data_views)
        check_actions(body["rule_type_id"], body["actions"], connectors())
        assert set(rule.update) == set(body) - {"rule_type_id", "consumer", "enabled"}
        ids.add(rule.id)
    assert len(ids) == len(alerts.ALERTS)
    assert {CONNECTOR_TYPES[c["connector_type_id"]]["license"] for c in kibana_objects.CONNECTORS.values()} == {"basic"}


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda b: b["params"].update(aggType="median"), "invalid aggType"),
    (lambda b: b["params"].pop("aggField", None) or b["params"].update(aggType="max"), "aggField"),
    (lambda b: b["params"].update(filterKuery="aistack.target: (inference"), "Filter query is invalid"),
    (lambda b: b["params"].update(timeWindowUnit="w"), "timeWindowUnit"),
    (lambda b: b["actions"][0].update(group="default"), "invalid action group"),
    (lambda b: b["actions"][0].update(id="0e4fbb8f-0000-4000-8000-000000000000"), "not found"),
])
def test_the_shape_checks_catch_mistakes(mutate, message):
    rule = next(r.create for r in kibana_objects.rules() if r.create["name"] == "GpuUtilisationHigh")
    broken = copy.deepcopy(rule)
    mutate(broken)
    with pytest.raises(ValueError, match=message):
        check_rule_params(broken["rule_type_id"], broken["params"], {kibana_objects.DATA_VIEW_ID})
        check_actions(broken["rule_type_id"], broken["actions"], connectors())


def test_custom_threshold_checks_catch_mistakes():
    rule = next(r.create for r in kibana_objects.rules() if r.create["name"] == "InferenceErrorRatioHigh")
    for mutate, message in [
        (lambda p: p["criteria"][0]["metrics"][0].update(filter="x: 1"), "filter"),
        (lambda p: p["criteria"][0].update(equation="A / C"), "not a metric"),
        (lambda p: p["criteria"][0]["metrics"][0].update(aggType="p50"), "aggType"),
        (lambda p: p["searchConfiguration"].update(index="metricbeat-*"), "no data view"),
    ]:
        params = copy.deepcopy(rule["params"])
        mutate(params)
        with pytest.raises(ValueError, match=message):
            check_rule_params(rule["rule_type_id"], params, {kibana_objects.DATA_VIEW_ID})


def saved() -> list[dict[str, Any]]:
    return [json.loads(line) for line in kibana_objects.ndjson(kibana_objects.saved_objects(NAMESPACE)).splitlines()]


def test_saved_objects_are_ndjson_of_data_views_and_dashboards():
    objects = saved()
    assert [(o["type"], o["id"]) for o in objects] == [
        ("index-pattern", kibana_objects.DATA_VIEW_ID), ("index-pattern", kibana_objects.ALERTS_DATA_VIEW_ID),
        ("dashboard", "aistack-service"), ("dashboard", "aistack-tf-serving"), ("dashboard", "aistack-gpu")]
    views = {o["id"]: o["attributes"] for o in objects if o["type"] == "index-pattern"}
    assert views[kibana_objects.DATA_VIEW_ID]["title"] == metricbeat.INDEX_PATTERN
    assert views[kibana_objects.ALERTS_DATA_VIEW_ID]["title"] == kibana_objects.ALERTS_INDEX
    for board in (o for o in objects if o["type"] == "dashboard"):
        assert {r["id"] for r in board["references"]} == {kibana_objects.DATA_VIEW_ID}
        panels = json.loads(board["attributes"]["panelsJSON"])
        json.loads(board["attributes"]["optionsJSON"])
        json.loads(board["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
        cells: set[tuple[int, int]] = set()
        for panel in panels:
            assert panel["type"] == "lens" and panel["gridData"]["i"] == panel["panelIndex"]
            box = panel["gridData"]
            assert box["x"] + box["w"] <= 48
            area = {(x, y) for x in range(box["x"], box["x"] + box["w"]) for y in range(box["y"], box["y"] + box["h"])}
            assert not area & cells, f"{board['id']}: {panel['title']} overlaps another panel"
            cells |= area
            check_lens(panel["embeddableConfig"]["attributes"], panel["title"])


LENS_OPERATIONS = {"date_histogram", "terms", "average", "max", "min", "sum", "percentile", "unique_count",
                   "formula", "math"}


def math_leaves(node: Any, text: str, where: str) -> list[str]:
    """The column ids a tinymath AST reads; each function node's location is its text in the formula."""
    if isinstance(node, str):
        return [node]
    if not isinstance(node, dict):
        return []
    assert text[node["location"]["min"]:node["location"]["max"]] == node["text"], where
    return [leaf for arg in node["args"] for leaf in math_leaves(arg, text, where)]


def check_lens(attributes: dict[str, Any], where: str) -> None:
    """The by-value Lens state: every layer referenced, columns in order, accessors and references resolve."""
    state = attributes["state"]
    layers = state["datasourceStates"]["formBased"]["layers"]
    assert {r["name"] for r in attributes["references"]} == {f"indexpattern-datasource-layer-{k}" for k in layers}
    kql_fields(state["query"]["query"])
    for layer in layers.values():
        columns = layer["columns"]
        assert sorted(layer["columnOrder"]) == sorted(columns), where
        for column_id, column in columns.items():
            assert column["operationType"] in LENS_OPERATIONS, where
            for ref in column.get("references", []):
                assert ref in columns, f"{where}: {column_id} references a missing column"
            if column["operationType"] == "math":
                formula = next(c for c in columns.values() if column_id in c.get("references", []))
                leaves = math_leaves(column["params"]["tinymathAst"], formula["params"]["formula"], where)
                assert sorted(leaves) == sorted(column["references"]), where
            if "filter" in column:
                kql_fields(column["filter"]["query"])
    visualization = state["visualization"]
    accessors = [a for layer in visualization.get("layers", [visualization]) for a in
                 (layer.get("accessors") or [layer.get("metricAccessor")])]
    all_columns = {c for layer in layers.values() for c in layer["columns"]}
    assert accessors and set(accessors) <= all_columns, where


# --- the setup Job against a Kibana stand-in ------------------------------------------------------------------

def setup_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "setup"
    directory.mkdir()
    for name, text in kibana_objects.setup_files(NAMESPACE).items():
        (directory / name).write_text(text)
    return directory


def run_setup(directory: Path, kibana: FakeKibana, ca: Path | None, password: str = "elastic-password",
              **env: str) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": os.environ["PATH"], "KIBANA_URL": kibana.url, "ELASTIC_PASSWORD": password,
                   "SETUP_DIR": str(directory), "WAIT_SECONDS": "0", "WAIT_TRIES": "5",
                   **({"KIBANA_CA": str(ca)} if ca else {}), **env}
    return subprocess.run(["sh", str(directory / kibana_objects.SCRIPT)], capture_output=True, text=True,
                          env=environment, timeout=120)


@pytest.fixture
def tls(tmp_path: Path) -> tuple[Path, Path, Path]:
    return self_signed(tmp_path)


def test_setup_script_passes_shellcheck(tmp_path):
    script = setup_dir(tmp_path) / kibana_objects.SCRIPT
    result = subprocess.run([tool("shellcheck"), "-s", "sh", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_the_setup_job_is_idempotent(tmp_path, tls):
    ca, cert, key = tls
    directory = setup_dir(tmp_path)
    state = KibanaState(unavailable=2)
    with FakeKibana(state, cert, key) as kibana:
        first = run_setup(directory, kibana, ca)
        assert first.returncode == 0, first.stdout + first.stderr
        after_first = state.snapshot()
        writes_first = [(m, p) for m, p, _ in state.requests if m != "GET"]
        state.requests.clear()
        second = run_setup(directory, kibana, ca)
        assert second.returncode == 0, second.stdout + second.stderr
        writes_second = [(m, p) for m, p, _ in state.requests if m != "GET"]
    assert state.refused == []
    assert state.snapshot() == after_first, "a second run leaves the same objects"
    rules = kibana_objects.rules()
    assert len(state.rules) == len(rules) and len(state.connectors) == len(kibana_objects.CONNECTORS)
    assert len(state.saved_objects) == len(saved())
    # first run: import, then create; second: import (overwrite), then update the same ids
    creates = [p for m, p in writes_first if m == "POST" and not p.startswith("/api/saved_objects")]
    updates = [p for m, p in writes_second if m == "PUT"]
    assert sorted(creates) == sorted(updates) and len(updates) == len(rules) + len(kibana_objects.CONNECTORS)
    assert not [p for m, p in writes_second if m == "POST" and not p.startswith("/api/saved_objects")]
    assert writes_first[0] == writes_second[0] == ("POST", kibana_objects.IMPORT_API)
    # connectors exist before the rules that notify them
    first_rule = next(i for i, (_, p) in enumerate(writes_first) if p.startswith(kibana_objects.RULES_API))
    assert all(p.startswith(kibana_objects.CONNECTORS_API) for _, p in writes_first[1:first_rule])
    for rule in rules:
        stored = state.rules[rule.id]
        assert stored["rule_type_id"] == rule.create["rule_type_id"] and stored["params"] == rule.create["params"]


def test_the_setup_job_fails_loudly(tmp_path, tls):
    ca, cert, key = tls
    directory = setup_dir(tmp_path)
    with FakeKibana(KibanaState(), cert, key) as kibana:
        wrong = run_setup(directory, kibana, ca, password="not-it")
        assert wrong.returncode != 0 and "refused the elastic user's credentials (401)" in wrong.stderr
        untrusted = run_setup(directory, kibana, None)
        assert untrusted.returncode != 0, "the server's certificate is verified against Kibana's CA"
    with FakeKibana(KibanaState(unavailable=100), cert, key) as kibana:
        waiting = run_setup(directory, kibana, ca)
        assert waiting.returncode != 0 and "is not available" in waiting.stderr
    rule = next(p for p in directory.glob("rule.*.create.json"))
    body = json.loads(rule.read_text())
    body["params"]["timeWindowUnit"] = "w"
    body["params"].setdefault("criteria", [{}])[0]["timeUnit"] = 5  # whichever type it is, now invalid
    rule.write_text(json.dumps(body))
    state = KibanaState()
    with FakeKibana(state, cert, key) as kibana:
        broken = run_setup(directory, kibana, ca)
    assert broken.returncode != 0 and "answered 400" in broken.stderr
    assert state.refused, "the stand-in refuses what Kibana would refuse"


def test_the_stand_in_refuses_other_paths(tls):
    ca, cert, key = tls
    state = KibanaState()
    with FakeKibana(state, cert, key) as kibana:
        def curl(method: str, path: str) -> str:
            return subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(ca),
                                   "-u", "elastic:elastic-password", "-H", "kbn-xsrf: t", "-X", method,
                                   kibana.url + path], capture_output=True, text=True, timeout=30).stdout
        assert curl("GET", "/api/alerting/rules/_find") == "404"
        assert curl("DELETE", f"{kibana_objects.RULES_API}/{alerts.stable_uuid('x')}") == "405"
        assert curl("GET", f"{kibana_objects.RULES_API}/not-a-uuid") == "400"
        assert curl("POST", "/api/saved_objects/_import") == "400"  # without overwrite=true
    assert len(state.refused) == 4


# --- Metricbeat against what the stack runs ------------------------------------------------------------------

def condition_matches(condition: dict[str, Any], namespace: str, labels: dict[str, str]) -> bool:
    event = {"kubernetes.namespace": namespace, **{f"kubernetes.labels.{k}": v for k, v in labels.items()}}
    return all(event.get(key) == value for clause in condition["and"] for key, value in clause["equals"].items())


def metricbeat_beat() -> dict[str, Any]:
    (beat,) = [b for b in objects_of({"Beat"}) if b["metadata"]["name"] == "metricbeat"]
    return beat


def templates() -> dict[str, dict[str, Any]]:
    node, _ = metricbeat_beat()["spec"]["config"]["metricbeat.autodiscover"]["providers"]
    return {t["config"][0]["fields"][metricbeat.TARGET_FIELD]: t for t in node["templates"]}


def test_autodiscover_finds_the_pods_the_stack_and_deploy_run():
    found = templates()
    assert set(found) == {alerts.SERVICE.target, alerts.MODEL_SERVER.target, alerts.GPU.target}
    # the service, as ArgoCD deploys it
    deployment = next(d for d in render(OVERLAY) if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]
    (port,) = pod["spec"]["containers"][0]["ports"]
    service = found[alerts.SERVICE.target]
    assert condition_matches(service["condition"], kustomization(OVERLAY)["namespace"], pod["metadata"]["labels"])
    assert service["config"][0]["hosts"] == [f"${{data.host}}:{port['containerPort']}"] == [
        f"${{data.host}}:{SERVICE_PORT}"]
    assert service["config"][0]["metrics_path"] == "/metrics"
    # TF Serving, as the stack deploys it
    (tf,) = [d for d in objects_of({"Deployment"}) if d["metadata"]["name"] == tfserving.NAME]
    tf_serving = found[alerts.MODEL_SERVER.target]
    assert condition_matches(tf_serving["condition"], tf["metadata"]["namespace"], tf["spec"]["template"]["metadata"]
                             ["labels"])
    collector, status = tf_serving["config"]
    assert collector["metrics_path"] == tfserving.METRICS_PATH
    assert collector["hosts"] == status["hosts"] == [f"${{data.host}}:{tfserving.REST_PORT}"]
    assert status["path"] == tfserving.status_path(prod_config().model.name)
    # nothing else matches: the backend's template does not match TF Serving's pods and so on
    assert not condition_matches(service["condition"], NAMESPACE, tf["spec"]["template"]["metadata"]["labels"])
    assert condition_matches(found[alerts.GPU.target]["condition"], "gpu-operator", DCGM_EXPORTER_LABELS)
    for template in found.values():
        assert all(m["fields_under_root"] for m in template["config"])


def test_tf_serving_serves_prometheus_metrics_from_its_monitoring_config():
    (tf,) = [d for d in objects_of({"Deployment"}) if d["metadata"]["name"] == tfserving.NAME]
    (container,) = tf["spec"]["template"]["spec"]["containers"]
    flag = next(a for a in container["args"] if a.startswith("--monitoring_config_file="))
    path = Path(flag.split("=", 1)[1])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent))
    volume = next(v for v in tf["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    (configmap,) = [c for c in objects_of({"ConfigMap"}) if c["metadata"]["name"] == volume["configMap"]["name"]]
    text = configmap["data"][path.name]
    assert re.fullmatch(r'prometheus_config \{\n  enable: true,\n  path: "([^"]+)"\n\}\n', text)
    assert f'path: "{tfserving.METRICS_PATH}"' in text


def test_cluster_state_comes_from_the_pinned_kube_state_metrics_on_the_leader_only():
    config = metricbeat_beat()["spec"]["config"]
    _, cluster = config["metricbeat.autodiscover"]["providers"]
    assert cluster["unique"] is True and cluster["scope"] == "cluster" and cluster["leader_lease"]
    state, events = cluster["templates"][0]["config"]
    namespace = metricbeat_beat()["metadata"]["namespace"]
    assert state["hosts"] == [f"{KUBE_STATE_METRICS}.{namespace}.svc:{KUBE_STATE_METRICS_PORT}"]
    assert all(m.startswith("state_") for m in state["metricsets"]) and events["metricsets"] == ["event"]
    (role,) = [r for r in objects_of({"Role"}) if r["metadata"]["namespace"] == namespace]
    assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                              "verbs": ["get", "create", "update"]}]
    (cluster_role,) = [r for r in objects_of({"ClusterRole"}) if r["metadata"]["name"] == "aistack-metricbeat"]
    assert {"apiGroups": [""], "resources": ["nodes/stats"], "verbs": ["get"]} in cluster_role["rules"]
    kubelet = config["metricbeat.modules"][0]
    assert kubelet["hosts"] == ["https://${NODE_IP}:10250"] and kubelet["metricsets"][:2] == ["node", "system"]


def test_gpu_operator_runs_the_dcgm_exporter():
    values = gpu_operator_values(GpuOperatorArgs(k8s_version="1.33"))
    assert values["dcgmExporter"]["enabled"] is True


# --- the setup Job -------------------------------------------------------------------------------------------

def test_the_setup_job_runs_restricted_with_ecks_secrets_and_the_generated_files():
    (job,) = objects_of({"Job"})
    cfg = prod_config()
    assert re.fullmatch(r"kibana-setup-[0-9a-f]{10}", job["metadata"]["name"])
    pod = job["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    (container,) = pod["containers"]
    assert container["image"] == f"docker.elastic.co/kibana/kibana:{cfg.elk.stack_version}"
    assert container["command"] == ["/bin/sh", f"{KIBANA_SETUP_DIR}/{kibana_objects.SCRIPT}"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["ELASTIC_PASSWORD"] == {"secretKeyRef": {"name": elastic_user_secret(), "key": "elastic"}}
    assert env["KIBANA_URL"] == "https://logs-kb-http.logging.svc:5601"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["kibana-ca"]["secret"]["secretName"] == kibana_ca_secret()
    assert env["KIBANA_CA"].endswith("/" + volumes["kibana-ca"]["secret"]["items"][0]["path"])
    (configmap,) = [c for c in objects_of({"ConfigMap"}) if c["metadata"]["name"] == KIBANA_SETUP_CONFIGMAP]
    assert volumes["setup"]["configMap"]["name"] == KIBANA_SETUP_CONFIGMAP
    assert configmap["data"] == kibana_objects.setup_files(cfg.gitops.namespace)
    assert job["metadata"]["name"].endswith(kibana_objects.digest(configmap["data"]))
    assert len(json.dumps(configmap["data"])) < 1_000_000, "a ConfigMap holds at most 1 MiB"
    validate_strict(job, cfg.kubernetes.version)


def test_the_job_name_changes_with_what_it_imports():
    files = kibana_objects.setup_files(NAMESPACE)
    other = kibana_objects.setup_files(NAMESPACE, alerts.AlertThresholds(error_ratio=0.2))
    assert kibana_objects.digest(files) != kibana_objects.digest(other)
    assert kibana_objects.digest(files) == kibana_objects.digest(kibana_objects.setup_files(NAMESPACE))


def test_metricbeat_pods_carry_the_labels_the_network_policies_admit():
    labels = metricbeat_beat()["spec"]["daemonSet"]["podTemplate"]["metadata"]["labels"]
    assert labels == METRICBEAT_POD_LABELS
    base = yaml.safe_load((DEPLOY / "base" / "networkpolicy.yaml").read_text())
    peers = base["spec"]["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name":
                                                  metricbeat_beat()["metadata"]["namespace"]}},
            "podSelector": {"matchLabels": labels}} in peers
