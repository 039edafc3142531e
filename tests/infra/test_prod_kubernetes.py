"""Managed Kubernetes under mocks: versions, master placement, API allowlist, node groups, kubeconfig."""

from __future__ import annotations

import base64
from typing import Any

import pulumi
import pytest
import yaml

from components.base import ValidationError
from components.kubernetes import (
    GPU_TAINT,
    VERSIONS,
    ManagedKubernetes,
    ManagedKubernetesArgs,
    NodeGroupSpec,
    check_version,
    cpu_node_group,
    gpu_node_group,
    kubeconfig,
    master_rules,
    node_rules,
)
from components.network import StageNetwork, StageNetworkArgs, SubnetSpec
from policy import guardrails as g
from stagectl.checks import resources_of
from tests.infra.conftest import ROOT

LABELS = {"project": "aistack", "stage": "prod"}
SUBNETS = {"ru-central1-a": "subnet-a", "ru-central1-b": "subnet-b", "ru-central1-d": "subnet-d"}


def cluster_args(**kw: Any) -> ManagedKubernetesArgs:
    base: dict[str, Any] = {
        "folder_id": "f", "network_id": "net-1", "subnet_ids": SUBNETS,
        "master_security_group_ids": ["sg-master"], "node_security_group_ids": ["sg-nodes"],
        "node_groups": [cpu_node_group("ru-central1-a", min_size=2, max_size=4),
                        gpu_node_group("ru-central1-a", platform_id="standard-v3-t4", gpus=1, cores=8, memory_gb=32,
                                       disk_size_gb=100, min_size=0, max_size=2, driverless=True)],
    }
    return ManagedKubernetesArgs(**{**base, **kw})


# --- validation before anything is created ----------------------------------------------------------

@pytest.mark.parametrize(("kw", "message"), [
    ({"version": "1.27"}, "Kubernetes version '1.27' is not offered: allowed 1.30, 1.31, 1.32, 1.33, 1.34"),
    ({"master": "regional", "subnet_ids": {"ru-central1-a": "s"}},
     "a regional master needs subnets in three zones, got 1 (ru-central1-a): add subnets for ru-central1-a, -b and "
     "-d or use a zonal master"),
    ({"master": "ha"}, "master type 'ha' is invalid: allowed zonal, regional"),
    ({"master_zone": "ru-central1-c"}, "the zonal master's zone ru-central1-c has no subnet"),
    ({"release_channel": "BETA"}, "release channel 'BETA' is invalid: allowed RAPID, REGULAR, STABLE"),
    ({"master_security_group_ids": []}, "the master needs a security group"),
    ({"cluster_ipv4_range": "10.96.0.0/16"}, "the pod range 10.96.0.0/16 and the service range 10.96.0.0/16 overlap"),
    ({"service_ipv4_range": "8.8.0.0/16"}, "service CIDR 8.8.0.0/16 is invalid: use a private range"),
    ({"node_groups": [gpu_node_group("ru-central1-a", platform_id="standard-v3-t4", gpus=1, cores=8, memory_gb=32,
                                     disk_size_gb=100, min_size=0, max_size=1)]},
     "the cluster needs a CPU node group with min >= 1"),
])
def test_cluster_args_are_validated(kw, message):
    with pytest.raises(ValidationError) as info:
        cluster_args(**kw)
    assert message in str(info.value)


