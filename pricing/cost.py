"""Monthly cost of a stack, priced from the resources it registers (type token and inputs).

Each cloud resource is priced by its type from the price book (``pricing/yandex-cloud.yaml``,
:mod:`pricing.book`) and the stack's usage assumptions (``aistack:usage``). A type that costs
nothing by itself (IAM bindings, networks, security groups, Kubernetes objects that run on priced
nodes) is listed as free; a type this model does not know is listed as unpriced, never dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from pricing.book import Price, PriceBook
from stacks.config import UsageAssumptions

#: The source document's monthly estimate of each stage (USD) and what it lists.
SEED_ESTIMATES: dict[str, tuple[float, str]] = {
    "mvp": (2.5, "Object Storage 100 GB ~$2 + Serverless Containers 1M requests ~$0.5"),
    "partner": (235.0, "Compute VM ~$20 + Managed PostgreSQL ~$15 + NVIDIA T4 GPU ~$200"),
    "prod": (780.0, "Managed Kubernetes ~$50 + ClickHouse ~$100 + GPU cluster ~$600 + ELK ~$30"),
}

HOURS_PER_MONTH = 730.0

#: Resource kinds that cost nothing by themselves (what they stand for is priced elsewhere).
FREE_KINDS = frozenset({
    "IamServiceAccount", "IamServiceAccountStaticAccessKey", "IamServiceAccountKey",
    "ResourcemanagerFolderIamMember", "KmsSymmetricKeyIamMember", "LockboxSecretIamMember",
    "ContainerRegistryIamBinding", "ServerlessContainerIamBinding", "StorageBucketIamBinding",
    "LockboxSecretVersion",  # one version is priced with its secret
    "StorageObject",  # stored bytes are priced with the bucket (usage.storedGb)
    "ContainerRepository", "ContainerRepositoryLifecyclePolicy",
    "VpcNetwork", "VpcSubnet", "VpcSecurityGroup", "VpcRouteTable", "VpcDefaultSecurityGroup",
    "MdbPostgresqlDatabase", "MdbPostgresqlUser", "MdbClickhouseDatabase", "MdbClickhouseUser",
    "RandomPassword", "RandomString", "RandomId",
    "Provider",
})
#: Packages whose resources run inside priced infrastructure (Kubernetes objects on priced nodes).
FREE_PACKAGES = frozenset({"kubernetes", "random", "pulumi"})


class CostError(Exception):
    """The stack cannot be priced (a price is missing from the book, a preset is unknown)."""


@dataclass(frozen=True)
class CostLine:
    what: str
    quantity: float
    unit: str
    unit_price: float
    monthly: float
    estimate: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"what": self.what, "quantity": round(self.quantity, 6), "unit": self.unit,
                "unit_price": self.unit_price, "monthly": round(self.monthly, 4)}


@dataclass
class CostItem:
    urn: str
    type: str
    name: str
    status: str  # "priced" | "free" | "unpriced"
    lines: list[CostLine] = field(default_factory=list)
    note: str = ""

    @property
    def monthly(self) -> float:
        return sum(line.monthly for line in self.lines)

    @property
    def estimate(self) -> bool:
        return any(line.estimate for line in self.lines)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"urn": self.urn, "type": self.type, "name": self.name,
                                "monthly": round(self.monthly, 4), "lines": [ln.to_json() for ln in self.lines]}
        if self.status != "priced":
            data["status"] = self.status
        if self.note:
            data["note"] = self.note
        return data


@dataclass
class CostReport:
    stack: str
    currency: str
    prices_as_of: str
    items: list[CostItem]
    assumptions: dict[str, Any]
    budget: float | None = None

    @property
    def monthly_total(self) -> float:
        return sum(item.monthly for item in self.items)

    @property
    def unpriced(self) -> list[CostItem]:
        return [i for i in self.items if i.status == "unpriced"]

    @property
    def seed(self) -> tuple[float, str] | None:
        return SEED_ESTIMATES.get(self.stack)

    def to_json(self) -> dict[str, Any]:
        seed = self.seed
        return {
            "stack": self.stack,
            "currency": self.currency,
            "monthly_total": round(self.monthly_total, 2),
            "prices_as_of": self.prices_as_of,
            "items": [i.to_json() for i in self.items if i.status != "free"],
            "free": [{"type": i.type, "name": i.name} for i in self.items if i.status == "free"],
            "unpriced": [{"urn": i.urn, "type": i.type, "name": i.name, "reason": i.note} for i in self.unpriced],
            "assumptions": self.assumptions,
            "budget": self.budget,
            "seed_estimate": {"monthly": seed[0], "currency": "USD", "breakdown": seed[1]} if seed else None,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)


class PricedResource(Protocol):
    """A cloud resource as the engine registers it: URN, type token, name and camelCase inputs."""

    @property
    def urn(self) -> str: ...

    @property
    def type(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def inputs(self) -> Mapping[str, Any]: ...


class _Pricer:
    """Turns one resource into cost lines; shared helpers for the per-type functions."""

    def __init__(self, book: PriceBook, usage: UsageAssumptions, currency: str) -> None:
        self.book = book
        self.usage = usage
        self.currency = currency

    def price(self, key: str) -> Price:
        try:
            return self.book.price(key)
        except KeyError as exc:
            raise CostError(str(exc).strip("'\"")) from None

    def line(self, what: str, key: str, quantity: float, free: bool = True) -> CostLine:
        price = self.price(key)
        billed = max(0.0, quantity - price.free_units) if free and self.usage.free_tier else quantity
        unit_price = price.amount(self.currency)
        label = what if billed == quantity else f"{what} (after {price.free_units:g} {price.unit} free)"
        return CostLine(label, billed, price.unit, unit_price, billed * unit_price, price.estimate)


def _get(data: Mapping[str, Any] | None, path: str, default: Any = None) -> Any:
    value: Any = data
    for part in path.split("."):
        if isinstance(value, list):
            value = value[0] if value else None
        if not isinstance(value, Mapping):
            return default
        value = value.get(part)
    return default if value is None else value


def _serverless_container(r: PricedResource, p: _Pricer) -> list[CostLine]:
    u = p.usage
    memory_gb = float(_get(r.inputs, "memory", 128)) / 1024
    cores = float(_get(r.inputs, "cores", 1)) * float(_get(r.inputs, "coreFraction", 100)) / 100
    busy_hours = u.requests_per_month * u.mean_duration_ms / 3_600_000
    lines = [
        p.line("invocations", "serverless.invocations", u.requests_per_month / 1_000_000),
        p.line(f"memory {memory_gb:g} GB x {busy_hours:.2f} busy h", "serverless.memory", memory_gb * busy_hours),
        p.line(f"vCPU {cores:g} x {busy_hours:.2f} busy h", "serverless.vcpu", cores * busy_hours),
    ]
    provisioned = int(_get(r.inputs, "provisionPolicy.minInstances", 0))
    if provisioned:
        hours = provisioned * u.hours_per_month
        lines += [
            p.line(f"{provisioned} provisioned instance(s): memory", "serverless.provisioned.memory",
                   memory_gb * hours, free=False),
            p.line(f"{provisioned} provisioned instance(s): vCPU", "serverless.provisioned.vcpu", cores * hours,
                   free=False),
        ]
    return lines


def _storage_bucket(r: PricedResource, p: _Pricer) -> list[CostLine]:
    u = p.usage
    klass = str(_get(r.inputs, "defaultStorageClass", "STANDARD")).lower()
    klass = {"standard_ia": "cold", "glacier": "ice"}.get(klass, klass)
    put, get = p.price("storage.put_ops"), p.price("storage.get_ops")
    return [
        p.line(f"{u.stored_gb:g} GB stored ({klass})", f"storage.{klass}.gb_month", u.stored_gb),
        p.line("write requests", "storage.put_ops", u.put_requests_per_month / _unit_size(put.unit)),
        p.line("read requests", "storage.get_ops", u.get_requests_per_month / _unit_size(get.unit)),
    ]


def _unit_size(unit: str) -> float:
    """``10K operations`` -> 10000; ``1M invocations`` -> 1e6; plain units -> 1."""
    head = unit.split()[0].upper()
    for suffix, factor in (("K", 1e3), ("M", 1e6)):
        if head.endswith(suffix) and head[:-1].replace(".", "").isdigit():
            return float(head[:-1]) * factor
    return float(head) if head.replace(".", "").isdigit() else 1.0


def _registry(r: PricedResource, p: _Pricer) -> list[CostLine]:
    return [p.line(f"{p.usage.registry_gb:g} GB of images", "registry.gb_month", p.usage.registry_gb)]


def _logging_group(r: PricedResource, p: _Pricer) -> list[CostLine]:
    return [p.line(f"{p.usage.log_gb_per_month:g} GB of logs written", "logging.ingest", p.usage.log_gb_per_month)]


def _lockbox_secret(r: PricedResource, p: _Pricer) -> list[CostLine]:
    return [p.line("1 active secret version", "lockbox.secret_version", 1, free=False)]


def _kms_key(r: PricedResource, p: _Pricer) -> list[CostLine]:
    return [p.line("1 active key version", "kms.key_version", 1, free=False)]


def _vm_lines(p: _Pricer, label: str, platform: str, resources: Mapping[str, Any], preemptible: bool,
              hours: float, count: float = 1) -> list[CostLine]:
    """vCPU, RAM and GPU lines of ``count`` VMs running ``hours`` a month."""
    cores = float(resources.get("cores") or 0)
    memory = float(resources.get("memory") or 0)
    gpus = float(resources.get("gpus") or 0)
    fraction = int(resources.get("coreFraction") or 100)
    base = f"compute.{platform}" + (".preemptible" if preemptible else "")
    gpu_platform = gpus > 0 or platform in ("standard-v3-t4", "gpu-standard-v3")
    vcpu_key = f"{base}.vcpu" if gpu_platform else f"{base}.vcpu.{fraction}"
    what = f"{label}{' (preemptible)' if preemptible else ''}: {count:g} x {hours:g} h"
    lines = [
        p.line(f"{what}, {cores:g} vCPU" + ("" if gpu_platform else f" at {fraction}%"), vcpu_key,
               count * cores * hours, free=False),
        p.line(f"{what}, {memory:g} GB RAM", f"{base}.ram", count * memory * hours, free=False),
    ]
    if gpus:
        lines.append(p.line(f"{what}, {gpus:g} GPU", f"{base}.gpu", count * gpus * hours, free=False))
    return lines


def _disk_line(p: _Pricer, label: str, disk_type: str, size_gb: float, count: float = 1) -> CostLine:
    return p.line(f"{label}: {count:g} x {size_gb:g} GB {disk_type}", f"disk.{disk_type}.gb_month",
                  count * size_gb, free=False)


def _compute_instance(r: PricedResource, p: _Pricer) -> list[CostLine]:
    resources = r.inputs.get("resources") or {}
    gpus = float(resources.get("gpus") or 0)
    hours = p.usage.gpu_hours_per_month if gpus else p.usage.hours_per_month
    preemptible = bool(_get(r.inputs, "schedulingPolicy.preemptible", False))
    lines = _vm_lines(p, "VM", str(r.inputs.get("platformId", "standard-v3")), resources, preemptible, hours)
    boot = _get(r.inputs, "bootDisk.initializeParams", {})
    lines.append(_disk_line(p, "boot disk", str(boot.get("type", "network-hdd")), float(boot.get("size") or 0)))
    for nic in r.inputs.get("networkInterfaces") or []:
        if nic.get("nat") and not nic.get("natIpAddress"):
            lines.append(p.line(f"ephemeral public IP x {hours:g} h", "vpc.public_ip", hours, free=False))
    return lines


def _public_address(r: PricedResource, p: _Pricer) -> list[CostLine]:
    hours = p.usage.hours_per_month
    return [p.line(f"static public IP x {hours:g} h (in use)", "vpc.public_ip", hours, free=False)]


def _nat_gateway(r: PricedResource, p: _Pricer) -> list[CostLine]:
    hours = p.usage.hours_per_month
    return [p.line(f"NAT gateway x {hours:g} h", "vpc.nat_gateway", hours, free=False)]


def _network_balancer(r: PricedResource, p: _Pricer) -> list[CostLine]:
    hours = p.usage.hours_per_month
    return [p.line(f"network load balancer x {hours:g} h", "nlb.balancer", hours, free=False)]


def _mdb_host_lines(p: _Pricer, engine: str, preset_id: str, hosts: int, what: str) -> list[CostLine]:
    try:
        preset = p.book.preset(preset_id)
    except KeyError as exc:
        raise CostError(str(exc).strip("'\"")) from None
    hours = p.usage.hours_per_month
    label = f"{what} {preset_id}: {hosts} host(s) x {hours:g} h"
    return [
        p.line(f"{label}, {preset.cores:g} vCPU at {preset.core_fraction}%",
               f"mdb.{engine}.{preset.platform}.vcpu.{preset.core_fraction}", hosts * preset.cores * hours,
               free=False),
        p.line(f"{label}, {preset.memory_gb:g} GB RAM", f"mdb.{engine}.{preset.platform}.ram",
               hosts * preset.memory_gb * hours, free=False),
    ]


def _mdb_storage(p: _Pricer, engine: str, resources: Mapping[str, Any], hosts: int) -> CostLine:
    disk, size = str(resources.get("diskTypeId", "network-ssd")), float(resources.get("diskSize") or 0)
    return p.line(f"storage: {hosts} x {size:g} GB {disk}", f"mdb.{engine}.storage.{disk}.gb_month",
                  hosts * size, free=False)


def _postgresql(r: PricedResource, p: _Pricer) -> list[CostLine]:
    hosts = len(r.inputs.get("hosts") or []) or 1
    resources = _get(r.inputs, "config.resources", {})
    return [*_mdb_host_lines(p, "postgresql", str(resources.get("resourcePresetId")), hosts, "PostgreSQL"),
            _mdb_storage(p, "postgresql", resources, hosts)]


def _clickhouse(r: PricedResource, p: _Pricer) -> list[CostLine]:
    all_hosts = r.inputs.get("hosts") or []
    hosts = sum(1 for h in all_hosts if str(h.get("type", "CLICKHOUSE")).upper() == "CLICKHOUSE") or 1
    resources = _get(r.inputs, "clickhouse.resources", {})
    lines = [*_mdb_host_lines(p, "clickhouse", str(resources.get("resourcePresetId")), hosts, "ClickHouse"),
             _mdb_storage(p, "clickhouse", resources, hosts)]
    keepers = sum(1 for h in all_hosts if str(h.get("type", "")).upper() == "ZOOKEEPER")
    if keepers:
        zk = _get(r.inputs, "zookeeper.resources", {})
        lines += _mdb_host_lines(p, "clickhouse", str(zk.get("resourcePresetId", "b3-c1-m4")), keepers, "ZooKeeper")
        lines.append(_mdb_storage(p, "clickhouse", zk, keepers))
    return lines


def _k8s_master(r: PricedResource, p: _Pricer) -> list[CostLine]:
    regional = bool(_get(r.inputs, "master.regional"))
    hours = p.usage.hours_per_month
    kind = "regional" if regional else "zonal"
    return [p.line(f"{kind} master x {hours:g} h", f"k8s.master.{kind}", hours, free=False)]


def _k8s_node_group(r: PricedResource, p: _Pricer) -> list[CostLine]:
    template = r.inputs.get("instanceTemplate") or {}
    resources = template.get("resources") or {}
    gpus = float(resources.get("gpus") or 0)
    fixed = _get(r.inputs, "scalePolicy.fixedScale.size")
    auto = _get(r.inputs, "scalePolicy.autoScale", {})
    count = float(fixed if fixed is not None else auto.get("initial", auto.get("min", 1)) or 0)
    hours = p.usage.gpu_hours_per_month if gpus else p.usage.hours_per_month
    preemptible = bool(_get(template, "schedulingPolicy.preemptible", False))
    label = f"nodes ({'fixed' if fixed is not None else 'autoscaled, initial'} {count:g})"
    lines = _vm_lines(p, label, str(template.get("platformId", "standard-v3")), resources, preemptible, hours,
                      count)
    boot = template.get("bootDisk") or {}
    lines.append(_disk_line(p, "node boot disks", str(boot.get("type", "network-hdd")),
                            float(boot.get("size") or 64), count))
    return lines


PRICERS: dict[str, Callable[[PricedResource, _Pricer], list[CostLine]]] = {
    "ComputeInstance": _compute_instance,
    "VpcAddress": _public_address,
    "VpcGateway": _nat_gateway,
    "LbNetworkLoadBalancer": _network_balancer,
    "MdbPostgresqlCluster": _postgresql,
    "MdbClickhouseCluster": _clickhouse,
    "KubernetesCluster": _k8s_master,
    "KubernetesNodeGroup": _k8s_node_group,
    "ServerlessContainer": _serverless_container,
    "StorageBucket": _storage_bucket,
    "ContainerRegistry": _registry,
    "LoggingGroup": _logging_group,
    "LockboxSecret": _lockbox_secret,
    "KmsSymmetricKey": _kms_key,
}


def kind_of(token: str) -> str:
    return token.rpartition(":")[2]


def price_resources(stack: str, resources: Iterable[PricedResource], book: PriceBook, usage: UsageAssumptions,
                    currency: str = "USD", budget: float | None = None) -> CostReport:
    """Price every cloud resource of ``stack`` (component resources, which own no cloud resource,
    are left out by the caller)."""
    pricer = _Pricer(book, usage, currency)
    items: list[CostItem] = []
    for resource in resources:
        kind = kind_of(resource.type)
        item = CostItem(resource.urn, resource.type, resource.name, "priced")
        handler = PRICERS.get(kind)
        if handler is not None:
            item.lines = handler(resource, pricer)
        elif kind in FREE_KINDS or resource.type.split(":")[0] in FREE_PACKAGES:
            item.status = "free"
        else:
            item.status = "unpriced"
            item.note = f"no price model for {resource.type}"
        items.append(item)
    return CostReport(stack=stack, currency=currency, prices_as_of=book.as_of, items=items,
                      assumptions=usage.model_dump(by_alias=True), budget=budget)


def as_dict(report: CostReport) -> dict[str, Any]:
    return asdict(report)
