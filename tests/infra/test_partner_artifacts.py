"""The partner stage's generated files, checked by the real tools.

promtool (config, rules, a unit test per alert), the blackbox exporter's config check, Grafana
dashboards parsed and their queries validated, ``docker-compose config -q`` on the compose file,
``cloud-init schema`` on the user-data, yamllint on all generated YAML, and the compose file's
``config`` service run for real, writing what each service mounts (the secrets' flow is in
``test_partner_secrets_flow.py``).
"""

from __future__ import annotations

import json
import re
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from components import monitoring
from components.host_workload import (
    SshUser,
    compose_document,
    compose_yaml,
    encode_files,
    fetch_script,
    gpu_host_user_data,
    write_files_script,
)
from components.runner import GitlabRunnerArgs, runner_user_data
from tests.infra.host_sim import (
    SHA,
    WORKLOAD,
    ContainerView,
    Mount,
    files_under,
    host_directory,
    mounts,
    normalized,
    run_python_service,
    tool,
)

DIGEST = WORKLOAD.inference_image.rsplit("@", 1)[1]  # the released image, by digest

USERS = [SshUser("ops", ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGV4YW1wbGU ops@example.com",))]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.fixture
def monitoring_dir(tmp_path: Path) -> Path:
    for relative, text in monitoring.monitoring_files("partner", "digits-mlp").items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


# --- Prometheus ------------------------------------------------------------------------------------

def test_prometheus_config_and_rules_pass_promtool(monitoring_dir):
    config = run(tool("promtool"), "check", "config", str(monitoring_dir / "prometheus/prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    assert "SUCCESS: 1 rule files found" in config.stdout
    rules = run(tool("promtool"), "check", "rules", str(monitoring_dir / "prometheus/rules/aistack.yml"))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(monitoring.alert_names())} rules found" in rules.stdout


def test_promtool_catches_a_broken_rule(tmp_path):
    broken = monitoring.alert_rules()
    broken["groups"][0]["rules"][0]["expr"] = "sum(rate(http_requests_total[5m]) >"
    (tmp_path / "bad.yml").write_text(yaml.safe_dump(broken))
    assert run(tool("promtool"), "check", "rules", str(tmp_path / "bad.yml")).returncode != 0


def _expand(template: str, labels: dict[str, str], value: str) -> str:
    text = re.sub(r"\{\{ \$value[^}]*\}\}", value, template)
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)


PREDICT = {"job": "inference", "instance": "inference:8080", "route": "/v1/predict", "method": "POST"}


def _series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    body = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{body}}}", "values": values}