@pytest.mark.parametrize(("kw", "message"), [
    ({"gpus": 1, "platform_id": "standard-v3-t4", "cores": 8, "memory_gb": 16, "node_taints": (GPU_TAINT,)},
     "standard-v3-t4 (NVIDIA T4 16 GB) does not offer 1 GPU / 8 vCPU / 16 GB: it takes exactly 1 GPU with 4/16, 8/32, "
     "16/64 or 32/128 vCPU/GB"),
    ({"gpus": 1, "platform_id": "standard-v3", "cores": 28, "memory_gb": 119, "node_taints": (GPU_TAINT,)},
     "GPU platform 'standard-v3' is not supported (did you mean 'gpu-standard-v3'?)"),
    ({"gpus": 1, "platform_id": "gpu-standard-v3", "cores": 28, "memory_gb": 119, "zone": "ru-central1-d",
      "node_taints": (GPU_TAINT,)},
     "gpu-standard-v3 (NVIDIA A100 80 GB) runs only in ru-central1-a and ru-central1-b, not in ru-central1-d"),
    ({"gpus": 1, "platform_id": "standard-v3-t4", "cores": 8, "memory_gb": 32},
     "GPU node group n must carry the taint nvidia.com/gpu=true:NoSchedule"),
    ({"platform_id": "standard-v3-t4"}, "node group n: standard-v3-t4 is a GPU platform: set gpus"),
    ({"cores": 3}, "CPU node cores 3 is invalid: standard-v3 takes an even number of vCPUs, 2-64 here"),
    ({"cores": 4, "memory_gb": 80}, "CPU node memory 80 GB is invalid for 4 vCPUs: standard-v3 takes 1-16 GB per vCPU"),
    ({"core_fraction": 5}, "CPU node core fraction 5% is invalid: allowed 20, 50, 100"),
    ({"min_size": 0}, "node group n: autoscaling min 0 / max 3 is invalid: need 1 <= min <= max <= 100 (only the GPU "
                      "group may scale to zero)"),
    ({"min_size": 3, "max_size": 2}, "autoscaling min 3 / max 2 is invalid"),
    ({"initial_size": 9}, "node group n: initial size 9 is outside min 1 - max 3"),
    ({"disk_size_gb": 10}, "boot disk size 10 GB is out of range: allowed 30-4096 GB"),
    ({"driverless": True}, "node group n: driverless applies to GPU node groups only"),
])
def test_node_groups_are_validated(kw, message):
    with pytest.raises(ValidationError) as info:
        NodeGroupSpec(**{"name": "n", "zone": "ru-central1-a", **kw})
    assert message in str(info.value)


def test_gpu_group_may_scale_to_zero():
    spec = gpu_node_group("ru-central1-b", platform_id="gpu-standard-v3", gpus=2, cores=56, memory_gb=238,
                          min_size=0, max_size=3)
    assert (spec.min_size, spec.initial, spec.max_size) == (0, 0, 3)


