"""The partner program as a whole: config errors, labels, least privilege, secrets, wiring, outputs."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.triton_repo import config_pbtxt
from stacks.config import ConfigError, PartnerConfig, load_stage_config
from stagectl import plan as plan_module
from stagectl.plan import PlanError
from tests.infra.conftest import ROOT, Recorded, stack_config
from tests.infra.test_mvp_stack import REQUIRED_LABELS, labelled_field

PASSWORD = "Generated-Password-0123456789xyz"
TOKEN = "glrt-SECRET-runner-token-value"
OUTPUTS = {"service_url", "host_ip", "grafana_url", "prometheus_url", "postgres_host", "postgres_database",
           "postgres_user", "bucket_name", "registry_id", "image_repository", "triton_repository", "model_uri"}


def config_for(model: tuple[Path, str, dict[str, Any]], **overrides: Any) -> dict[str, str]:
    directory, sha, _ = model
    release = json.loads(stack_config("partner")["aistack:release"])
    return stack_config("partner", model={"name": "digits", "dir": str(directory)},
                        release={**release, "modelSha256": sha}, **overrides)


@pytest.fixture
def generated_secrets(monkeypatch):
    """The mocks answer RandomPassword with a known result, as the provider would."""
    original = plan_module._Mocks.new_resource

    def new_resource(self, args):
        rid, state = original(self, args)
        if args.typ == "random:index/randomPassword:RandomPassword":
            state = {**state, "result": PASSWORD}
        return rid, state

    monkeypatch.setattr(plan_module._Mocks, "new_resource", new_resource)


def host_metadata(rec: Recorded) -> tuple[dict[str, Any], dict[str, Any]]:
    vm = next(r for r in rec.of_type("ComputeInstance") if r.name == "partner-gpu-vm").inputs
    return yaml.safe_load(vm["metadata"]["docker-compose"]), yaml.safe_load(vm["metadata"]["user-data"])


# --- configuration ----------------------------------------------------------------------------------

def test_repository_config_loads():
    cfg = load_stage_config("partner", stack_config("partner"))
    assert isinstance(cfg, PartnerConfig)
    assert (cfg.gpu_host.platform, cfg.gpu_host.cores, cfg.gpu_host.memory_gb) == ("standard-v3-t4", 8, 32)
    assert cfg.postgres.deletion_protection is True and cfg.runner.enabled is False and cfg.ssh.enabled is False
    assert cfg.bucket_name == "aistack-partner-b1gexamplefolder0prt"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"gpuHost": {"cores": 6, "memoryGb": 24}},
     "aistack:gpuHost: standard-v3-t4 (NVIDIA T4 16 GB) does not offer 1 GPU / 6 vCPU / 24 GB: it takes exactly 1 "
     "GPU with 4/16, 8/32, 16/64 or 32/128 vCPU/GB; set gpus, cores and memory to one of those shapes"),
    ({"gpuHost": {"platform": "standard-v3-t4i"}},
     "aistack:gpuHost: standard-v3-t4i (NVIDIA T4i 24 GB) runs only in ru-central1-d, not in ru-central1-a: put the "
     "GPU workload in one of those zones (yandex:zone)"),
    ({"postgres": {"resourcePreset": "s9.giant"}},
     "aistack:postgres.resourcePreset: resource preset 's9.giant' is not a Managed PostgreSQL host class: allowed "),
    ({"postgres": {"version": "12"}}, "aistack:postgres.version: Input should be '14', '15', '16' or '17'"),
    ({"postgres": {"diskType": "local-ssd", "diskSizeGb": 100}},
     "aistack:postgres: local-ssd is not replicated by the cloud: it needs 3 or more hosts (got 1)"),
    ({"ssh": {"enabled": True, "users": [{"name": "ops", "sshKeys": ["ssh-ed25519 AAAA ops"]}]},
      "network": {"adminCidrs": []}},
     "aistack:ssh: SSH is enabled but network.adminCidrs is empty: SSH opens only to the admin networks"),
    ({"network": {"cidr": "8.8.8.0/24"}}, "aistack:network.cidr: subnet CIDR 8.8.8.0/24 is not private"),
    ({"network": {"adminCidrs": ["10.0.0.1/8"]}}, "aistack:network.adminCidrs[0]: CIDR '10.0.0.1/8' is not a valid"),
    ({"triton": {"image": "nvcr.io/nvidia/tritonserver:latest"}},
     "aistack:triton.image: image 'nvcr.io/nvidia/tritonserver:latest' is not pinned"),
    ({"runner": {"enabled": True, "cores": 3}}, "aistack:runner: runner cores 3 is invalid"),
    ({"gpuHost": {"memoryGB": 32}}, "aistack:gpuHost.memoryGB: is not a known setting (misspelled?); known keys here: "
                                    "cores, diskSizeGb, diskType, gpus, imageId, memoryGb"),
])
def test_invalid_config_names_key_and_rule(overrides, message):
    config = stack_config("partner")
    for key, value in overrides.items():
        config[key if ":" in key else f"aistack:{key}"] = value if isinstance(value, str) else json.dumps(value)
    with pytest.raises(ConfigError) as info:
        load_stage_config("partner", config)
    assert message in str(info.value)
    assert str(info.value).startswith("Pulumi.partner.yaml: invalid stack configuration:")


# --- the program -----------------------------------------------------------------------------------

def test_every_labellable_resource_is_labelled(run_stack, model):
    config = config_for(model, runner={"enabled": True})
    config["aistack:gitlabRunnerToken"] = TOKEN
    rec = run_stack("partner", config, secret_keys=["aistack:gitlabRunnerToken"])
    checked = 0
    for resource in rec.plan.resources:
        field = labelled_field(resource.type) if resource.custom and resource.type.startswith("yandex:") else None
        if field is None:
            continue
        labels = resource.inputs.get(field)
        assert labels is not None, f"{resource.name} has no {field}"
        assert set(labels) >= REQUIRED_LABELS and labels["stage"] == "partner", resource.name
        checked += 1
    assert checked >= 20


def test_outputs_and_no_warnings_for_a_pinned_model(run_stack, model):
    _, sha, _ = model
    rec = run_stack("partner", config_for(model))
    assert set(rec.plan.outputs) == OUTPUTS
    outputs = rec.plan.outputs
    assert outputs["service_url"] == "https://partner.aistack.example.com/"
    assert outputs["grafana_url"] == outputs["host_ip"] == "[computed]"
    assert outputs["postgres_host"] == "c-(partner-db-cluster.id).rw.mdb.yandexcloud.net"
    assert outputs["triton_repository"] == (
        f"s3://https://storage.yandexcloud.net:443/aistack-partner-b1gexamplefolder0prt/models/digits/{sha}/triton")
    assert rec.plan.warnings == []


def test_least_privilege_of_the_host_account(run_stack, model):
    rec = run_stack("partner", config_for(model))
    assert rec.of_type("ResourcemanagerFolderIamMember") == [], "no folder-wide roles"
    readers = {r.inputs["secretId"] for r in rec.of_type("LockboxSecretIamMember")
               if r.inputs["member"] == "serviceAccount:(partner-inference-sa.id)"}
    assert readers == {"(partner-inference-s3-key.id)", "(partner-db-password-secret.id)",
                       "(partner-grafana-admin-secret.id)"}
    assert rec.one("StorageBucket").inputs["grants"] == [
        {"type": "CanonicalUser", "id": "(partner-inference-sa.id)", "permissions": ["READ"]}]
    assert rec.one("ContainerRegistryIamBinding").inputs["members"] == ["serviceAccount:(partner-inference-sa.id)"]


def test_network_wiring(run_stack, model):
    rec = run_stack("partner", config_for(model))
    vm = next(r for r in rec.of_type("ComputeInstance") if r.name == "partner-gpu-vm").inputs
    assert vm["networkInterfaces"][0]["securityGroupIds"] == ["(partner-net-inference.id)"]
    assert vm["zone"] == "ru-central1-a" and vm["platformId"] == "standard-v3-t4"
    cluster = rec.one("MdbPostgresqlCluster").inputs
    assert cluster["securityGroupIds"] == ["(partner-net-database.id)"]
    assert all(host["assignPublicIp"] is False for host in cluster["hosts"])
    groups = {r.name: r.inputs for r in rec.of_type("VpcSecurityGroup")}
    assert set(groups) == {"partner-net-inference", "partner-net-database"}
    ports = [rule.get("port") for rule in groups["partner-net-inference"]["ingresses"]]
    assert 22 not in ports, "SSH is off unless enabled"


def test_ssh_opens_only_to_the_admin_networks(run_stack, model):
    ssh = {"enabled": True, "users": [{"name": "ops", "sshKeys": ["ssh-ed25519 AAAAC3Nza ops@example.com"]}]}
    rec = run_stack("partner", config_for(model, ssh=ssh, network={"adminCidrs": ["198.51.100.7/32"]}))
    rules = {r["description"]: r for r in
             next(g for g in rec.of_type("VpcSecurityGroup") if g.name == "partner-net-inference").inputs["ingresses"]}
    assert rules["SSH from the admin networks"] == {"protocol": "TCP", "description": "SSH from the admin networks",
                                                    "port": 22, "v4CidrBlocks": ["198.51.100.7/32"]}
    _, user_data = host_metadata(rec)
    assert user_data["users"][0]["ssh_authorized_keys"] == ["ssh-ed25519 AAAAC3Nza ops@example.com"]


def test_host_workload_is_wired_to_the_stage(run_stack, model):
    _, sha, card = model
    rec = run_stack("partner", config_for(model))
    compose, user_data = host_metadata(rec)
    services = compose["services"]
    digest = json.loads(stack_config("partner")["aistack:release"])["imageDigest"]
    assert services["inference"]["image"] == f"cr.yandex/(partner-images-registry.id)/inference@{digest}"
    env = services["inference"]["environment"]
    assert env["TRITON_MODEL"] == "digits-mlp" and env["MODEL_SHA256"] == sha
    assert env["MODEL_CARD_URI"] == f"s3://aistack-partner-b1gexamplefolder0prt/models/digits/{sha}/card.json"
    assert env["PG_DSN"].startswith("postgresql://inference@c-(partner-db-cluster.id).rw.mdb.yandexcloud.net:6432/"
                                    "predictions?sslmode=verify-full")
    wanted = json.loads(services["secrets"]["environment"]["AISTACK_SECRETS"])
    assert wanted["/run/secrets/inference"][-1] == ["(partner-db-password-secret.id)", "PG_PASSWORD"]
    assert wanted["/run/secrets/grafana"] == [["(partner-grafana-admin-secret.id)", "GF_SECURITY_ADMIN_PASSWORD"]]
    assert wanted["/run/secrets/triton"][0] == ["(partner-inference-s3-key.id)", "AWS_ACCESS_KEY_ID"]
    assert (f"--model-repository=s3://https://storage.yandexcloud.net:443/aistack-partner-b1gexamplefolder0prt/"
            f"models/digits/{sha}/triton") in services["triton"]["command"][-1]
    # the monitoring configuration travels in the compose file (its config service writes it), not in cloud-init
    assert "write_files" not in user_data and "runcmd" not in user_data
    shipped = json.loads(zlib.decompress(base64.b64decode(services["config"]["environment"]["AISTACK_FILES"])))
    assert "prometheus/rules/aistack.yml" in shipped
    assert services["config"]["environment"]["AISTACK_FILES_ROOT"] == "/opt/aistack"
    assert "/opt/aistack/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    config = next(r for r in rec.of_type("StorageObject") if r.name == "partner-triton-config").inputs
    assert config["content"] == config_pbtxt(card)


def test_secrets_never_appear_in_the_plan(run_stack, model, generated_secrets):
    config = config_for(model, runner={"enabled": True})
    config["aistack:gitlabRunnerToken"] = TOKEN
    rec = run_stack("partner", config, secret_keys=["aistack:gitlabRunnerToken"])
    text = rec.json()
    assert PASSWORD not in text and TOKEN not in text
    assert rec.one("MdbPostgresqlUser").inputs["password"] == "[secret]"
    versions = rec.of_type("LockboxSecretVersion")
    assert len(versions) == 3 and all(v.inputs["entries"] == "[secret]" for v in versions)
    assert "PG_PASSWORD=" not in text and "GF_SECURITY_ADMIN_PASSWORD=" not in text


def test_runner_is_off_unless_configured(run_stack, model):
    rec = run_stack("partner", config_for(model))
    assert [r for r in rec.plan.resources if r.type == "aistack:runner:GitlabRunner"] == []
    assert "runner_id" not in rec.plan.outputs


def test_runner_needs_its_token(run_stack, model):
    with pytest.raises(PlanError, match=r"aistack:runner.enabled is true but aistack:gitlabRunnerToken is not set: "
                                        r"run `pulumi config set --secret gitlabRunnerToken <glrt-\.\.\. token> "
                                        r"--stack partner`"):
        run_stack("partner", config_for(model, runner={"enabled": True}))


def test_runner_token_in_plain_text_is_refused(run_stack, model):
    config = config_for(model, runner={"enabled": True})
    config["aistack:gitlabRunnerToken"] = TOKEN
    with pytest.raises(PlanError, match="aistack:gitlabRunnerToken holds a secret but is stored in plain text"):
        run_stack("partner", config)


def test_runner_when_enabled(run_stack, model):
    config = config_for(model, runner={"enabled": True, "cores": 4, "memoryGb": 8, "concurrent": 4})
    config["aistack:gitlabRunnerToken"] = TOKEN
    rec = run_stack("partner", config, secret_keys=["aistack:gitlabRunnerToken"])
    vm = next(r for r in rec.of_type("ComputeInstance") if r.name == "partner-runner-vm").inputs
    assert vm["resources"] == {"cores": 4, "memory": 8, "coreFraction": 100}
    assert vm["networkInterfaces"] == [{"subnetId": "(partner-net-ru-central1-a.id)", "nat": False,
                                        "securityGroupIds": ["(partner-net-runner.id)"]}]
    assert vm["serviceAccountId"] == "(partner-runner-sa.id)"
    user_data = yaml.safe_load(vm["metadata"]["user-data"])
    assert ["sed", "-i", "s/^concurrent = .*/concurrent = 4/", "/srv/gitlab-runner/config/config.toml"] in \
        user_data["runcmd"]
    runner_group = next(g for g in rec.of_type("VpcSecurityGroup") if g.name == "partner-net-runner").inputs
    assert "ingresses" not in runner_group
    reader = next(r for r in rec.of_type("LockboxSecretIamMember") if r.name == "partner-runner-token-reader-0")
    assert reader.inputs["member"] == "serviceAccount:(partner-runner-sa.id)"
    assert rec.plan.outputs["runner_id"] == "(partner-runner-vm.id)"


def test_plan_cli_prints_the_partner_stage():
    result = subprocess.run([sys.executable, "-m", "stagectl", "plan", "partner", "--json"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["stack"] == "partner" and set(plan["outputs"]) == OUTPUTS
    types = {r["type"].rpartition(":")[2] for r in plan["resources"]}
    assert {"ComputeInstance", "MdbPostgresqlCluster", "VpcSecurityGroup", "RandomPassword"} <= types
    assert "[secret]" in result.stdout
    tree = subprocess.run([sys.executable, "-m", "stagectl", "plan", "partner"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert tree.returncode == 0 and "yandex:ComputeInstance  partner-gpu-vm" in tree.stdout


def test_partner_plan_is_deterministic():
    from stagectl.plan import run_plan

    assert run_plan("partner", ROOT).dumps() == run_plan("partner", ROOT).dumps()