#: alert -> (input series, eval time, labels of the firing alert, rendered $value, a silent case).
#: The silent case is the same alert evaluated on healthy series.
CASES: dict[str, dict[str, Any]] = {
    "InferenceServiceDown": {
        "series": [_series("up", {"job": "inference", "instance": "inference:8080"}, "1 1 0x10")],
        "at": "6m", "labels": {"job": "inference", "instance": "inference:8080"}, "value": "0",
        "silent": [_series("up", {"job": "inference", "instance": "inference:8080"}, "1x10")],
    },
    "InferenceErrorRatioHigh": {
        "series": [_series("http_requests_total", {**PREDICT, "status": "200"}, "0+90x20"),
                   _series("http_requests_total", {**PREDICT, "status": "503"}, "0+10x20")],
        "at": "15m", "labels": {}, "value": "10%",
        # 5xx on health checks do not count: only predict routes do.
        "silent": [_series("http_requests_total", {**PREDICT, "status": "200"}, "0+90x20"),
                   _series("http_requests_total", {**PREDICT, "route": "/readyz", "method": "GET",
                                                   "status": "503"}, "0+50x20")],
    },
    "InferenceLatencyP99High": {
        "series": [_series("http_request_duration_seconds_bucket", {**PREDICT, "le": le}, values)
                   for le, values in (("0.1", "0+0x30"), ("0.5", "0+0x30"), ("1", "0+10x30"), ("+Inf", "0+10x30"))],
        "at": "20m", "labels": {}, "value": "995ms",
        "silent": [_series("http_request_duration_seconds_bucket", {**PREDICT, "le": le}, values)
                   for le, values in (("0.1", "0+10x30"), ("0.5", "0+10x30"), ("1", "0+10x30"),
                                      ("+Inf", "0+10x30"))],
    },
    "PredictionStoreDown": {
        "series": [_series("prediction_store_up", {"job": "inference", "instance": "inference:8080",
                                                   "store": "postgres"}, "1 1 0x10")],
        "at": "9m", "labels": {"job": "inference", "instance": "inference:8080", "store": "postgres"}, "value": "0",
        "silent": [_series("prediction_store_up", {"job": "inference", "instance": "inference:8080",
                                                   "store": "postgres"}, "1 1 0 0 1x10")],
    },
    "TritonDown": {
        "series": [_series("up", {"job": "triton", "instance": "triton:8002"}, "1 0x10")],
        "at": "5m", "labels": {"job": "triton", "instance": "triton:8002"}, "value": "0",
        "silent": [_series("up", {"job": "triton", "instance": "triton:8002"}, "1x10")],
    },
    "TritonModelNotReady": {
        "series": [_series("probe_success", {"job": "triton-model-ready", "model": "digits-mlp",
                                             "instance": "http://triton:8000/v2/models/digits-mlp/ready"}, "1 0x10")],
        "at": "5m", "labels": {"job": "triton-model-ready", "model": "digits-mlp",
                               "instance": "http://triton:8000/v2/models/digits-mlp/ready"}, "value": "0",
        "silent": [_series("probe_success", {"job": "triton-model-ready", "model": "digits-mlp",
                                             "instance": "http://triton:8000/v2/models/digits-mlp/ready"}, "1x10")],
    },
    "GpuMemoryHigh": {
        "series": [_series("DCGM_FI_DEV_FB_USED", {"job": "dcgm", "gpu": "0", "modelName": "Tesla T4"}, "15000x20"),
                   _series("DCGM_FI_DEV_FB_FREE", {"job": "dcgm", "gpu": "0", "modelName": "Tesla T4"}, "360x20")],
        "at": "15m", "labels": {"gpu": "0"}, "value": "97.66%",
        "silent": [_series("DCGM_FI_DEV_FB_USED", {"job": "dcgm", "gpu": "0", "modelName": "Tesla T4"}, "8000x20"),
                   _series("DCGM_FI_DEV_FB_FREE", {"job": "dcgm", "gpu": "0", "modelName": "Tesla T4"}, "7360x20")],
    },
    "GpuUtilisationHigh": {
        "series": [_series("DCGM_FI_DEV_GPU_UTIL", {"job": "dcgm", "gpu": "0"}, "99x40")],
        "at": "30m", "labels": {"gpu": "0"}, "value": "99",
        "silent": [_series("DCGM_FI_DEV_GPU_UTIL", {"job": "dcgm", "gpu": "0"}, "80x40")],
    },
    "GpuMetricsMissing": {
        "series": [_series("up", {"job": "dcgm", "instance": "dcgm-exporter:9400"}, "1 0x10")],
        "at": "8m", "labels": {"job": "dcgm", "instance": "dcgm-exporter:9400"}, "value": "0",
        "silent": [_series("up", {"job": "dcgm", "instance": "dcgm-exporter:9400"}, "1x10")],
    },
}


def rule_tests() -> dict[str, Any]:
    rules = {r["alert"]: r for g in monitoring.alert_rules()["groups"] for r in g["rules"]}
    tests = []
    for name, case in CASES.items():
        rule = rules[name]
        labels = {**case["labels"], "severity": rule["labels"]["severity"]}
        annotations = {k: _expand(v, labels, case["value"]) for k, v in rule["annotations"].items()}
        tests.append({"interval": "1m", "input_series": case["series"], "alert_rule_test": [
            {"eval_time": case["at"], "alertname": name,
             "exp_alerts": [{"exp_labels": labels, "exp_annotations": annotations}]}]})
        tests.append({"interval": "1m", "input_series": case["silent"], "alert_rule_test": [
            {"eval_time": case["at"], "alertname": name, "exp_alerts": []}]})
    return {"rule_files": ["rules/aistack.yml"], "evaluation_interval": "1m", "tests": tests}


