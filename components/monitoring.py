"""Prometheus + Grafana on the GPU host: scrape config, alert rules, probes, dashboards.

Everything here is generated as data (dicts dumped to YAML or JSON, deterministic text) and
delivered to the host inside the Compose file, so a change reaches the running VM: its one-shot
``config`` service writes the files under ``/opt/aistack`` and the containers mount them read-only
(:mod:`components.host_workload`). Scrape targets are the compose services of the host:

| job | target | what |
|---|---|---|
| ``inference`` | ``inference:8080/metrics`` | the service (requests, latency, batches, store) |
| ``triton`` | ``triton:8002/metrics`` | Triton (requests, queue/compute time, GPU) |
| ``node`` | ``node-exporter:9100`` | the VM (CPU, memory, disk, network) |
| ``dcgm`` | ``dcgm-exporter:9400`` | the GPU (utilisation, framebuffer memory, temperature, power) |
| ``triton-model-ready`` | ``blackbox-exporter:9115/probe`` | Triton's ``/v2/models/<model>/ready`` |
| ``prometheus`` | ``localhost:9090`` | Prometheus itself |

Alerts (Prometheus evaluates them; its UI and Grafana show them): service down, error ratio,
p99 latency, prediction store down, Triton down, Triton model not ready, GPU memory, GPU
utilisation, GPU metrics missing. They are declared once in :mod:`components.alerts`, which also
renders them as prod's Kibana rules.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi

from components.alerts import MODEL_READY_JOB, PREDICT_ROUTES, AlertThresholds, prometheus_rules
from components.base import StageComponent
from components.secrets import GeneratedSecret, GeneratedSecretArgs, random_password
from components.yamltext import dump_yaml

PROMETHEUS_UID = "prometheus"
SCRAPE_INTERVAL = "15s"
RULES_FILE = "rules/aistack.yml"

JOBS = {
    "inference": "inference:8080",
    "triton": "triton:8002",
    "node": "node-exporter:9100",
    "dcgm": "dcgm-exporter:9400",
    "prometheus": "localhost:9090",
}
BLACKBOX_TARGET = "blackbox-exporter:9115"
TRITON_HTTP = "http://triton:8000"


# --- Prometheus ------------------------------------------------------------------------------------

def prometheus_config(stage: str, triton_model: str) -> dict[str, Any]:
    scrape: list[dict[str, Any]] = [
        {"job_name": job, "static_configs": [{"targets": [target]}]} for job, target in JOBS.items()
    ]
    scrape.append({
        "job_name": MODEL_READY_JOB,
        "metrics_path": "/probe",
        "params": {"module": ["http_2xx"]},
        "static_configs": [{"targets": [f"{TRITON_HTTP}/v2/models/{triton_model}/ready"],
                            "labels": {"model": triton_model}}],
        "relabel_configs": [
            {"source_labels": ["__address__"], "target_label": "__param_target"},
            {"source_labels": ["__param_target"], "target_label": "instance"},
            {"target_label": "__address__", "replacement": BLACKBOX_TARGET},
        ],
    })
    return {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "evaluation_interval": SCRAPE_INTERVAL,
            "external_labels": {"project": "aistack", "stage": stage},
        },
        "rule_files": [RULES_FILE],
        "scrape_configs": scrape,
    }


def alert_rules(thresholds: AlertThresholds | None = None) -> dict[str, Any]:
    """The rule file, rendered from the alerts declared once in :mod:`components.alerts`."""
    return prometheus_rules(thresholds)


def alert_names(thresholds: AlertThresholds | None = None) -> list[str]:
    return [rule["alert"] for group in alert_rules(thresholds)["groups"] for rule in group["rules"]]


def blackbox_config() -> dict[str, Any]:
    return {"modules": {"http_2xx": {"prober": "http", "timeout": "5s",
                                     "http": {"valid_status_codes": [200], "method": "GET",
                                              "preferred_ip_protocol": "ip4"}}}}


# --- Grafana ----------------------------------------------------------------------------------------

def grafana_datasource() -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "datasources": [{
            "name": "Prometheus",
            "uid": PROMETHEUS_UID,
            "type": "prometheus",
            "access": "proxy",
            "url": "http://prometheus:9090",
            "isDefault": True,
            "editable": False,
            "jsonData": {"timeInterval": SCRAPE_INTERVAL},
        }],
    }


GRAFANA_DASHBOARDS_DIR = "/etc/grafana/dashboards"


def grafana_dashboard_provider() -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "providers": [{
            "name": "aistack",
            "folder": "aistack",
            "type": "file",
            "disableDeletion": True,
            "allowUiUpdates": False,
            "updateIntervalSeconds": 60,
            "options": {"path": GRAFANA_DASHBOARDS_DIR, "foldersFromFilesStructure": False},
        }],
    }


@dataclass(frozen=True)
class Panel:
    title: str
    #: (legend, PromQL) per series.
    queries: tuple[tuple[str, str], ...]
    unit: str = "short"
    kind: str = "timeseries"


def _panel(index: int, panel: Panel, grid: dict[str, int]) -> dict[str, Any]:
    """One panel; ``grid`` is the layout cursor (x, y, row height), advanced left to right."""
    width = 8 if panel.kind == "stat" else 12
    height = 5 if panel.kind == "stat" else 8
    if grid["x"] + width > 24:
        grid["x"], grid["y"], grid["h"] = 0, grid["y"] + grid["h"], 0
    position = {"h": height, "w": width, "x": grid["x"], "y": grid["y"]}
    grid["x"] += width
    grid["h"] = max(grid["h"], height)
    options: dict[str, Any] = (
        {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}
        if panel.kind == "timeseries"
        else {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}, "colorMode": "value"}
    )
    return {
        "id": index + 1,
        "type": panel.kind,
        "title": panel.title,
        "datasource": {"type": "prometheus", "uid": PROMETHEUS_UID},
        "gridPos": position,
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": options,
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": {"type": "prometheus", "uid": PROMETHEUS_UID},
             "expr": expr, "legendFormat": legend}
            for i, (legend, expr) in enumerate(panel.queries)
        ],
    }


def dashboard(uid: str, title: str, panels: list[Panel]) -> dict[str, Any]:
    grid = {"x": 0, "y": 0, "h": 0}
    return {
        "uid": uid,
        "title": title,
        "tags": ["aistack"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "templating": {"list": []},
        "annotations": {"list": []},
        "panels": [_panel(i, p, grid) for i, p in enumerate(panels)],
    }


_RI = "$__rate_interval"


def _service_panels() -> list[Panel]:
    predict = f'job="inference",route=~"{PREDICT_ROUTES}"'

    def quantile(q: str, metric: str, selector: str) -> str:
        return f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{selector}}}[{_RI}])))"

    return [
        Panel("Model ready", (("ready", 'min(model_ready{job="inference"})'),), "bool", "stat"),
        Panel("Prediction store up", (("{{store}}", 'min by (store) (prediction_store_up{job="inference"})'),),
              "bool", "stat"),
        Panel("Service up", (("up", 'up{job="inference"}'),), "bool", "stat"),
        Panel("Predict requests by status",
              (("{{status}}", f"sum by (status) (rate(http_requests_total{{{predict}}}[{_RI}]))"),), "reqps"),
        Panel("Predict error ratio (5xx)",
              (("5xx", f'sum(rate(http_requests_total{{{predict},status=~"5.."}}[{_RI}])) / '
                       f"sum(rate(http_requests_total{{{predict}}}[{_RI}]))"),), "percentunit"),
        Panel("Predict latency",
              tuple((f"p{q[2:]}", quantile(q, "http_request_duration_seconds", predict))
                    for q in ("0.50", "0.95", "0.99")), "s"),
        Panel("Rows predicted per second",
              (("{{model}}", f'sum by (model) (rate(predictions_total{{job="inference"}}[{_RI}]))'),), "short"),
        Panel("Backend time per batch (p99)",
              (("{{backend}}", "histogram_quantile(0.99, sum by (le, backend) "
                               f'(rate(inference_duration_seconds_bucket{{job="inference"}}[{_RI}])))'),), "s"),
        Panel("Rows per backend run",
              (("p50", quantile("0.5", "inference_batch_size", 'job="inference"')),
               ("p99", quantile("0.99", "inference_batch_size", 'job="inference"'))), "short"),
        Panel("Prediction store backlog",
              (("queued in memory", 'sum(prediction_store_queue_depth{job="inference"})'),
               ("spooled to disk", 'sum(prediction_store_spool_records{job="inference"})')), "short"),
    ]


def _triton_panels() -> list[Panel]:
    def per_request(metric: str) -> str:
        return (f'sum by (model) (rate({metric}{{job="triton"}}[{_RI}])) / '
                f'sum by (model) (rate(nv_inference_request_success{{job="triton"}}[{_RI}])) / 1000')

    return [
        Panel("Model ready (probe)", (("{{model}}", f'probe_success{{job="{MODEL_READY_JOB}"}}'),), "bool", "stat"),
        Panel("Triton up", (("up", 'up{job="triton"}'),), "bool", "stat"),
        Panel("Pending requests",
              (("{{model}}", 'sum by (model) (nv_inference_pending_request_count{job="triton"})'),), "short", "stat"),
        Panel("Inference requests",
              (("success {{model}}", f'sum by (model) (rate(nv_inference_request_success{{job="triton"}}[{_RI}]))'),
               ("failure {{model}}", f'sum by (model) (rate(nv_inference_request_failure{{job="triton"}}[{_RI}]))')),
              "reqps"),
        Panel("Time per request",
              (("total {{model}}", per_request("nv_inference_request_duration_us")),
               ("queue {{model}}", per_request("nv_inference_queue_duration_us")),
               ("compute {{model}}", per_request("nv_inference_compute_infer_duration_us"))), "ms"),
        Panel("Average batch size (inferences per execution)",
              (("{{model}}", f'sum by (model) (rate(nv_inference_count{{job="triton"}}[{_RI}])) / '
                             f'sum by (model) (rate(nv_inference_exec_count{{job="triton"}}[{_RI}]))'),), "short"),
        Panel("GPU utilisation (Triton)", (("gpu {{gpu_uuid}}", 'nv_gpu_utilization{job="triton"}'),), "percentunit"),
        Panel("GPU memory used (Triton)", (("gpu {{gpu_uuid}}", 'nv_gpu_memory_used_bytes{job="triton"}'),), "bytes"),
    ]


def _gpu_panels() -> list[Panel]:
    return [
        Panel("GPU utilisation", (("gpu {{gpu}}", 'DCGM_FI_DEV_GPU_UTIL{job="dcgm"}'),), "percent"),
        Panel("GPU memory in use",
              (("gpu {{gpu}}", 'DCGM_FI_DEV_FB_USED{job="dcgm"} / '
                               '(DCGM_FI_DEV_FB_USED{job="dcgm"} + DCGM_FI_DEV_FB_FREE{job="dcgm"})'),),
              "percentunit"),
        Panel("GPU temperature", (("gpu {{gpu}}", 'DCGM_FI_DEV_GPU_TEMP{job="dcgm"}'),), "celsius"),
        Panel("GPU power", (("gpu {{gpu}}", 'DCGM_FI_DEV_POWER_USAGE{job="dcgm"}'),), "watt"),
        Panel("Host CPU busy",
              (("cpu", f'1 - avg(rate(node_cpu_seconds_total{{job="node",mode="idle"}}[{_RI}]))'),), "percentunit"),
        Panel("Host memory in use",
              (("memory", '1 - node_memory_MemAvailable_bytes{job="node"} / node_memory_MemTotal_bytes{job="node"}'),),
              "percentunit"),
        Panel("Root disk in use",
              (("/", '1 - node_filesystem_avail_bytes{job="node",mountpoint="/"} / '
                     'node_filesystem_size_bytes{job="node",mountpoint="/"}'),), "percentunit"),
    ]


def dashboards() -> dict[str, dict[str, Any]]:
    """Dashboard file name -> Grafana dashboard model."""
    return {
        "service.json": dashboard("aistack-service", "aistack: inference service", _service_panels()),
        "triton.json": dashboard("aistack-triton", "aistack: Triton", _triton_panels()),
        "gpu.json": dashboard("aistack-gpu", "aistack: GPU and host", _gpu_panels()),
    }


def monitoring_files(stage: str, triton_model: str, thresholds: AlertThresholds | None = None) -> dict[str, str]:
    """Relative path (under the host's config directory) -> file content."""
    files = {
        "prometheus/prometheus.yml": dump_yaml(prometheus_config(stage, triton_model)),
        f"prometheus/{RULES_FILE}": dump_yaml(alert_rules(thresholds)),
        "blackbox/blackbox.yml": dump_yaml(blackbox_config()),
        "grafana/provisioning/datasources/prometheus.yml": dump_yaml(grafana_datasource()),
        "grafana/provisioning/dashboards/aistack.yml": dump_yaml(grafana_dashboard_provider()),
    }
    for name, model in dashboards().items():
        files[f"grafana/dashboards/{name}"] = json.dumps(model, indent=2, sort_keys=True) + "\n"
    return files


# --- Grafana's admin password ---------------------------------------------------------------------

GRAFANA_PASSWORD_ENTRY = "GF_SECURITY_ADMIN_PASSWORD"


@dataclass(frozen=True)
class GrafanaAdminArgs:
    folder_id: str
    #: Service account ids that may read the password (the host that runs Grafana).
    readers: Sequence[pulumi.Input[str]] = field(default_factory=list)


class GrafanaAdmin(StageComponent):
    """Grafana's admin password: generated, kept in Lockbox, read by the host at boot."""

    component = "monitoring"

    def __init__(self, name: str, args: GrafanaAdminArgs, labels: dict[str, str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("monitoring:GrafanaAdmin", name, labels, opts)
        store = GeneratedSecret(
            self.child_name("admin"),
            random_password(self.child_name("password"), self.child(), length=24),
            GeneratedSecretArgs(folder_id=args.folder_id, description="Grafana admin password (user admin)",
                                entry=GRAFANA_PASSWORD_ENTRY, readers=list(args.readers)),
            labels,
            opts=self.child(),
        )
        self.secret_id: pulumi.Output[str] = store.secret_id
        self.register_outputs({"secret_id": self.secret_id})
