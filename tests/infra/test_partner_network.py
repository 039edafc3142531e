"""Network of the partner stage: CIDR rules, the security-group rule sets exactly, the NAT route."""

from __future__ import annotations

import pytest

from components.base import ValidationError
from components.network import (
    SecurityGroupSpec,
    SgRule,
    StageNetwork,
    StageNetworkArgs,
    SubnetSpec,
    database_rules,
    inference_host_rules,
    runner_rules,
)

LABELS = {"project": "aistack", "stage": "partner"}
VPC = ["10.130.0.0/24"]


def rule_tuples(rules: tuple[SgRule, ...]) -> list[tuple[object, ...]]:
    return [(r.description, r.protocol, r.port, r.from_port, r.to_port, r.cidrs, r.group) for r in rules]


def test_inference_host_rules_without_ssh():
    spec = inference_host_rules(VPC, ["0.0.0.0/0"], ["203.0.113.0/24"], ssh=False)
    assert rule_tuples(spec.ingress) == [
        ("inference service API", "TCP", 8080, None, None, ("0.0.0.0/0",), None),
        ("Triton HTTP, gRPC and metrics", "TCP", None, 8000, 8002, ("10.130.0.0/24", "203.0.113.0/24"), None),
        ("Prometheus", "TCP", 9090, None, None, ("10.130.0.0/24", "203.0.113.0/24"), None),
        ("Grafana", "TCP", 3000, None, None, ("10.130.0.0/24", "203.0.113.0/24"), None),
    ]
    assert all(r.port != 22 for r in spec.ingress), "SSH is off by default"
    assert rule_tuples(spec.egress) == [
        ("image pulls, Object Storage, Lockbox, PostgreSQL, DNS", "ANY", None, None, None, ("0.0.0.0/0",), None)]


def test_inference_host_rules_with_ssh_and_an_allowlist():
    spec = inference_host_rules(VPC, ["198.51.100.0/24", "198.51.100.0/24"], ["203.0.113.7/32"], ssh=True)
    by_description = {r.description: r for r in spec.ingress}
    assert by_description["inference service API"].cidrs == ("198.51.100.0/24",), "duplicates are dropped"
    assert by_description["SSH from the admin networks"].port == 22
    assert by_description["SSH from the admin networks"].cidrs == ("203.0.113.7/32",)
    # Internal ports stay closed to the service allowlist.
    for name in ("Triton HTTP, gRPC and metrics", "Prometheus", "Grafana"):
        assert by_description[name].cidrs == ("10.130.0.0/24", "203.0.113.7/32")


def test_internal_ports_are_vpc_only_without_admin_networks():
    spec = inference_host_rules(VPC, ["0.0.0.0/0"], [], ssh=False)
    for rule in spec.ingress[1:]:
        assert rule.cidrs == ("10.130.0.0/24",)


def test_database_and_runner_rules():
    db = database_rules("inference")
    assert rule_tuples(db.ingress) == [
        ("PostgreSQL (connection pooler) from the inference host", "TCP", 6432, None, None, (), "inference")]
    assert db.egress == ()
    assert runner_rules(["203.0.113.0/24"], ssh=False).ingress == ()
    with_ssh = runner_rules(["203.0.113.0/24"], ssh=True)
    assert rule_tuples(with_ssh.ingress) == [
        ("SSH from the admin networks", "TCP", 22, None, None, ("203.0.113.0/24",), None)]
    assert [r.protocol for r in with_ssh.egress] == ["ANY"]


def test_network_resources_and_security_groups_as_registered(run_component):
    groups = {"inference": inference_host_rules(VPC, ["0.0.0.0/0"], ["203.0.113.0/24"], ssh=True),
              "database": database_rules("inference")}
    rec = run_component(lambda: StageNetwork(
        "net", StageNetworkArgs(folder_id="f", subnets=[SubnetSpec("ru-central1-a", VPC[0])],
                                security_groups=groups), LABELS))
    route = rec.one("VpcRouteTable").inputs
    assert route["staticRoutes"] == [{"destinationPrefix": "0.0.0.0/0", "gatewayId": "(net-nat.id)"}]
    assert rec.one("VpcGateway").inputs["sharedEgressGateway"] == {}
    subnet = rec.one("VpcSubnet").inputs
    assert subnet["zone"] == "ru-central1-a" and subnet["v4CidrBlocks"] == VPC
    assert subnet["routeTableId"] == "(net-egress.id)" and subnet["networkId"] == "(net-vpc.id)"
    sgs = {r.name: r.inputs for r in rec.of_type("VpcSecurityGroup")}
    assert sgs["net-inference"]["ingresses"] == [
        {"protocol": "TCP", "description": "inference service API", "port": 8080, "v4CidrBlocks": ["0.0.0.0/0"]},
        {"protocol": "TCP", "description": "Triton HTTP, gRPC and metrics", "fromPort": 8000, "toPort": 8002,
         "v4CidrBlocks": ["10.130.0.0/24", "203.0.113.0/24"]},
        {"protocol": "TCP", "description": "Prometheus", "port": 9090,
         "v4CidrBlocks": ["10.130.0.0/24", "203.0.113.0/24"]},
        {"protocol": "TCP", "description": "Grafana", "port": 3000,
         "v4CidrBlocks": ["10.130.0.0/24", "203.0.113.0/24"]},
        {"protocol": "TCP", "description": "SSH from the admin networks", "port": 22,
         "v4CidrBlocks": ["203.0.113.0/24"]},
    ]
    assert sgs["net-inference"]["egresses"] == [
        {"protocol": "ANY", "description": "image pulls, Object Storage, Lockbox, PostgreSQL, DNS",
         "v4CidrBlocks": ["0.0.0.0/0"]}]
    assert sgs["net-database"]["ingresses"] == [
        {"protocol": "TCP", "description": "PostgreSQL (connection pooler) from the inference host", "port": 6432,
         "securityGroupId": "(net-inference.id)"}]
    assert "egresses" not in sgs["net-database"]
    assert sgs["net-database"]["labels"]["component"] == "network"