def test_every_alert_has_a_firing_and_a_silent_unit_test():
    assert set(CASES) == set(monitoring.alert_names())
    names = [t["alert_rule_test"][0]["alertname"] for t in rule_tests()["tests"]]
    assert all(names.count(n) == 2 for n in CASES)


def test_alert_rules_pass_their_unit_tests(monitoring_dir):
    tests = monitoring_dir / "prometheus/tests.yml"
    tests.write_text(yaml.safe_dump(rule_tests(), sort_keys=False))
    result = run(tool("promtool"), "test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_a_wrong_expectation_fails_the_unit_tests(monitoring_dir):
    document = rule_tests()
    document["tests"][0]["alert_rule_test"][0]["exp_alerts"] = []  # InferenceServiceDown does fire there
    tests = monitoring_dir / "prometheus/tests.yml"
    tests.write_text(yaml.safe_dump(document, sort_keys=False))
    result = run(tool("promtool"), "test", "rules", str(tests))
    assert result.returncode != 0 and "InferenceServiceDown" in result.stdout + result.stderr


def test_blackbox_config_passes_its_check(monitoring_dir, tmp_path):
    exporter = tool("prometheus-blackbox-exporter")
    good = run(exporter, "--config.check", f"--config.file={monitoring_dir / 'blackbox/blackbox.yml'}")
    assert good.returncode == 0, good.stderr
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump({"modules": {"http_2xx": {"prober": "http", "http": {"methd": "GET"}}}}))
    assert run(exporter, "--config.check", f"--config.file={bad}").returncode != 0


def test_scrape_targets_are_the_compose_services():
    config = monitoring.prometheus_config("partner", "digits-mlp")
    services = compose_document(WORKLOAD)["services"]
    default_ports = {"node-exporter": 9100, "dcgm-exporter": 9400, "blackbox-exporter": 9115}
    for job in config["scrape_configs"]:
        for target in job["static_configs"][0]["targets"]:
            if job["job_name"] == "triton-model-ready":
                assert target == "http://triton:8000/v2/models/digits-mlp/ready"
                continue
            host, _, port = target.partition(":")
            if host == "localhost":
                continue
            assert host in services, f"{job['job_name']} scrapes {host}, which is not a compose service"
            published = [p.split(":")[-1] for p in services[host].get("ports", [])]
            assert port in published or default_ports.get(host) == int(port)
    relabel = config["scrape_configs"][-1]["relabel_configs"][-1]
    assert relabel["replacement"].split(":")[0] in services


# --- Grafana ---------------------------------------------------------------------------------------

#: Metric names the exporters publish (Triton 24.x /metrics, dcgm-exporter 3.3 defaults, node_exporter,
#: blackbox_exporter, Prometheus' own ``up``).
EXPORTER_METRICS = {
    "up", "probe_success",
    "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
    "nv_inference_exec_count", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us", "nv_inference_pending_request_count", "nv_gpu_utilization",
    "nv_gpu_memory_used_bytes",
    "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_POWER_USAGE",
    "node_cpu_seconds_total", "node_memory_MemAvailable_bytes", "node_memory_MemTotal_bytes",
    "node_filesystem_avail_bytes", "node_filesystem_size_bytes",
}
_PROMQL_WORDS = {"sum", "avg", "min", "max", "count", "rate", "by", "without", "histogram_quantile",
                 "avg_over_time", "on", "ignoring", "bool", "and", "or", "unless"}


def service_metrics() -> set[str]:
    """Sample names the inference service exposes (from its own registry)."""
    from service.metrics import Metrics

    names: set[str] = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


def metric_names(expr: str) -> set[str]:
    text = re.sub(r"\{[^}]*\}", "", expr)           # label matchers
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)           # ranges
    text = re.sub(r'"[^"]*"', "", text)
    names = {m.group(0) for m in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text)
             if not text[m.end():].lstrip().startswith("(")}
    return names - _PROMQL_WORDS


