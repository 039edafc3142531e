"""The stage's private network: a VPC, one subnet per zone, a NAT gateway and security groups.

Subnets take private (RFC 1918) CIDRs between /16 and /28. Egress to the internet goes through
a shared NAT gateway (route ``0.0.0.0/0``), so hosts without a public address (the database,
the CI runner) still reach package mirrors and registries. Security groups are declared as data
(:class:`SecurityGroupSpec`), so the rule sets can be reviewed and tested as plain values; a
rule may name another group of the same network instead of CIDRs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import pulumi

from components.base import StageComponent, ValidationError
from components.yc import yandex

Zone = Literal["ru-central1-a", "ru-central1-b", "ru-central1-d"]
ZONES: tuple[str, ...] = get_args(Zone)
PROTOCOLS = ("TCP", "UDP", "ICMP", "ANY")
PREFIX_RANGE = (16, 28)
ANYWHERE = "0.0.0.0/0"
_PRIVATE = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))

# Ports of the partner stage's hosts.
SERVICE_PORT = 8080
TRITON_HTTP_PORT = 8000
TRITON_GRPC_PORT = 8001
TRITON_METRICS_PORT = 8002
PROMETHEUS_PORT = 9090
GRAFANA_PORT = 3000
SSH_PORT = 22
POSTGRES_PORT = 6432


def check_cidr(cidr: str, what: str = "CIDR") -> ipaddress.IPv4Network:
    try:
        network = ipaddress.ip_network(cidr, strict=True)
    except ValueError as exc:
        raise ValidationError(
            f"{what} {cidr!r} is not a valid IPv4 CIDR ({exc}): write it as address/prefix with the host "
            "bits zero, e.g. 203.0.113.0/24 or 198.51.100.7/32"
        ) from None
    if not isinstance(network, ipaddress.IPv4Network):
        raise ValidationError(f"{what} {cidr!r} is IPv6: only IPv4 CIDRs are supported here")
    return network


def check_subnet_cidr(cidr: str) -> ipaddress.IPv4Network:
    network = check_cidr(cidr, "subnet CIDR")
    if not any(network.subnet_of(private) for private in _PRIVATE):
        raise ValidationError(
            f"subnet CIDR {cidr} is not private: use a range inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16"
        )
    low, high = PREFIX_RANGE
    if not low <= network.prefixlen <= high:
        raise ValidationError(f"subnet CIDR {cidr} has prefix /{network.prefixlen}: allowed /{low} to /{high}")
    return network


#: Targets Yandex's security groups define themselves (``predefined_target``).
SELF = "self_security_group"
LB_HEALTHCHECKS = "loadbalancer_healthchecks"
PREDEFINED_TARGETS = (SELF, LB_HEALTHCHECKS)


@dataclass(frozen=True)
class SgRule:
    """One security group rule: a protocol, a port or port range, and CIDRs, another group of the
    same network or a predefined target (:data:`PREDEFINED_TARGETS`)."""

    description: str
    protocol: str = "TCP"
    port: int | None = None
    from_port: int | None = None
    to_port: int | None = None
    cidrs: tuple[str, ...] = ()
    #: Name of a security group of the same network (traffic from/to its members).
    group: str | None = None
    #: ``loadbalancer_healthchecks`` (Yandex's load-balancer health checkers) or
    #: ``self_security_group`` (the members of the rule's own group).
    predefined: str | None = None

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValidationError(f"rule {self.description!r}: protocol {self.protocol!r} is invalid: "
                                  f"allowed {', '.join(PROTOCOLS)}")
        for name, value in (("port", self.port), ("from_port", self.from_port), ("to_port", self.to_port)):
            if value is not None and not 0 <= value <= 65535:
                raise ValidationError(f"rule {self.description!r}: {name} {value} is out of range: allowed 0-65535")
        if self.port is not None and (self.from_port is not None or self.to_port is not None):
            raise ValidationError(f"rule {self.description!r}: give either port or from_port/to_port, not both")
        if (self.from_port is None) != (self.to_port is None):
            raise ValidationError(f"rule {self.description!r}: from_port and to_port go together")
        if self.from_port is not None and self.to_port is not None and self.from_port > self.to_port:
            raise ValidationError(f"rule {self.description!r}: from_port {self.from_port} is above "
                                  f"to_port {self.to_port}")
        if sum((bool(self.cidrs), self.group is not None, self.predefined is not None)) != 1:
            raise ValidationError(f"rule {self.description!r}: give CIDRs, a security group name or a predefined "
                                  "target, exactly one")
        if self.predefined is not None and self.predefined not in PREDEFINED_TARGETS:
            raise ValidationError(f"rule {self.description!r}: predefined target {self.predefined!r} is invalid: "
                                  f"allowed {', '.join(PREDEFINED_TARGETS)}")
        for cidr in self.cidrs:
            check_cidr(cidr, f"rule {self.description!r}: CIDR")


@dataclass(frozen=True)
class SecurityGroupSpec:
    description: str
    ingress: tuple[SgRule, ...] = ()
    egress: tuple[SgRule, ...] = ()


@dataclass(frozen=True)
class SubnetSpec:
    zone: str
    cidr: str


@dataclass(frozen=True)
class StageNetworkArgs:
    folder_id: str
    subnets: Sequence[SubnetSpec]
    #: Route 0.0.0.0/0 through a NAT gateway (hosts without a public address reach the internet).
    nat: bool = True
    #: Security groups by name, in creation order: a rule may only name a group listed before its
    #: own (or its own group, meaning traffic between the group's members).
    security_groups: Mapping[str, SecurityGroupSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.subnets:
            raise ValidationError("the network needs at least one subnet")
        seen_zones: set[str] = set()
        networks: list[tuple[str, ipaddress.IPv4Network]] = []
        for subnet in self.subnets:
            if subnet.zone not in ZONES:
                raise ValidationError(f"subnet zone {subnet.zone!r} is invalid: allowed {', '.join(ZONES)}")
            if subnet.zone in seen_zones:
                raise ValidationError(f"two subnets in {subnet.zone}: give one subnet per zone")
            seen_zones.add(subnet.zone)
            network = check_subnet_cidr(subnet.cidr)
            for other_zone, other in networks:
                if network.overlaps(other):
                    raise ValidationError(f"subnet CIDRs {subnet.cidr} ({subnet.zone}) and {other} ({other_zone}) "
                                          "overlap: give each subnet its own range")
            networks.append((subnet.zone, network))
        defined: list[str] = []
        for name, spec in self.security_groups.items():
            for rule in (*spec.ingress, *spec.egress):
                if rule.group is not None and rule.group != name and rule.group not in defined:
                    raise ValidationError(
                        f"security group {name!r}: rule {rule.description!r} names group {rule.group!r}, which "
                        f"is not defined before it; defined so far: {', '.join(defined) or 'none'}"
                    )
            defined.append(name)

    @property
    def cidrs(self) -> list[str]:
        return [s.cidr for s in self.subnets]


def _dedupe(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


class StageNetwork(StageComponent):
    """VPC + NAT gateway + route table + subnets + security groups."""

    component = "network"

    def __init__(self, name: str, args: StageNetworkArgs, labels: dict[str, str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("network:StageNetwork", name, labels, opts)
        self.network = yandex.VpcNetwork(
            self.child_name("vpc"),
            yandex.VpcNetworkArgs(folder_id=args.folder_id, name=self.child_name("vpc"),
                                  description="Private network of the stage", labels=self.labels),
            opts=self.child(),
        )
        route_table_id: pulumi.Output[str] | None = None
        if args.nat:
            gateway = yandex.VpcGateway(
                self.child_name("nat"),
                yandex.VpcGatewayArgs(folder_id=args.folder_id, name=self.child_name("nat"),
                                      description="Egress to the internet for hosts without a public address",
                                      shared_egress_gateway=yandex.VpcGatewaySharedEgressGatewayArgs(),
                                      labels=self.labels),
                opts=self.child(),
            )
            route_table = yandex.VpcRouteTable(
                self.child_name("egress"),
                yandex.VpcRouteTableArgs(
                    folder_id=args.folder_id, network_id=self.network.id, name=self.child_name("egress"),
                    static_routes=[yandex.VpcRouteTableStaticRouteArgs(destination_prefix=ANYWHERE,
                                                                       gateway_id=gateway.id)],
                    labels=self.labels),
                opts=self.child(),
            )
            route_table_id = route_table.id

        self.subnet_ids: dict[str, pulumi.Output[str]] = {}
        for subnet in args.subnets:
            resource = yandex.VpcSubnet(
                self.child_name(subnet.zone),
                yandex.VpcSubnetArgs(
                    folder_id=args.folder_id, network_id=self.network.id, name=self.child_name(subnet.zone),
                    zone=subnet.zone, v4_cidr_blocks=[subnet.cidr], route_table_id=route_table_id,
                    labels=self.labels),
                opts=self.child(),
            )
            self.subnet_ids[subnet.zone] = resource.id

        self.security_group_ids: dict[str, pulumi.Output[str]] = {}
        for group_name, spec in args.security_groups.items():
            group = yandex.VpcSecurityGroup(
                self.child_name(group_name),
                yandex.VpcSecurityGroupArgs(
                    folder_id=args.folder_id, network_id=self.network.id, name=self.child_name(group_name),
                    description=spec.description,
                    ingresses=[self._ingress(group_name, r) for r in spec.ingress] or None,
                    egresses=[self._egress(group_name, r) for r in spec.egress] or None,
                    labels=self.labels),
                opts=self.child(),
            )
            self.security_group_ids[group_name] = group.id

        self.network_id: pulumi.Output[str] = self.network.id
        self.cidrs: list[str] = args.cidrs
        self.register_outputs({
            "network_id": self.network_id,
            "subnet_ids": self.subnet_ids,
            "security_group_ids": self.security_group_ids,
        })

    def _target(self, own: str, rule: SgRule) -> dict[str, object]:
        ports: dict[str, object] = {"port": rule.port, "from_port": rule.from_port, "to_port": rule.to_port}
        if rule.predefined is not None:
            return {**ports, "predefined_target": rule.predefined}
        if rule.group == own:
            return {**ports, "predefined_target": SELF}
        if rule.group is not None:
            return {**ports, "security_group_id": self.security_group_ids[rule.group]}
        return {**ports, "v4_cidr_blocks": list(rule.cidrs)}

    def _ingress(self, own: str, rule: SgRule) -> yandex.VpcSecurityGroupIngressArgs:
        return yandex.VpcSecurityGroupIngressArgs(protocol=rule.protocol, description=rule.description,
                                                  **self._target(own, rule))  # type: ignore[arg-type]

    def _egress(self, own: str, rule: SgRule) -> yandex.VpcSecurityGroupEgressArgs:
        return yandex.VpcSecurityGroupEgressArgs(protocol=rule.protocol, description=rule.description,
                                                 **self._target(own, rule))  # type: ignore[arg-type]


# --- the partner stage's rule sets -------------------------------------------------------------

HTTPS_PORT = 443
HTTP_PORT = 80


def inference_host_rules(vpc_cidrs: Sequence[str], service_cidrs: Sequence[str], admin_cidrs: Sequence[str],
                         ssh: bool, tls: bool = False) -> SecurityGroupSpec:
    """The GPU host: the service API to ``service_cidrs`` (with ``tls``: HTTPS on 443 and the redirect
    on 80, and the service's own port only to the VPC and the admin CIDRs); Triton, Prometheus and
    Grafana to the VPC and the admin CIDRs; SSH from the admin CIDRs only when ``ssh``; all egress."""
    internal = _dedupe([*vpc_cidrs, *admin_cidrs])
    public = _dedupe(service_cidrs)
    api = [SgRule("inference service API over HTTPS (TLS proxy)", port=HTTPS_PORT, cidrs=public),
           SgRule("HTTP: redirect to HTTPS, ACME challenges", port=HTTP_PORT, cidrs=public),
           SgRule("inference service port (behind the TLS proxy)", port=SERVICE_PORT, cidrs=internal)] if tls else \
        [SgRule("inference service API", port=SERVICE_PORT, cidrs=public)]
    ingress = [
        *api,
        SgRule("Triton HTTP, gRPC and metrics", from_port=TRITON_HTTP_PORT, to_port=TRITON_METRICS_PORT,
               cidrs=internal),
        SgRule("Prometheus", port=PROMETHEUS_PORT, cidrs=internal),
        SgRule("Grafana", port=GRAFANA_PORT, cidrs=internal),
    ]
    if ssh:
        ingress.append(SgRule("SSH from the admin networks", port=SSH_PORT, cidrs=_dedupe(admin_cidrs)))
    egress = [SgRule("image pulls, Object Storage, Lockbox, PostgreSQL, DNS", protocol="ANY", cidrs=(ANYWHERE,))]
    return SecurityGroupSpec("GPU inference host", tuple(ingress), tuple(egress))


def database_rules(client_group: str) -> SecurityGroupSpec:
    """Managed PostgreSQL: the connection pooler port from the client group's members only."""
    return SecurityGroupSpec(
        "Managed PostgreSQL",
        ingress=(SgRule("PostgreSQL (connection pooler) from the inference host", port=POSTGRES_PORT,
                        group=client_group),),
    )


def runner_rules(admin_cidrs: Sequence[str], ssh: bool) -> SecurityGroupSpec:
    """The CI runner: nothing inbound except SSH from the admin CIDRs when ``ssh``; all egress."""
    ingress = (SgRule("SSH from the admin networks", port=SSH_PORT, cidrs=_dedupe(admin_cidrs)),) if ssh else ()
    egress = (SgRule("GitLab, registries, job traffic", protocol="ANY", cidrs=(ANYWHERE,)),)
    return SecurityGroupSpec("GitLab Runner", ingress, egress)