def test_a_group_may_allow_its_own_members(run_component):
    groups = {"cluster": SecurityGroupSpec("c", ingress=(SgRule("peers", protocol="ANY", group="cluster"),))}
    rec = run_component(lambda: StageNetwork(
        "net", StageNetworkArgs(folder_id="f", subnets=[SubnetSpec("ru-central1-b", "10.1.0.0/24")], nat=False,
                                security_groups=groups), LABELS))
    assert rec.one("VpcSecurityGroup").inputs["ingresses"] == [
        {"protocol": "ANY", "description": "peers", "predefinedTarget": "self_security_group"}]
    assert rec.of_type("VpcGateway") == [] and "routeTableId" not in rec.one("VpcSubnet").inputs


@pytest.mark.parametrize(("subnets", "message"), [
    ([SubnetSpec("ru-central1-c", "10.0.0.0/24")], "subnet zone 'ru-central1-c' is invalid: allowed ru-central1-a, "
                                                   "ru-central1-b, ru-central1-d"),
    ([SubnetSpec("ru-central1-a", "8.8.8.0/24")], "subnet CIDR 8.8.8.0/24 is not private: use a range inside "
                                                  "10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16"),
    ([SubnetSpec("ru-central1-a", "10.0.0.0/30")], "subnet CIDR 10.0.0.0/30 has prefix /30: allowed /16 to /28"),
    ([SubnetSpec("ru-central1-a", "10.0.0.1/24")], "subnet CIDR '10.0.0.1/24' is not a valid IPv4 CIDR"),
    ([SubnetSpec("ru-central1-a", "10.0.0.0/16"), SubnetSpec("ru-central1-b", "10.0.1.0/24")], "overlap"),
    ([SubnetSpec("ru-central1-a", "10.0.0.0/24"), SubnetSpec("ru-central1-a", "10.0.1.0/24")],
     "two subnets in ru-central1-a: give one subnet per zone"),
    ([], "the network needs at least one subnet"),
])
def test_invalid_subnets_are_refused(subnets, message):
    with pytest.raises(ValidationError, match=message):
        StageNetworkArgs(folder_id="f", subnets=subnets)


def test_a_rule_may_not_name_a_later_group():
    groups = {"database": database_rules("inference"),
              "inference": inference_host_rules(VPC, ["0.0.0.0/0"], [], ssh=False)}
    with pytest.raises(ValidationError, match=r"security group 'database': rule .* names group 'inference', which "
                                              r"is not defined before it; defined so far: none"):
        StageNetworkArgs(folder_id="f", subnets=[SubnetSpec("ru-central1-a", VPC[0])], security_groups=groups)


@pytest.mark.parametrize(("kw", "message"), [
    ({"protocol": "SCTP", "port": 1, "cidrs": ("10.0.0.0/8",)},
     "protocol 'SCTP' is invalid: allowed TCP, UDP, ICMP, ANY"),
    ({"port": 70000, "cidrs": ("10.0.0.0/8",)}, "port 70000 is out of range: allowed 0-65535"),
    ({"port": 1, "from_port": 1, "to_port": 2, "cidrs": ("10.0.0.0/8",)}, "either port or from_port/to_port"),
    ({"from_port": 9, "to_port": 1, "cidrs": ("10.0.0.0/8",)}, "from_port 9 is above to_port 1"),
    ({"port": 1}, "give CIDRs, a security group name or a predefined target, exactly one"),
    ({"port": 1, "cidrs": ("10.0.0.0/8",), "group": "g"},
     "give CIDRs, a security group name or a predefined target, exactly one"),
    ({"port": 1, "predefined": "the_internet"}, "predefined target 'the_internet' is invalid: allowed "
                                                "self_security_group, loadbalancer_healthchecks"),
    ({"port": 1, "cidrs": ("example.com",)}, "CIDR 'example.com' is not a valid IPv4 CIDR"),
])
def test_invalid_rules_are_refused(kw, message):
    with pytest.raises(ValidationError, match=message):
        SgRule("r", **kw)  # type: ignore[arg-type]