def all_targets() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [(name, panel, target) for name, board in monitoring.dashboards().items()
            for panel in board["panels"] for target in panel["targets"]]


def test_dashboards_parse_and_point_at_the_provisioned_datasource(monitoring_dir):
    datasource = yaml.safe_load((monitoring_dir / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    boards = {p.name: json.loads(p.read_text()) for p in (monitoring_dir / "grafana/dashboards").glob("*.json")}
    assert set(boards) == {"service.json", "triton.json", "gpu.json"}
    assert len({b["uid"] for b in boards.values()}) == 3
    for name, board in boards.items():
        assert board["panels"], name
        cells: set[tuple[int, int]] = set()
        for panel in board["panels"]:
            assert panel["datasource"] == {"type": "prometheus", "uid": uid}
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
            box = panel["gridPos"]
            assert box["x"] + box["w"] <= 24
            area = {(x, y) for x in range(box["x"], box["x"] + box["w"]) for y in range(box["y"], box["y"] + box["h"])}
            assert not area & cells, f"{name}: panel {panel['title']!r} overlaps another"
            cells |= area
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def test_dashboard_queries_are_valid_promql(tmp_path):
    rules = [{"record": f"dashboard:query_{i}", "expr": target["expr"].replace("$__rate_interval", "5m")}
             for i, (_, _, target) in enumerate(all_targets())]
    (tmp_path / "queries.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = run(tool("promtool"), "check", "rules", str(tmp_path / "queries.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_dashboard_queries_use_metrics_that_exist():
    known = service_metrics() | EXPORTER_METRICS
    used: set[str] = set()
    for name, panel, target in all_targets():
        names = metric_names(target["expr"])
        assert names, f"{name}: {panel['title']}: no metric in {target['expr']!r}"
        unknown = names - known
        assert not unknown, f"{name}: {panel['title']}: unknown metrics {sorted(unknown)}"
        used |= names
    # Each dashboard covers its concern.
    assert {"http_requests_total", "http_request_duration_seconds_bucket", "model_ready"} <= used
    assert {"nv_inference_request_success", "nv_inference_queue_duration_us"} <= used
    assert {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED"} <= used


def test_metric_name_extraction():
    assert metric_names('sum by (le) (rate(http_request_duration_seconds_bucket{job="x",le="1"}[5m]))') == {
        "http_request_duration_seconds_bucket"}
    assert metric_names("1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes") == {
        "node_memory_MemAvailable_bytes", "node_memory_MemTotal_bytes"}


# --- Compose and cloud-init ------------------------------------------------------------------------

def test_compose_file_passes_docker_compose_config(tmp_path):
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(compose_yaml(WORKLOAD))
    result = run(tool("docker-compose"), "-f", str(compose), "config", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # Compose interpolates '$': the scripts and shell commands must reach the containers unchanged.
    services = normalized(compose_yaml(WORKLOAD), tmp_path)["services"]
    assert services["secrets"]["entrypoint"] == ["python", "-c", fetch_script()]
    assert services["config"]["entrypoint"] == ["python", "-c", write_files_script()]
    assert services["inference"]["environment"]["PG_DSN"] == compose_document(WORKLOAD)["services"]["inference"][
        "environment"]["PG_DSN"]
    assert services["migrate"]["entrypoint"][2].endswith('exec python -m service.migrate "$@"')
    assert "n=$((n + 1))" in services["grafana"]["entrypoint"][2]


def test_docker_compose_catches_a_broken_file(tmp_path):
    document = compose_document(WORKLOAD)
    document["services"]["triton"]["deploy"]["resources"]["reservations"]["devices"][0]["capability"] = ["gpu"]
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(yaml.safe_dump(document))
    assert run(tool("docker-compose"), "-f", str(compose), "config", "-q", cwd=tmp_path).returncode != 0


def test_compose_runs_what_the_stage_needs():
    services = compose_document(WORKLOAD)["services"]
    assert set(services) == {"config", "secrets", "triton", "inference", "prometheus", "grafana", "node-exporter",
                             "dcgm-exporter", "blackbox-exporter", "migrate"}
    for name, service in services.items():
        image = service["image"]
        assert not image.endswith(":latest") and (":" in image.rsplit("/", 1)[-1] or "@sha256:" in image), name
    assert services["inference"]["image"] == f"cr.yandex/crp0example/inference@{DIGEST}"
    assert services["triton"]["image"].startswith("nvcr.io/nvidia/tritonserver:") and \
        services["triton"]["image"].endswith("-py3")
    triton = services["triton"]["command"][-1]
    assert f"--model-repository={WORKLOAD.triton_repository_url}" in triton
    assert "--metrics-port=8002" in triton and "; set -a && . /run/secrets/triton/env && set +a && exec tritonserver " \
        in triton
    assert services["triton"]["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    env = services["inference"]["environment"]
    assert {k: env[k] for k in ("BACKEND", "TRITON_URL", "TRITON_PROTOCOL", "STORE", "PORT", "MODEL_SHA256")} == {
        "BACKEND": "triton", "TRITON_URL": "triton:8001", "TRITON_PROTOCOL": "grpc", "STORE": "postgres",
        "PORT": "8080", "MODEL_SHA256": SHA}
    assert env["PG_DSN"] == ("postgresql://inference@c-cluster1.rw.mdb.yandexcloud.net:6432/predictions"
                             "?sslmode=verify-full&sslrootcert=/run/secrets/inference/yandex-ca.pem")
    for secret in ("PG_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert secret not in env, "secrets come from Lockbox at boot, never from the compose file"
    wanted = json.loads(services["secrets"]["environment"]["AISTACK_SECRETS"])
    assert wanted["/run/secrets/inference"] == [["e6qstoragekey", "AWS_ACCESS_KEY_ID"],
                                                ["e6qstoragekey", "AWS_SECRET_ACCESS_KEY"],
                                                ["e6qdatabase", "PG_PASSWORD"]]
    assert wanted["/run/secrets/grafana"] == [["e6qgrafana", "GF_SECURITY_ADMIN_PASSWORD"]]
    assert "e6qdatabase" not in json.dumps(wanted["/run/secrets/triton"]), "Triton gets only the storage key"
    # secrets live on the host's tmpfs (/run), not in a Docker volume the one-shot writer's exit would unmount
    assert services["secrets"]["volumes"] == ["/run/aistack/secrets:/run/secrets"]
    for consumer in ("triton", "inference", "grafana"):
        assert f"/run/aistack/secrets/{consumer}:/run/secrets/{consumer}:ro" in services[consumer]["volumes"]
        assert services[consumer]["depends_on"]["secrets"] == {"condition": "service_healthy"}
    assert not any(v.get("driver_opts") for v in compose_document(WORKLOAD)["volumes"].values())
    grafana = services["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana/GF_SECURITY_ADMIN_PASSWORD"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana
    assert "ports" not in services["node-exporter"] and "ports" not in services["dcgm-exporter"]


def test_the_migrate_tool_never_starts_by_itself(tmp_path):
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(compose_yaml(WORKLOAD))
    plain = run(tool("docker-compose"), "-f", str(compose), "config", "--services", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert "migrate" not in plain.stdout.split() and "inference" in plain.stdout.split()
    tools = run(tool("docker-compose"), "-f", str(compose), "--profile", "tools", "config", "--services", cwd=tmp_path)
    assert "migrate" in tools.stdout.split()
    assert compose_document(WORKLOAD)["services"]["migrate"]["restart"] == "no"


def test_host_user_data_passes_cloud_init_schema(tmp_path):
    user_data = tmp_path / "user-data"
    user_data.write_text(gpu_host_user_data(USERS))
    result = run(tool("cloud-init"), "schema", "--config-file", str(user_data))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid schema" in result.stdout or "Valid cloud-config" in result.stdout


def test_cloud_init_schema_catches_a_broken_file(tmp_path):
    document = yaml.safe_load(gpu_host_user_data(USERS))
    document["users"][0]["ssh_authorized_keys"] = 42
    user_data = tmp_path / "user-data"
    user_data.write_text("#cloud-config\n" + yaml.safe_dump(document))
    assert run(tool("cloud-init"), "schema", "--config-file", str(user_data)).returncode != 0


def test_user_data_carries_only_the_ssh_users():
    """cloud-init runs once per instance: nothing that changes with a release may travel in user-data."""
    document = yaml.safe_load(gpu_host_user_data(USERS))
    assert set(document) == {"users", "ssh_pwauth", "disable_root"}
    assert document["users"][0]["ssh_authorized_keys"] == list(USERS[0].ssh_keys)
    assert document["ssh_pwauth"] is False


@pytest.fixture
def host_root() -> Iterator[Path]:
    with host_directory() as path:
        yield path


def _config_mounts(compose: dict[str, Any]) -> dict[str, list[Mount]]:
    """Service -> its read-only mounts of the configuration directory on the host (as the compose file says)."""
    root = compose["services"]["config"]["environment"]["AISTACK_FILES_ROOT"]
    writer = ContainerView(compose["services"]["config"], Path("/"))
    host_root_dir = str(writer.local(root))
    return {name: [m for m in mounts(service) if m.kind == "bind" and m.source.startswith(host_root_dir + "/")]
            for name, service in compose["services"].items() if name != "config"}


def test_the_config_service_writes_what_each_service_mounts(tmp_path, host_root):
    compose = normalized(compose_yaml(WORKLOAD), tmp_path)
    done = run_python_service(compose["services"]["config"], host_root)
    assert done.returncode == 0, done.stderr
    by_service = {name: found for name, found in _config_mounts(compose).items() if found}
    assert set(by_service) == {"prometheus", "grafana", "blackbox-exporter"}
    written = files_under(host_root)
    expected = monitoring.monitoring_files("partner", "digits-mlp")
    config_root = compose["services"]["config"]["environment"]["AISTACK_FILES_ROOT"].lstrip("/")
    assert {path: data.decode() for path, data in written.items() if path.startswith(config_root + "/")} == {
        f"{config_root}/{path}": text for path, text in expected.items()}
    mounted = [m for found in by_service.values() for m in found]
    assert all(m.read_only for m in mounted)
    for path in expected:
        assert any(f"/{config_root}/{path}".startswith(m.source + "/") for m in mounted), f"{path} is mounted nowhere"
    for m in mounted:
        assert any(f"/{config_root}/{path}".startswith(m.source + "/") for path in expected), f"{m.source} is empty"
    # Prometheus starts on the file its command names, through its own mount, and promtool accepts it there
    prometheus = ContainerView(compose["services"]["prometheus"], host_root)
    (config_flag,) = [a for a in compose["services"]["prometheus"]["command"] if a.startswith("--config.file=")]
    checked = run(tool("promtool"), "check", "config", str(prometheus.local(config_flag.split("=", 1)[1])))
    assert checked.returncode == 0 and "SUCCESS: 1 rule files found" in checked.stdout, checked.stdout + checked.stderr
    blackbox = ContainerView(compose["services"]["blackbox-exporter"], host_root)
    (blackbox_flag,) = compose["services"]["blackbox-exporter"]["command"]
    good = run(tool("prometheus-blackbox-exporter"), "--config.check",
               f"--config.file={blackbox.local(blackbox_flag.split('=', 1)[1])}")
    assert good.returncode == 0, good.stderr
    grafana = ContainerView(compose["services"]["grafana"], host_root)
    board = grafana.local(f"{monitoring.GRAFANA_DASHBOARDS_DIR}/gpu.json")
    assert json.loads(board.read_text())["uid"] == "aistack-gpu"


def test_the_config_service_hands_the_state_volumes_to_the_service_user(tmp_path, host_root):
    compose = normalized(compose_yaml(WORKLOAD), tmp_path)
    assert run_python_service(compose["services"]["config"], host_root).returncode == 0
    writer = ContainerView(compose["services"]["config"], host_root)
    inference = ContainerView(compose["services"]["inference"], host_root)
    migrate = ContainerView(compose["services"]["migrate"], host_root)
    spool = inference.local(compose["services"]["inference"]["environment"]["SPOOL_DIR"])
    checkpoints = migrate.local(compose["services"]["migrate"]["environment"]["MIGRATE_CHECKPOINT_DIR"])
    uid, gid = (int(part) for part in compose["services"]["inference"]["user"].split(":"))
    prepared = {writer.local(d) for d in json.loads(compose["services"]["config"]["environment"]["AISTACK_DIRS"])}
    assert prepared == {spool, checkpoints}
    for directory in (spool, checkpoints):
        info = directory.stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (uid, gid, 0o700), directory


def test_the_config_service_removes_files_a_release_dropped(tmp_path, host_root):
    compose = normalized(compose_yaml(WORKLOAD), tmp_path)
    assert run_python_service(compose["services"]["config"], host_root).returncode == 0
    grafana = ContainerView(compose["services"]["grafana"], host_root)
    old = grafana.local(f"{monitoring.GRAFANA_DASHBOARDS_DIR}/retired.json")
    old.write_text("{}")
    (old.parent / "nested").mkdir()
    (old.parent / "nested" / "x.json").write_text("{}")
    done = run_python_service(compose["services"]["config"], host_root)
    assert done.returncode == 0, done.stderr
    assert not old.exists() and not (old.parent / "nested").exists() and "removed" in done.stderr
    assert grafana.local(f"{monitoring.GRAFANA_DASHBOARDS_DIR}/gpu.json").is_file()


def test_the_config_service_refuses_a_broken_payload(tmp_path, host_root):
    compose = normalized(compose_yaml(WORKLOAD), tmp_path)
    service = dict(compose["services"]["config"])
    service["environment"] = {**service["environment"], "AISTACK_FILES": "not base64!"}
    done = run_python_service(service, host_root)
    assert done.returncode != 0 and "AISTACK_FILES is not base64 of zlib-compressed JSON" in done.stderr
    escape = dict(compose["services"]["config"])
    escape["environment"] = {**escape["environment"], "AISTACK_FILES": encode_files({"../etc/passwd": "x"})}
    done = run_python_service(escape, host_root)
    assert done.returncode != 0 and "'../etc/passwd' is not a plain relative path" in done.stderr
    assert files_under(host_root) == {}


def runner_args(**kw: Any) -> GitlabRunnerArgs:
    base: dict[str, Any] = {"folder_id": "f", "zone": "ru-central1-a", "subnet_id": "s", "security_group_ids": ["g"],
                            "runner_token": "glrt-not-in-user-data", "users": USERS}
    return GitlabRunnerArgs(**{**base, **kw})


def test_runner_user_data_passes_cloud_init_schema(tmp_path):
    text = runner_user_data(runner_args(), "e6qrunnertoken", "partner-runner")
    user_data = tmp_path / "user-data"
    user_data.write_text(text)
    result = run(tool("cloud-init"), "schema", "--config-file", str(user_data))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "glrt-" not in text, "the token reaches the VM through Lockbox only"
    document = yaml.safe_load(text)
    assert document["packages"] == ["docker.io"]
    commands = [" ".join(c) for c in document["runcmd"]]
    assert any("gitlab/gitlab-runner:v17.5.3 register --non-interactive --url https://gitlab.com --executor docker "
               "--docker-image alpine:3.20.3" in c for c in commands)
    assert any('"/run/aistack-runner": [["e6qrunnertoken", "CI_SERVER_TOKEN"]]' in c for c in commands)
    assert commands.index("rm -rf /run/aistack-runner") > next(i for i, c in enumerate(commands) if "register" in c)
    assert document["write_files"][0]["content"] == fetch_script()


def test_generated_yaml_passes_yamllint(tmp_path):
    files = {"compose.yml": compose_yaml(WORKLOAD), "user-data.yml": gpu_host_user_data(USERS),
             "runner.yml": runner_user_data(runner_args(), "e6qrunnertoken", "partner-runner"),
             **{k.replace("/", "_"): v for k, v in monitoring.monitoring_files("partner", "m").items()
                if k.endswith(".yml")}}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    config = "{extends: default, rules: {line-length: disable, document-start: disable, indentation: " \
             "{indent-sequences: whatever}, comments: disable, truthy: {check-keys: false}}}"
    result = run(tool("yamllint"), "-s", "-d", config, *sorted(str(tmp_path / n) for n in files))
    assert result.returncode == 0, result.stdout
    (tmp_path / "dup.yml").write_text("a: 1\na: 2\n")
    assert run(tool("yamllint"), "-d", config, str(tmp_path / "dup.yml")).returncode != 0


# --- limits on the generated files --------------------------------------------------------------------

def test_user_data_over_the_metadata_limit_is_refused():
    from components.base import ValidationError
    from components.host_workload import METADATA_VALUE_LIMIT, cloud_config

    assert len(gpu_host_user_data(USERS).encode()) < METADATA_VALUE_LIMIT / 2
    with pytest.raises(ValidationError, match=r"user-data is \d+ bytes: the instance metadata takes at most 262144 "
                                              r"bytes per key; shrink the generated files"):
        cloud_config(USERS, {"/opt/big": "x" * METADATA_VALUE_LIMIT})


def test_compose_file_over_the_metadata_limit_is_refused(monkeypatch):
    from components import host_workload
    from components.base import ValidationError

    assert len(compose_yaml(WORKLOAD).encode()) < host_workload.METADATA_VALUE_LIMIT / 4
    monkeypatch.setattr(host_workload, "fetch_script", lambda: "x = 1  # " + "y" * host_workload.METADATA_VALUE_LIMIT)
    with pytest.raises(ValidationError, match=r"the compose file is \d+ bytes: the instance metadata takes at most "
                                              r"262144 bytes per key"):
        compose_yaml(WORKLOAD)


@pytest.mark.parametrize("image", ["prom/prometheus", "prom/prometheus:latest", "grafana/grafana@sha256:abc",
                                   "localhost:5000/img"])
def test_unpinned_images_are_refused(image):
    from components.base import ValidationError
    from components.host_workload import check_pinned_image

    with pytest.raises(ValidationError, match="is not pinned: name a specific tag"):
        check_pinned_image(image)


@pytest.mark.parametrize("image", ["prom/prometheus:v2.53.2", "localhost:5000/img:1.0", f"cr.yandex/r/i@{DIGEST}",
                                   "nvcr.io/nvidia/k8s/dcgm-exporter:3.3.7-3.5.0-ubuntu22.04"])
def test_pinned_images_are_accepted(image):
    from components.host_workload import check_pinned_image

    check_pinned_image(image)


@pytest.mark.parametrize(("name", "keys", "message"), [
    ("root", ("ssh-ed25519 AAAA x",), "user name 'root' is invalid"),
    ("ops", (), "user 'ops' has no SSH key"),
    ("ops", ("AAAAC3Nza ops@example.com",), "is not an OpenSSH public key"),
])
def test_ssh_users_are_validated(name, keys, message):
    from components.base import ValidationError

    with pytest.raises(ValidationError, match=message):
        SshUser(name, keys)


def test_a_dsn_with_a_password_is_refused():
    import dataclasses

    from components.base import ValidationError

    with pytest.raises(ValidationError, match="PG_DSN must not carry a password"):
        dataclasses.replace(WORKLOAD, pg_dsn="postgresql://inference:hunter2@db:6432/predictions")
    assert dataclasses.replace(WORKLOAD, pg_dsn="postgresql://db:6432/predictions").pg_dsn.endswith("/predictions")


def test_the_inference_service_stops_within_compose_grace_and_fsyncs_records(tmp_path):
    """`docker compose stop` waits stop_grace_period before SIGKILL; the service plans its stop
    (SHUTDOWN_GRACE_SECONDS) within it, and answers only once records are on the spool volume."""
    compose = normalized(compose_yaml(WORKLOAD), tmp_path)
    inference = compose["services"]["inference"]
    env = inference["environment"]
    # normalized by `docker compose config`: a duration string such as "30s"
    assert str(inference["stop_grace_period"]).rstrip("s") == env["SHUTDOWN_GRACE_SECONDS"]
    assert env["STORE_DURABILITY"] == "wal"
    assert any(volume.get("target") == env["SPOOL_DIR"] and volume.get("type") == "volume"
               for volume in inference["volumes"]), inference["volumes"]
