"""The prod program as a whole: config errors, labels, least privilege, secrets, pinned charts, wiring, outputs."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stacks.config import ConfigError, ProdConfig, load_stage_config
from stagectl import plan as plan_module
from stagectl.plan import PlannedResource
from tests.infra.conftest import ROOT, Recorded, stack_config
from tests.infra.test_mvp_stack import REQUIRED_LABELS, labelled_field

PASSWORD = "Generated-ClickHouse-0123456789xy"
ACCESS_KEY = "YCAJE-access-key-id-plain"
SECRET_KEY = "YCM-secret-access-key-PLAINTEXT"
REPO_TOKEN = "glpat-REPO-token-PLAINTEXT"
OUTPUTS = {"ingress_address", "service_url", "argocd_url", "kibana_url", "kibana_dashboards", "kibana_alerts",
           "tf_serving_url", "tf_model_base_path",
           "tf_model_source",
           "clickhouse_host", "clickhouse_port", "clickhouse_database", "clickhouse_user", "cluster_id", "kubeconfig",
           "bucket_name", "registry_id", "image_repository", "model_uri"}
SEMVER = re.compile(r"^v?\d+\.\d+\.\d+$")


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, str]:
    payload = b"a model file for the prod stage"
    (tmp_path / "model.onnx").write_bytes(payload)
    (tmp_path / "card.json").write_text('{"name": "digits"}')
    saved_model = tmp_path / "tf" / "1"
    (saved_model / "variables").mkdir(parents=True)
    (saved_model / "saved_model.pb").write_bytes(b"graph")
    (saved_model / "variables" / "variables.index").write_bytes(b"index")
    return tmp_path, hashlib.sha256(payload).hexdigest()


def config_for(model: tuple[Path, str], **overrides: Any) -> dict[str, str]:
    directory, sha = model
    release = json.loads(stack_config("prod")["aistack:release"])
    config = stack_config("prod", model={"name": "digits", "dir": str(directory)},
                          release={**release, "modelSha256": sha})
    for key, value in overrides.items():
        full = key if ":" in key else f"aistack:{key}"
        if isinstance(value, dict) and full in config:
            merged = json.loads(config[full])
            for name, item in value.items():
                merged[name] = {**merged[name], **item} if isinstance(item, dict) and name in merged else item
            value = merged
        config[full] = value if isinstance(value, str) else json.dumps(value)
    return config


@pytest.fixture
def known_secrets(monkeypatch):
    """The mocks answer with the values the providers would compute: a password and a static key."""
    original = plan_module._Mocks.new_resource

    def new_resource(self, args):
        rid, state = original(self, args)
        if args.typ == "random:index/randomPassword:RandomPassword":
            state = {**state, "result": PASSWORD}
        if args.typ == "yandex:index/iamServiceAccountStaticAccessKey:IamServiceAccountStaticAccessKey":
            state = {**state, "accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}
        return rid, state

    monkeypatch.setattr(plan_module._Mocks, "new_resource", new_resource)


def named(rec: Recorded, kind: str, name: str) -> dict[str, Any]:
    found: PlannedResource = next(r for r in rec.of_type(kind) if r.name == name)
    return found.inputs


# --- configuration ----------------------------------------------------------------------------------

def test_repository_config_loads():
    cfg = load_stage_config("prod", stack_config("prod"))
    assert isinstance(cfg, ProdConfig)
    assert cfg.kubernetes.version == "1.33" and cfg.kubernetes.master == "zonal"
    assert cfg.kubernetes.auto_upgrade is True and cfg.clickhouse.coordination == "none"
    assert (cfg.kubernetes.gpu_nodes.platform, cfg.kubernetes.gpu_nodes.cores) == ("standard-v3-t4", 8)
    assert cfg.clickhouse.deletion_protection is True
    assert cfg.network.api_allowlist == ["203.0.113.0/24", "198.51.100.10/32"]
    assert cfg.bucket_name == "aistack-prod-b1gexamplefolder0prd"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"kubernetes": {"gpuNodes": {"cores": 6, "memoryGb": 24}}},
     "aistack:kubernetes.gpuNodes: standard-v3-t4 (NVIDIA T4 16 GB) does not offer 1 GPU / 6 vCPU / 24 GB"),
    ({"kubernetes": {"gpuNodes": {"platform": "standard-v3-t4i"}}},
     "aistack:kubernetes: standard-v3-t4i (NVIDIA T4i 24 GB) runs only in ru-central1-d, not in ru-central1-a"),
    ({"kubernetes": {"master": "regional"}, "network": {"subnets": {"ru-central1-a": "10.140.0.0/24",
                                                                    "ru-central1-b": "10.140.1.0/24"}}},
     "aistack:kubernetes: a regional master needs subnets in three zones, got 2"),
    ({"network": {"apiAllowlist": ["0.0.0.0/0"]}},
     "aistack:network.apiAllowlist: the Kubernetes API allowlist contains 0.0.0.0/0: the master must not be open to "
     "the world"),
    ({"network": {"apiAllowlist": []}}, "aistack:network.apiAllowlist: List should have at least 1 item"),
    ({"network": {"subnets": {"ru-central1-b": "10.140.1.0/24"}}},
     "aistack:network: yandex:zone ru-central1-a has no subnet in network.subnets (ru-central1-b)"),
    ({"kubernetes": {"version": "1.27"}}, "aistack:kubernetes.version: Input should be '1.30', '1.31', '1.32', "
                                          "'1.33' or '1.34'"),
    ({"kubernetes": {"version": "1.34"}}, "aistack:kubernetes: Kubernetes 1.34 is not offered on the STABLE release "
                                          "channel"),
    ({"kubernetes": {"serviceIpv4Range": "10.0.0.0/10"}},
     "aistack:kubernetes: service CIDR 10.0.0.0/10 is invalid: use a private range between /12 and /20"),
    ({"kubernetes": {"cpuNodes": {"min": 0}}},
     "aistack:kubernetes.cpuNodes.min: Input should be greater than or equal to 1"),
    ({"kubernetes": {"cpuNodes": {"cores": 3}}}, "aistack:kubernetes.cpuNodes: CPU node cores 3 is invalid"),
    ({"charts": {"argocd": "^7.7"}}, "aistack:charts.argocd: chart argocd version '^7.7' is not pinned"),
    ({"charts": {"gpuOperator": "v24.6.2"}},
     "aistack:gpuOperator: driverless GPU nodes need the GPU Operator v24.9.2 or newer (chart version v24.6.2)"),
    ({"gpuOperator": {"driverVersion": "535.183.01"}},
     "aistack:gpuOperator: NVIDIA driver 535.183.01 is too old for Kubernetes 1.33: driverless nodes on Kubernetes "
     "1.30 or newer need driver 550.144.03 or newer"),
    ({"tfServing": {"maxReplicas": 3}},
     "aistack:tfServing: maxReplicas 3 exceeds the GPUs of the GPU node group (kubernetes.gpuNodes.max x gpus = 2)"),
    ({"tfServing": {"image": "tensorflow/serving:latest-gpu"}},
     "aistack:tfServing.image: TF Serving image 'tensorflow/serving:latest-gpu' is not pinned to a release"),
    ({"tfServing": {"image": "tensorflow/serving:2.18.0"}},
     "aistack:tfServing.image: TF Serving image 'tensorflow/serving:2.18.0' is not a GPU build"),
    ({"tfServing": {"image": "tensorflow/serving"}},
     "aistack:tfServing.image: image 'tensorflow/serving' is not pinned"),
    ({"clickhouse": {"resourcePreset": "s9.giant"}},
     "aistack:clickhouse.resourcePreset: resource preset 's9.giant' is not a Managed ClickHouse host class"),
    ({"clickhouse": {"version": "24.3"}}, "aistack:clickhouse.version: Input should be '24.8', '25.3', '25.8', "
                                          "'25.9' or '25.10'"),
    ({"clickhouse": {"replicas": 2}}, "aistack:clickhouse: 2 replicas per shard need a coordination service, and "
                                      "coordination is 'none'"),
    ({"clickhouse": {"diskType": "local-ssd", "diskSizeGb": 368}},
     "aistack:clickhouse: local-ssd is not replicated by the cloud"),
    ({"elk": {"elasticsearchNodes": 2}}, "aistack:elk.elasticsearchNodes: Input should be 1, 3 or 5"),
    ({"gitops": {"repoUrl": "gitlab.com/x"}}, "aistack:gitops.repoUrl: String should match pattern"),
    ({"kubernetes": {"gpuNodes": {"memoryGB": 32}}},
     "aistack:kubernetes.gpuNodes.memoryGB: is not a known setting (misspelled?); known keys here: cores, diskSizeGb"),
])
def test_invalid_config_names_key_and_rule(overrides, message):
    config = stack_config("prod")
    for key, value in overrides.items():
        full = key if ":" in key else f"aistack:{key}"
        if isinstance(value, dict) and full in config:
            merged = json.loads(config[full])
            for name, item in value.items():
                merged[name] = {**merged[name], **item} if isinstance(item, dict) and isinstance(
                    merged.get(name), dict) and name != "subnets" else item
            value = merged
        config[full] = value if isinstance(value, str) else json.dumps(value)
    with pytest.raises(ConfigError) as info:
        load_stage_config("prod", config)
    assert message in str(info.value)
    assert str(info.value).startswith("Pulumi.prod.yaml: invalid stack configuration:")


def test_gitops_and_allowlist_are_required():
    config = stack_config("prod", gitops=None, network={"subnets": {"ru-central1-a": "10.140.0.0/24"}})
    with pytest.raises(ConfigError) as info:
        load_stage_config("prod", config)
    assert "aistack:gitops: is required but not set" in str(info.value)
    assert "aistack:network.apiAllowlist: is required but not set" in str(info.value)


# --- the program -----------------------------------------------------------------------------------

def test_every_labellable_resource_is_labelled(run_stack, model):
    rec = run_stack("prod", config_for(model))
    checked = 0
    for resource in rec.plan.resources:
        field = labelled_field(resource.type) if resource.custom and resource.type.startswith("yandex:") else None
        if field is None:
            continue
        labels = resource.inputs.get(field)
        assert labels is not None, f"{resource.name} has no {field}"
        assert set(labels) >= REQUIRED_LABELS and labels["stage"] == "prod", resource.name
        checked += 1
    assert checked >= 20
    for resource in rec.plan.resources:
        if resource.type.startswith("kubernetes:") and "metadata" in resource.inputs:
            labels = resource.inputs["metadata"].get("labels") or {}
            assert labels.get("aistack.io/stage") == "prod", resource.name


def test_outputs(run_stack, model):
    _, sha = model
    rec = run_stack("prod", config_for(model))
    outputs = rec.plan.outputs
    assert set(outputs) == OUTPUTS
    assert outputs["kubeconfig"] == "[secret]"
    assert outputs["ingress_address"] == "[computed]"
    assert outputs["clickhouse_host"] == "c-(prod-clickhouse-cluster.id).rw.mdb.yandexcloud.net"
    assert outputs["clickhouse_port"] == 8443 and outputs["clickhouse_user"] == "inference"
    assert outputs["kibana_url"] == "https://logs-kb-http.logging.svc:5601"
    assert outputs["kibana_dashboards"] == {
        "aistack: inference service": "https://logs-kb-http.logging.svc:5601/app/dashboards#/view/aistack-service",
        "aistack: TF Serving": "https://logs-kb-http.logging.svc:5601/app/dashboards#/view/aistack-tf-serving",
        "aistack: GPUs, nodes and cluster": "https://logs-kb-http.logging.svc:5601/app/dashboards#/view/aistack-gpu"}
    assert set(outputs["kibana_alerts"]) == {
        "InferenceServiceDown", "InferenceErrorRatioHigh", "InferenceLatencyP99High", "PredictionStoreDown",
        "TfServingDown", "TfServingModelNotReady", "GpuMemoryHigh", "GpuUtilisationHigh", "GpuMetricsMissing"}
    assert all(url.startswith("https://logs-kb-http.logging.svc:5601/app/management/insightsAndAlerting/"
                              "triggersActions/rule/") for url in outputs["kibana_alerts"].values())
    assert outputs["argocd_url"] == "https://argocd-server.argocd.svc"
    assert outputs["tf_serving_url"] == "http://tf-serving.aistack.svc:8501"
    assert outputs["tf_model_source"] == f"s3://aistack-prod-b1gexamplefolder0prd/models/digits/{sha}/tf"
    assert outputs["tf_model_base_path"] == "/models/digits"
    assert not any("password" in key for key in outputs)
    assert rec.plan.warnings == []


def test_secrets_never_appear_in_the_plan(run_stack, model, known_secrets):
    config = config_for(model)
    config["aistack:gitopsRepoToken"] = REPO_TOKEN
    rec = run_stack("prod", config, secret_keys=["aistack:gitopsRepoToken"])
    text = rec.json()
    for value in (PASSWORD, ACCESS_KEY, SECRET_KEY, REPO_TOKEN):
        assert value not in text
    assert named(rec, "Secret", "prod-app-clickhouse")["stringData"] == "[secret]"
    assert named(rec, "Secret", "prod-tf-serving-s3")["stringData"] == "[secret]"
    repo = named(rec, "Secret", "prod-argocd-repo")
    assert repo["stringData"] == "[secret]"
    assert repo["metadata"]["labels"]["argocd.argoproj.io/secret-type"] == "repository"
    assert rec.one("MdbClickhouseCluster").inputs["users"] == "[secret]"
    assert rec.one("LockboxSecretVersion").inputs["entries"] == "[secret]"
    assert next(r for r in rec.plan.resources if r.type == "pulumi:providers:kubernetes").inputs["kubeconfig"] == \
        "[secret]"
    assert rec.plan.outputs["kubeconfig"] == "[secret]"


def test_repo_token_in_plain_text_is_refused(run_stack, model):
    config = config_for(model)
    config["aistack:gitopsRepoToken"] = REPO_TOKEN
    with pytest.raises(plan_module.PlanError, match="aistack:gitopsRepoToken holds a secret but is stored in plain"):
        run_stack("prod", config)


def test_public_repository_needs_no_repo_secret(run_stack, model):
    rec = run_stack("prod", config_for(model))
    assert [r.name for r in rec.of_type("Secret")] == ["prod-app-clickhouse", "prod-tf-serving-s3"]


def test_helm_charts_are_pinned_to_the_configured_versions(run_stack, model):
    rec = run_stack("prod", config_for(model, charts={"argocd": "7.8.0"}))
    releases = {r.inputs["chart"]: r.inputs for r in rec.of_type("Release")}
    assert {chart: release["version"] for chart, release in releases.items()} == {
        "argo-cd": "7.8.0", "eck-operator": "2.14.0", "gpu-operator": "v24.9.2", "ingress-nginx": "4.11.3",
        "cert-manager": "v1.21.1", "kube-state-metrics": "5.27.0"}
    for chart, release in releases.items():
        assert SEMVER.match(release["version"]), chart
        assert release["repositoryOpts"]["repo"].startswith("https://"), chart
        assert release["atomic"] is True and release["values"], chart


def test_no_public_clickhouse_and_only_the_nodes_reach_it(run_stack, model):
    rec = run_stack("prod", config_for(model, clickhouse={"shards": 1, "replicas": 3,
                                                          "coordination": "embedded-keeper"}))
    cluster = rec.one("MdbClickhouseCluster").inputs
    assert [h["assignPublicIp"] for h in cluster["hosts"]] == [False, False, False]
    assert [h["zone"] for h in cluster["hosts"]] == ["ru-central1-a", "ru-central1-b", "ru-central1-d"]
    assert cluster["securityGroupIds"] == ["(prod-net-clickhouse.id)"]
    assert cluster["deletionProtection"] is True
    group = named(rec, "VpcSecurityGroup", "prod-net-clickhouse")
    assert [(r["port"], r["securityGroupId"]) for r in group["ingresses"]] == [
        (8443, "(prod-net-k8s-nodes.id)"), (9440, "(prod-net-k8s-nodes.id)")]
    assert all("v4CidrBlocks" not in r for r in group["ingresses"])


def test_master_allowlist(run_stack, model):
    rec = run_stack("prod", config_for(model, network={"apiAllowlist": ["192.0.2.0/28"]}))
    master = rec.one("KubernetesCluster").inputs["master"]
    assert master["publicIp"] is True and master["securityGroupIds"] == ["(prod-net-k8s-master.id)"]
    group = named(rec, "VpcSecurityGroup", "prod-net-k8s-master")
    from_cidrs = {r["port"]: r["v4CidrBlocks"] for r in group["ingresses"] if "v4CidrBlocks" in r}
    assert from_cidrs == {443: ["192.0.2.0/28"], 6443: ["192.0.2.0/28"]}
    nodes = named(rec, "VpcSecurityGroup", "prod-net-k8s-nodes")
    assert not any(r.get("port") in (443, 6443) for r in nodes["ingresses"])


def test_gpu_group_may_scale_to_zero_and_regional_master(run_stack, model):
    rec = run_stack("prod", config_for(model, kubernetes={"master": "regional", "gpuNodes": {"min": 0, "max": 3}}))
    gpu = named(rec, "KubernetesNodeGroup", "prod-k8s-gpu")
    assert gpu["scalePolicy"] == {"autoScale": {"min": 0, "max": 3, "initial": 0}}
    assert gpu["nodeTaints"] == ["nvidia.com/gpu=true:NoSchedule"]
    assert gpu["instanceTemplate"]["resources"]["gpus"] == 1
    master = rec.one("KubernetesCluster").inputs["master"]
    assert [loc["zone"] for loc in master["regional"]["locations"]] == ["ru-central1-a", "ru-central1-b",
                                                                         "ru-central1-d"]


def test_least_privilege(run_stack, model):
    rec = run_stack("prod", config_for(model))
    folder_roles = {(r.inputs["member"], r.inputs["role"]) for r in rec.of_type("ResourcemanagerFolderIamMember")}
    assert folder_roles == {("serviceAccount:(prod-k8s-cluster-sa.id)", role)
                            for role in ("k8s.clusters.agent", "vpc.publicAdmin", "load-balancer.admin")}
    assert rec.one("StorageBucket").inputs["grants"] == [
        {"type": "CanonicalUser", "id": "(prod-model-reader-sa.id)", "permissions": ["READ"]}]
    assert rec.one("ContainerRegistryIamBinding").inputs["members"] == ["serviceAccount:(prod-k8s-nodes-sa.id)"]
    key = rec.one("IamServiceAccountStaticAccessKey").inputs
    assert key["serviceAccountId"] == "(prod-model-reader-sa.id)"


def test_tf_serving_deployment(run_stack, model):
    _, sha = model
    rec = run_stack("prod", config_for(model))
    deployment = named(rec, "Deployment", "prod-tf-serving-deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "tensorflow/serving:2.18.0-gpu"
    assert "--model_base_path=/models/digits" in container["args"]  # the init container's copy
    assert "--model_name=digits" in container["args"] and "--rest_api_port=8501" in container["args"]
    (fetch,) = pod["initContainers"]
    assert fetch["command"] == ["python", "-m", "service.model_sync",
                                f"s3://aistack-prod-b1gexamplefolder0prd/models/digits/{sha}/tf", "/models/digits"]
    digest = json.loads(stack_config("prod")["aistack:release"])["imageDigest"]
    assert fetch["image"] == f"cr.yandex/(prod-images-registry.id)/inference@{digest}"
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in fetch["env"]}
    assert env["S3_ENDPOINT_URL"] == "https://storage.yandexcloud.net" and env["AWS_REGION"] == "ru-central1"
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "tf-serving-s3", "key": "AWS_SECRET_ACCESS_KEY"}}
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/v1/models/digits", "port": 8501}, probe
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["nodeSelector"] == {"aistack.io/node-pool": "gpu"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    hpa = named(rec, "HorizontalPodAutoscaler", "prod-tf-serving-hpa")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 2)
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tf-serving"}
    service = named(rec, "Service", "prod-tf-serving-service")
    assert service["metadata"]["name"] == "tf-serving" and service["metadata"]["namespace"] == "aistack"


def test_the_released_saved_model_is_uploaded_where_tf_serving_reads_it(run_stack, model):
    directory, sha = model
    rec = run_stack("prod", config_for(model))
    objects = {r.inputs["key"]: r.inputs for r in rec.of_type("StorageObject")}
    prefix = f"models/digits/{sha}/tf/"
    assert {k for k in objects if k.startswith(prefix)} == {prefix + "1/saved_model.pb",
                                                             prefix + "1/variables/variables.index"}
    uploaded = objects[prefix + "1/saved_model.pb"]
    assert uploaded["source"] == str(directory / "tf" / "1" / "saved_model.pb")
    assert uploaded["sourceHash"] == hashlib.sha256(b"graph").hexdigest()
    # the init container copies that prefix (test_tf_serving_deployment): the same key
    assert named(rec, "Deployment", "prod-tf-serving-deployment")["spec"]["template"]["spec"]["initContainers"][0][
        "command"][3] == f"s3://aistack-prod-b1gexamplefolder0prd/{prefix.rstrip('/')}"


def test_a_release_without_its_saved_model_is_refused_on_up(run_stack, model):
    directory, _ = model
    shutil.rmtree(directory / "tf")
    preview = run_stack("prod", config_for(model))
    assert any("no TensorFlow SavedModel under" in w for w in preview.plan.warnings)
    with pytest.raises(Exception, match=r"no TensorFlow SavedModel under .*stagectl model export-tf"):
        run_stack("prod", config_for(model), preview=False)


def test_argocd_application(run_stack, model):
    rec = run_stack("prod", config_for(model, gitops={"targetRevision": "release"}))
    app = rec.one("Application").inputs
    assert app["spec"]["source"] == {"repoURL": "https://gitlab.com/example/aistack.git",
                                     "targetRevision": "release", "path": "deploy/overlays/prod"}
    assert app["spec"]["destination"] == {"server": "https://kubernetes.default.svc", "namespace": "aistack"}
    automated = app["spec"]["syncPolicy"]["automated"]
    assert automated["prune"] is True and automated["selfHeal"] is True
    assert app["spec"]["project"] == rec.one("AppProject").inputs["metadata"]["name"] == "aistack"


def test_plan_cli_prints_the_prod_stage_and_its_guardrails():
    result = subprocess.run([sys.executable, "-m", "stagectl", "plan", "prod"], cwd=ROOT, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "yandex:KubernetesNodeGroup  prod-k8s-gpu" in result.stdout
    assert "yandex:MdbClickhouseCluster  prod-clickhouse-cluster" in result.stdout
    assert "guardrails: 14/14 passed" in result.stdout