@pytest.mark.parametrize(("cidrs", "message"), [
    ([], "the Kubernetes API allowlist is empty"),
    (["203.0.113.0/24", "0.0.0.0/0"], "the Kubernetes API allowlist contains 0.0.0.0/0: the master must not be open"),
    (["203.0.113.1/24"], "API allowlist CIDR '203.0.113.1/24' is not a valid IPv4 CIDR"),
])
def test_api_allowlist_is_checked(cidrs, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        master_rules(cidrs, ["10.140.0.0/24"], "10.112.0.0/16")


# --- what is registered ---------------------------------------------------------------------------------

def test_cluster_as_registered(run_component):
    rec = run_component(lambda: ManagedKubernetes("k8s", cluster_args(), LABELS))
    cluster = rec.one("KubernetesCluster").inputs
    assert cluster["networkPolicyProvider"] == "CALICO"
    assert cluster["kmsProvider"] == {"keyId": "(k8s-kms.id)"}
    assert cluster["serviceAccountId"] == "(k8s-cluster-sa.id)"
    assert cluster["nodeServiceAccountId"] == "(k8s-nodes-sa.id)"
    master = cluster["master"]
    assert master["version"] == "1.33" and master["publicIp"] is True
    assert master["securityGroupIds"] == ["sg-master"]
    assert master["zonal"] == {"zone": "ru-central1-a", "subnetId": "subnet-a"} and "regional" not in master
    assert cluster["labels"] == {**LABELS, "component": "kubernetes"}
    # Separate accounts: the cluster's holds exactly the three folder roles, the nodes' none.
    roles = {(r.inputs["member"], r.inputs["role"]) for r in rec.of_type("ResourcemanagerFolderIamMember")}
    assert roles == {("serviceAccount:(k8s-cluster-sa.id)", role)
                     for role in ("k8s.clusters.agent", "vpc.publicAdmin", "load-balancer.admin")}
    kms_user = rec.one("KmsSymmetricKeyIamMember").inputs
    assert kms_user == {"symmetricKeyId": "(k8s-kms.id)", "role": "kms.keys.encrypterDecrypter",
                        "member": "serviceAccount:(k8s-cluster-sa.id)"}
    provider = next(r for r in rec.plan.resources if r.type == "pulumi:providers:kubernetes")
    assert provider.inputs["kubeconfig"] == "[secret]"


def test_regional_master_takes_three_zones(run_component):
    rec = run_component(lambda: ManagedKubernetes("k8s", cluster_args(master="regional"), LABELS))
    master = rec.one("KubernetesCluster").inputs["master"]
    assert "zonal" not in master
    assert master["regional"] == {"region": "ru-central1", "locations": [
        {"zone": zone, "subnetId": subnet} for zone, subnet in sorted(SUBNETS.items())]}


def test_gpu_node_group_shape_taints_and_autoscaling(run_component):
    rec = run_component(lambda: ManagedKubernetes("k8s", cluster_args(), LABELS))
    groups = {r.name: r.inputs for r in rec.of_type("KubernetesNodeGroup")}
    assert set(groups) == {"k8s-cpu", "k8s-gpu"}
    gpu = groups["k8s-gpu"]
    template = gpu["instanceTemplate"]
    assert template["platformId"] == "standard-v3-t4"
    assert template["resources"] == {"gpus": 1, "cores": 8, "memory": 32}
    assert template["gpuSettings"] == {"gpuEnvironment": "runc"}
    assert template["networkInterfaces"] == [{"subnetIds": ["subnet-a"], "nat": False,
                                              "securityGroupIds": ["sg-nodes"]}]
    assert gpu["nodeTaints"] == ["nvidia.com/gpu=true:NoSchedule"]
    assert gpu["nodeLabels"] == {"aistack.io/node-pool": "gpu", "nvidia.com/gpu.present": "true"}
    assert gpu["scalePolicy"] == {"autoScale": {"min": 0, "max": 2, "initial": 0}}
    assert gpu["allocationPolicy"] == {"locations": [{"zone": "ru-central1-a"}]}
    cpu = groups["k8s-cpu"]
    assert cpu["scalePolicy"] == {"autoScale": {"min": 2, "max": 4, "initial": 2}}
    assert "nodeTaints" not in cpu and "gpuSettings" not in cpu["instanceTemplate"]
    assert cpu["instanceTemplate"]["resources"] == {"cores": 4, "memory": 16, "coreFraction": 100}
    assert cpu["nodeLabels"] == {"aistack.io/node-pool": "cpu"}


def test_gpu_nodes_with_drivers_emit_no_gpu_settings(run_component):
    groups = [cpu_node_group("ru-central1-a"),
              gpu_node_group("ru-central1-a", platform_id="standard-v3-t4", gpus=1, cores=8, memory_gb=32,
                             disk_size_gb=100, min_size=1, max_size=1, driverless=False)]
    rec = run_component(lambda: ManagedKubernetes("k8s", cluster_args(node_groups=groups), LABELS))
    gpu = next(r for r in rec.of_type("KubernetesNodeGroup") if r.name == "k8s-gpu").inputs
    assert "gpuSettings" not in gpu["instanceTemplate"], "an empty gpu_settings block breaks the provider (#600)"


def test_master_security_group_is_the_allowlist(run_component):
    """The master gets the allowlist group by its id; the guardrail matches it and passes, and fails when open."""
    vpc = ["10.140.0.0/24"]

    def program(allowlist: list[str]) -> None:
        net = StageNetwork("net", StageNetworkArgs(folder_id="f", subnets=[SubnetSpec("ru-central1-a", vpc[0])],
                                                   security_groups={
                                                       "k8s-nodes": node_rules(vpc, "10.112.0.0/16", "10.96.0.0/16",
                                                                               ["0.0.0.0/0"]),
                                                       "k8s-master": master_rules(allowlist, vpc,
                                                                                  "10.112.0.0/16")}), LABELS)
        ManagedKubernetes("k8s", cluster_args(
            subnet_ids={"ru-central1-a": net.subnet_ids["ru-central1-a"]},
            master_security_group_ids=[net.security_group_ids["k8s-master"]],
            node_security_group_ids=[net.security_group_ids["k8s-nodes"]]), LABELS)

    rec = run_component(lambda: program(["203.0.113.0/24"]))
    master = rec.one("KubernetesCluster").inputs["master"]
    assert master["securityGroupIds"] == ["(net-k8s-master.id)"]
    group = next(r for r in rec.of_type("VpcSecurityGroup") if r.name == "net-k8s-master").inputs
    api = [r for r in group["ingresses"] if r.get("port") in (443, 6443)]
    assert {r["port"] for r in api} == {443, 6443}
    assert all(r.get("v4CidrBlocks") == ["203.0.113.0/24"] or r.get("securityGroupId") == "(net-k8s-nodes.id)"
               for r in api)
    facts = g.StackFacts(stack="prod", stage="prod")
    assert api_rule(resources_of(rec.plan), facts).passed
    # The same wiring with a world-open group is caught by the guardrail (master_rules itself refuses it).
    opened = [g.Resource(r.urn, r.type, r.name,
                         {**r.inputs, "ingresses": [{"protocol": "TCP", "port": 443, "v4CidrBlocks": ["0.0.0.0/0"]}]}
                         if r.name == "net-k8s-master" else r.inputs) for r in resources_of(rec.plan)]
    failed = api_rule(opened, facts)
    assert [f.message for f in failed.findings] == [
        "security group net-k8s-master opens the Kubernetes API of k8s-cluster to the world: allow only the master "
        "allowlist"]


def api_rule(resources: list[g.Resource], facts: g.StackFacts) -> g.RuleResult:
    return next(r for r in g.evaluate(resources, facts) if r.rule.name == "k8s-api-not-open-to-world")


def _rules(spec: Any) -> dict[str, set[tuple[Any, ...]]]:
    def key(rule: Any) -> tuple[Any, ...]:
        ports = (rule.port,) if rule.port is not None else (rule.from_port, rule.to_port)
        return (rule.protocol, ports, rule.cidrs or rule.group or rule.predefined)

    return {"ingress": {key(r) for r in spec.ingress}, "egress": {key(r) for r in spec.egress}}


def test_master_rules_are_yandexs_for_a_calico_cluster():
    """Yandex's "Configuring security groups" page: the master reaches pods on the cluster CIDR
    (webhooks; Calico routes pod IPs), metrics-server on 4443, NTP on UDP 123, and takes the load
    balancers' health checks (a regional master sits behind one); the API only from the allowlist
    and the nodes."""
    spec = master_rules(["203.0.113.0/24"], ["10.140.0.0/24", "10.140.1.0/24"], "10.112.0.0/16")
    every = (0, 65535)
    assert _rules(spec) == {
        "ingress": {
            ("TCP", (443,), ("203.0.113.0/24",)), ("TCP", (6443,), ("203.0.113.0/24",)),
            ("TCP", (443,), "k8s-nodes"), ("TCP", (6443,), "k8s-nodes"),
            ("TCP", every, "loadbalancer_healthchecks"),
            ("ANY", every, "self_security_group"),
        },
        "egress": {
            ("ANY", every, "k8s-nodes"),
            ("ANY", every, ("10.112.0.0/16",)),
            ("TCP", (4443,), ("10.112.0.0/16",)),
            ("UDP", (123,), ("0.0.0.0/0",)),
            ("ANY", every, "self_security_group"),
            ("ANY", every, ("10.140.0.0/24", "10.140.1.0/24")),
        },
    }


def test_node_rules_are_yandexs_for_node_groups():
    spec = node_rules(["10.140.0.0/24"], "10.112.0.0/16", "10.96.0.0/16", ["198.51.100.0/24"])
    every = (0, 65535)
    assert _rules(spec) == {
        "ingress": {
            ("ANY", every, "k8s-nodes"),
            ("ANY", every, ("10.140.0.0/24", "10.112.0.0/16", "10.96.0.0/16")),
            ("TCP", every, "loadbalancer_healthchecks"),
            ("ICMP", (None, None), ("10.140.0.0/24",)),
            ("TCP", (30000, 32767), ("198.51.100.0/24",)),
        },
        "egress": {("ANY", every, ("0.0.0.0/0",))},
    }


def test_predefined_targets_reach_the_provider(run_component):
    vpc = ["10.140.0.0/24"]
    rec = run_component(lambda: StageNetwork("net", StageNetworkArgs(
        folder_id="f", subnets=[SubnetSpec("ru-central1-a", vpc[0])],
        security_groups={"k8s-nodes": node_rules(vpc, "10.112.0.0/16", "10.96.0.0/16", ["0.0.0.0/0"]),
                         "k8s-master": master_rules(["203.0.113.0/24"], vpc, "10.112.0.0/16")}), LABELS))
    master = next(r for r in rec.of_type("VpcSecurityGroup") if r.name == "net-k8s-master").inputs
    assert {"protocol": "TCP", "description": "network load balancer health checks (regional master)",
            "fromPort": 0, "toPort": 65535, "predefinedTarget": "loadbalancer_healthchecks"} in master["ingresses"]
    assert {"protocol": "UDP", "description": "NTP", "port": 123, "v4CidrBlocks": ["0.0.0.0/0"]} in master["egresses"]


def test_node_rules_open_nodeports_only_to_the_ingress_clients():
    spec = node_rules(["10.140.0.0/24"], "10.112.0.0/16", "10.96.0.0/16", ["198.51.100.0/24"])
    nodeports = next(r for r in spec.ingress if r.description.startswith("NodePorts"))
    assert (nodeports.from_port, nodeports.to_port, nodeports.cidrs) == (30000, 32767, ("198.51.100.0/24",))
    assert not any(r.port in (22, 443, 6443) for r in spec.ingress)


def test_the_kubeconfig_output_uses_yc_and_holds_no_credential():
    text = kubeconfig("cat123", "https://203.0.113.5", "-----BEGIN CERTIFICATE-----\nabc\n")
    document = yaml.safe_load(text)
    cluster = document["clusters"][0]["cluster"]
    assert cluster["server"] == "https://203.0.113.5"
    assert base64.b64decode(cluster["certificate-authority-data"]).decode().startswith("-----BEGIN CERTIFICATE")
    user = document["users"][0]["user"]
    assert set(user) == {"exec"} and user["exec"]["command"] == "yc"
    assert user["exec"]["args"][:2] == ["k8s", "create-token"]


def _installed_by_the_deploy_jobs(command: str) -> bool:
    """Whether the jobs that run ``pulumi up`` install ``command``: the Pulumi image has the Pulumi
    CLI and Python; anything else would have to be installed by the job's own scripts."""
    ci = yaml.safe_load((ROOT / ".gitlab-ci.yml").read_text())
    setup = " ".join([*ci[".pulumi"]["before_script"],
                      *(ROOT / "scripts" / "ci" / "pulumi-login.sh").read_text().splitlines()])
    return command in ("pulumi", "python3") or f"install {command}" in setup or f"/{command} " in setup


def test_the_provider_authenticates_with_what_the_deploy_job_has(run_component):
    """The kubernetes provider's kubeconfig execs nothing the deploy job lacks: it carries the IAM
    token of the Yandex provider's own credentials (data source yandex_client_config)."""
    seen: dict[str, str] = {}

    def program() -> None:
        cluster = ManagedKubernetes("k8s", cluster_args(), LABELS)
        pulumi.Output.unsecret(cluster.provider_kubeconfig).apply(lambda text: seen.setdefault("kubeconfig", text))

    run_component(program)
    users = [u["user"] for u in yaml.safe_load(seen["kubeconfig"])["users"]]
    missing = [u["exec"]["command"] for u in users if "exec" in u
               and not _installed_by_the_deploy_jobs(u["exec"]["command"])]
    assert not missing, f"the kubeconfig execs {missing}, which the jobs running `pulumi up` do not install"
    assert users == [{"token": "(getClientConfig.iamToken)"}]


CLUSTER_LOOKUP = "yandex:index/getKubernetesCluster:getKubernetesCluster"
GROUP_LOOKUP = "yandex:index/getKubernetesNodeGroup:getKubernetesNodeGroup"


def test_versions_follow_yandexs_channels():
    assert "1.29" not in VERSIONS and {"1.30", "1.33", "1.34"} <= set(VERSIONS)
    check_version("1.34", "RAPID")
    with pytest.raises(ValidationError, match=r"Kubernetes 1\.34 is not offered on the STABLE release channel"):
        check_version("1.34", "STABLE")
    with pytest.raises(ValidationError, match=r"Kubernetes version '1\.29' is not offered"):
        check_version("1.29")


def test_a_forced_upgrade_does_not_plan_a_downgrade(run_component):
    """Yandex moved the master and the node groups to 1.34 (auto-upgrade): the plan keeps 1.34, not the
    configured 1.33, and says so."""
    rec = run_component(lambda: ManagedKubernetes("k8s", cluster_args(version="1.33"), LABELS), outputs={
        CLUSTER_LOOKUP: {"masters": [{"version": "1.34"}]},
        GROUP_LOOKUP: {"versionInfos": [{"currentVersion": "1.34"}]},
    })
    assert rec.one("KubernetesCluster").inputs["master"]["version"] == "1.34"
    assert {g.name: g.inputs["version"] for g in rec.of_type("KubernetesNodeGroup")} == {"k8s-cpu": "1.34",
                                                                                         "k8s-gpu": "1.34"}
    assert any("Yandex has upgraded the master of k8s to 1.34 (auto-upgrade), past the configured 1.33" in w
               for w in rec.plan.warnings)


def test_a_configured_upgrade_is_planned(run_component):
    rec = run_component(lambda: ManagedKubernetes("k8s", cluster_args(version="1.33"), LABELS),
                        outputs={CLUSTER_LOOKUP: {"masters": [{"version": "1.32"}]}})
    assert rec.one("KubernetesCluster").inputs["master"]["version"] == "1.33"
    assert rec.plan.warnings == []


def test_without_auto_upgrade_the_configured_version_is_planned(run_component):
    rec = run_component(lambda: ManagedKubernetes("k8s", cluster_args(version="1.33", auto_upgrade=False), LABELS),
                        outputs={CLUSTER_LOOKUP: {"masters": [{"version": "1.34"}]}})
    cluster = rec.one("KubernetesCluster").inputs["master"]
    assert cluster["version"] == "1.33" and cluster["maintenancePolicy"]["autoUpgrade"] is False


def test_service_range_no_wider_than_kube_apiserver_allows():
    with pytest.raises(ValidationError, match=r"service CIDR 10\.0\.0\.0/10 is invalid: use a private range between"):
        cluster_args(service_ipv4_range="10.0.0.0/10")
    cluster_args(service_ipv4_range="10.96.0.0/12", cluster_ipv4_range="10.112.0.0/16")


def test_kubeconfig_output_is_secret(run_component):
    def program() -> None:
        cluster = ManagedKubernetes("k8s", cluster_args(), LABELS)
        pulumi.export("kubeconfig", cluster.kubeconfig)
        pulumi.export("cluster_id", cluster.cluster_id)

    rec = run_component(program)
    assert rec.plan.outputs == {"kubeconfig": "[secret]", "cluster_id": "(k8s-cluster.id)"}
