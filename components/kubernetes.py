"""Managed Kubernetes: the cluster, its node groups and a Kubernetes provider built from its outputs.

What one :class:`ManagedKubernetes` creates:

- a KMS key that encrypts the cluster's Kubernetes secrets at rest (``kms_provider``);
- two service accounts with minimal roles: the **cluster** account (folder roles
  ``k8s.clusters.agent``, ``vpc.publicAdmin``, ``load-balancer.admin``; ``kms.keys.encrypterDecrypter``
  on the cluster's own key only) and the **node** account (no folder role; the stage grants it
  ``container-registry.images.puller`` on the registry);
- the cluster: a pinned Kubernetes version, a zonal master (one zone) or a regional one (three
  zones), Calico network policies, the master's security groups (the stage attaches one that
  allows 443/6443 only from the configured allowlist);
- one node group per :class:`NodeGroupSpec` (autoscaled, one zone each, labels and taints);
- a pulumi-kubernetes ``Provider`` configured by a kubeconfig built from the cluster's outputs
  and the IAM token of the Yandex provider's own credentials (the ``yandex_client_config`` data
  source, Yandex's documented way to configure the Terraform kubernetes provider): whatever runs
  ``pulumi up`` with Yandex credentials (a service-account key in CI, ``YC_TOKEN`` locally) also
  reaches the cluster, with no ``yc`` CLI or other exec plugin. The token is fetched on every run
  (it lives 12 hours) and the kubeconfig is a Pulumi secret. The ``kubeconfig`` *output*, for
  people with ``kubectl``, authenticates through ``yc k8s create-token`` instead and holds no
  credential.

Limits checked before anything is created (Yandex Managed Service for Kubernetes):

- versions :data:`VERSIONS`, by release channel :data:`CHANNEL_VERSIONS` (check
  ``yc managed-kubernetes list-versions`` for the current list);
- with ``auto_upgrade`` (the default) Yandex upgrades the master and the nodes itself, and moves a
  cluster off a version that leaves support. The configured version is therefore a floor: the
  program reads the cluster's and each group's current version (data sources, by name) and never
  plans below it, warning that the stack file should catch up; a higher configured version is
  an upgrade, applied as usual;
- a regional master takes exactly three zones, a zonal master one;
- an autoscaled node group lives in exactly one zone; ``0 <= min <= initial <= max``, ``max <= 100``;
  only GPU groups may scale to zero here (the CPU group runs the cluster's own add-ons);
- CPU node shapes (``standard-v2``/``standard-v3``): an even number of vCPUs 2-64, 1-16 GB per vCPU,
  core fraction 20, 50 or 100; GPU node shapes and zones: :mod:`components.gpu`;
- GPU nodes are tainted ``nvidia.com/gpu=true:NoSchedule``. ``driverless`` GPU nodes
  (``gpu_settings.gpu_environment = "runc"``) get their driver from the NVIDIA GPU Operator; with
  preinstalled drivers no ``gpu_settings`` block is emitted at all: an empty one gives a perpetual
  diff and a failing apply (terraform-provider-yandex#600).
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import pulumi
import pulumi_kubernetes as k8s
import yaml

from components import gpu
from components.base import StageComponent, ValidationError
from components.gpu_host import check_boot_disk
from components.identity import WorkloadIdentity, WorkloadIdentityArgs
from components.network import ANYWHERE, LB_HEALTHCHECKS, SELF, SecurityGroupSpec, SgRule, check_cidr
from components.yc import yandex

#: Kubernetes versions the Managed Service offers (and kubernetes-validate has schemas for); 1.29
#: left support in September 2025.
KubernetesVersion = Literal["1.30", "1.31", "1.32", "1.33", "1.34"]
VERSIONS: tuple[str, ...] = get_args(KubernetesVersion)
ReleaseChannel = Literal["RAPID", "REGULAR", "STABLE"]
RELEASE_CHANNELS: tuple[str, ...] = get_args(ReleaseChannel)
#: What each channel offers for new clusters (Yandex's "Kubernetes versions" page): 1.34 only on
#: RAPID so far.
CHANNEL_VERSIONS: dict[str, tuple[str, ...]] = {
    "RAPID": VERSIONS,
    "REGULAR": ("1.30", "1.31", "1.32", "1.33"),
    "STABLE": ("1.30", "1.31", "1.32", "1.33"),
}
DEFAULT_VERSION = "1.33"
#: The cluster's properties the provider replaces it (and everything in it) for (v0.136.0 ForceNew).
FORCE_NEW = ("networkId", "folderId", "clusterIpv4Range", "serviceIpv4Range", "releaseChannel",
             "networkPolicyProvider", "kmsProvider", "nodeIpv4CidrMaskSize", "master.publicIp", "master.zonal",
             "master.regional", "master.etcdClusterSize")
MasterType = Literal["zonal", "regional"]
MASTER_TYPES: tuple[str, ...] = get_args(MasterType)
CpuPlatform = Literal["standard-v2", "standard-v3"]
CPU_PLATFORMS: tuple[str, ...] = get_args(CpuPlatform)
CoreFraction = Literal[20, 50, 100]
CORE_FRACTIONS: tuple[int, ...] = get_args(CoreFraction)
NODE_DISK_RANGE_GB = (30, 4096)
MAX_NODES = 100
CLUSTER_ROLES = ("k8s.clusters.agent", "vpc.publicAdmin", "load-balancer.admin")

#: The GPU taint every GPU node carries, and the tolerations/selectors that go with it.
GPU_TAINT_KEY = "nvidia.com/gpu"
GPU_TAINT = f"{GPU_TAINT_KEY}=true:NoSchedule"
#: Node label naming the node group a node belongs to (``cpu`` or ``gpu``).
POOL_LABEL = "aistack.io/node-pool"
#: ``gpu_settings.gpu_environment`` of driverless GPU nodes (the GPU Operator installs the driver).
DRIVERLESS_ENVIRONMENT = "runc"

API_PORTS = (443, 6443)
#: metrics-server's port: the master calls it on its pod IP (the HPAs' CPU metrics).
METRICS_SERVER_PORT = 4443
NTP_PORT = 123
NODEPORT_RANGE = (30000, 32767)


def check_version(version: str, channel: str | None = None) -> None:
    if version not in VERSIONS:
        raise ValidationError(f"Kubernetes version {version!r} is not offered: allowed {', '.join(VERSIONS)} "
                              "(check `yc managed-kubernetes list-versions`)")
    if channel is not None and version not in CHANNEL_VERSIONS.get(channel, VERSIONS):
        offering = [c for c, versions in CHANNEL_VERSIONS.items() if version in versions]
        raise ValidationError(f"Kubernetes {version} is not offered on the {channel} release channel (allowed there: "
                              f"{', '.join(CHANNEL_VERSIONS[channel])}); it is on {', '.join(offering)}")


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def effective_version(configured: str, current: str | None) -> str:
    """The version to plan: the configured one, or the cluster's current one when Yandex has already
    upgraded past it (planning the configured one would be a downgrade)."""
    if current and _version_key(current) > _version_key(configured):
        return ".".join(current.split(".")[:2])
    return configured


def _current_master_version(folder_id: str, name: str) -> str | None:
    try:
        cluster = yandex.get_kubernetes_cluster(folder_id=folder_id, name=name)
    except Exception as exc:  # not created yet, or the API cannot be asked here: plan the configured one
        _warn_unless_absent(name, exc)
        return None
    masters = cluster.masters or []
    return masters[0].version if masters and masters[0].version else None


def _current_group_version(folder_id: str, name: str) -> str | None:
    try:
        group = yandex.get_kubernetes_node_group(folder_id=folder_id, name=name)
    except Exception as exc:
        _warn_unless_absent(name, exc)
        return None
    infos = group.version_infos or []
    return infos[0].current_version if infos and infos[0].current_version else None


def _warn_unless_absent(name: str, exc: Exception) -> None:
    if "not found" not in str(exc).lower():
        pulumi.log.warn(f"cannot read the current Kubernetes version of {name} ({type(exc).__name__}); planning "
                        "the configured one: if Yandex has upgraded it, this plan downgrades and the update fails")


def check_master(master: str, zones: Sequence[str]) -> None:
    if master not in MASTER_TYPES:
        raise ValidationError(f"master type {master!r} is invalid: allowed {', '.join(MASTER_TYPES)}")
    if master == "regional" and len(set(zones)) != 3:
        raise ValidationError(f"a regional master needs subnets in three zones, got {len(set(zones))} "
                              f"({', '.join(zones) or 'none'}): add subnets for ru-central1-a, -b and -d or use a "
                              "zonal master")
    if master == "zonal" and not zones:
        raise ValidationError("a zonal master needs a subnet in its zone")


def check_allowlist(cidrs: Sequence[str]) -> None:
    """The master API allowlist: at least one CIDR, none of them the whole internet."""
    if not cidrs:
        raise ValidationError("the Kubernetes API allowlist is empty: add the CIDRs of your operators and CI "
                              "(e.g. 203.0.113.0/24), or turn the public API off")
    for cidr in cidrs:
        if check_cidr(cidr, "API allowlist CIDR").prefixlen == 0:
            raise ValidationError(f"the Kubernetes API allowlist contains {cidr}: the master must not be open to "
                                  "the world; list your operators' and CI's networks instead")


def check_cpu_shape(platform: str, cores: int, memory_gb: int, core_fraction: int, what: str = "CPU node",
                    max_cores: int = 64) -> None:
    """The shape of a VM on a CPU platform (``what``: a CPU node, the CI runner): an even number of
    vCPUs up to ``max_cores``, 1-16 GB per vCPU, one of :data:`CORE_FRACTIONS`."""
    if platform not in CPU_PLATFORMS:
        raise ValidationError(f"{what} platform {platform!r} is invalid: allowed {', '.join(CPU_PLATFORMS)} (GPU "
                              "platforms belong to the GPU node group)")
    if cores % 2 or not 2 <= cores <= max_cores:
        raise ValidationError(f"{what} cores {cores} is invalid: {platform} takes an even number of vCPUs, "
                              f"2-{max_cores} here")
    if not cores <= memory_gb <= cores * 16:
        raise ValidationError(f"{what} memory {memory_gb} GB is invalid for {cores} vCPUs: {platform} takes "
                              f"1-16 GB per vCPU ({cores}-{cores * 16} GB)")
    if core_fraction not in CORE_FRACTIONS:
        raise ValidationError(f"{what} core fraction {core_fraction}% is invalid: allowed "
                              f"{', '.join(map(str, CORE_FRACTIONS))}")


def check_scale(group: str, minimum: int, maximum: int, initial: int, may_scale_to_zero: bool) -> None:
    low = 0 if may_scale_to_zero else 1
    if not low <= minimum <= maximum <= MAX_NODES:
        raise ValidationError(f"node group {group}: autoscaling min {minimum} / max {maximum} is invalid: need "
                              f"{low} <= min <= max <= {MAX_NODES}"
                              + ("" if may_scale_to_zero else " (only the GPU group may scale to zero)"))
    if not minimum <= initial <= maximum:
        raise ValidationError(f"node group {group}: initial size {initial} is outside min {minimum} - "
                              f"max {maximum}")


#: The widest service range kube-apiserver accepts (--service-cluster-ip-range: at most 20 host bits).
SERVICE_RANGE_MAX_PREFIX = 12


def check_range(what: str, cidr: str, widest: int = 8) -> ipaddress.IPv4Network:
    network = check_cidr(cidr, what)
    if not network.is_private or not widest <= network.prefixlen <= 20:
        raise ValidationError(f"{what} {cidr} is invalid: use a private range between /{widest} and /20 that "
                              "overlaps no subnet, e.g. 10.112.0.0/16")
    return network


def check_service_range(cidr: str) -> ipaddress.IPv4Network:
    """The service CIDR: kube-apiserver refuses one wider than /12."""
    return check_range("service CIDR", cidr, widest=SERVICE_RANGE_MAX_PREFIX)


@dataclass(frozen=True)
class NodeGroupSpec:
    """One autoscaled node group in one zone."""

    name: str
    zone: str
    platform_id: str = "standard-v3"
    cores: int = 4
    memory_gb: int = 16
    core_fraction: int = 100
    gpus: int = 0
    disk_type: str = "network-ssd"
    disk_size_gb: int = 64
    preemptible: bool = False
    min_size: int = 1
    max_size: int = 3
    initial_size: int | None = None
    #: GPU nodes without a preinstalled driver (the GPU Operator installs it).
    driverless: bool = False
    node_labels: Mapping[str, str] = field(default_factory=dict)
    node_taints: Sequence[str] = ()

    def __post_init__(self) -> None:
        if self.gpus:
            gpu.check_gpu_shape(self.platform_id, self.gpus, self.cores, self.memory_gb)
            gpu.check_gpu_zone(self.platform_id, self.zone)
            if GPU_TAINT not in self.node_taints:
                raise ValidationError(f"GPU node group {self.name} must carry the taint {GPU_TAINT}, so only pods "
                                      "that tolerate it land on GPU nodes")
        else:
            if self.platform_id in gpu.PLATFORMS:
                raise ValidationError(f"node group {self.name}: {self.platform_id} is a GPU platform: set gpus "
                                      "(and a GPU shape) or use standard-v3")
            if self.driverless:
                raise ValidationError(f"node group {self.name}: driverless applies to GPU node groups only")
            check_cpu_shape(self.platform_id, self.cores, self.memory_gb, self.core_fraction)
        check_boot_disk(self.disk_type, self.disk_size_gb, NODE_DISK_RANGE_GB)
        check_scale(self.name, self.min_size, self.max_size, self.initial, may_scale_to_zero=self.gpus > 0)

    @property
    def initial(self) -> int:
        return self.min_size if self.initial_size is None else self.initial_size


def cpu_node_group(zone: str, **kw: object) -> NodeGroupSpec:
    """The ``cpu`` group: platform add-ons and the backend service."""
    return NodeGroupSpec(name="cpu", zone=zone, node_labels={POOL_LABEL: "cpu"}, **kw)  # type: ignore[arg-type]


def gpu_node_group(zone: str, **kw: object) -> NodeGroupSpec:
    """The ``gpu`` group: tainted, labelled, only TF Serving (and the GPU and log agents) run there."""
    return NodeGroupSpec(name="gpu", zone=zone, node_labels={POOL_LABEL: "gpu", "nvidia.com/gpu.present": "true"},
                         node_taints=(GPU_TAINT,), **kw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ManagedKubernetesArgs:
    folder_id: str
    network_id: pulumi.Input[str]
    #: Subnet id by zone (the master's zone(s) and the node groups' zones must be among them).
    subnet_ids: Mapping[str, pulumi.Input[str]]
    #: Security groups of the master (the API allowlist) and of the nodes.
    master_security_group_ids: Sequence[pulumi.Input[str]]
    node_security_group_ids: Sequence[pulumi.Input[str]]
    node_groups: Sequence[NodeGroupSpec]
    version: str = DEFAULT_VERSION
    master: str = "zonal"
    master_zone: str = "ru-central1-a"
    #: A public master endpoint (reachable only through the master's security groups).
    public_api: bool = True
    release_channel: str = "STABLE"
    cluster_ipv4_range: str = "10.112.0.0/16"
    service_ipv4_range: str = "10.96.0.0/16"
    kms_deletion_protection: bool = True
    #: Yandex upgrades the master and the nodes in their maintenance windows.
    auto_upgrade: bool = True

    def __post_init__(self) -> None:
        check_version(self.version, self.release_channel)
        zones = sorted(self.subnet_ids)
        check_master(self.master, zones)
        if self.master == "zonal" and self.master_zone not in self.subnet_ids:
            raise ValidationError(f"the zonal master's zone {self.master_zone} has no subnet: subnets exist in "
                                  f"{', '.join(zones)}")
        if self.release_channel not in RELEASE_CHANNELS:
            raise ValidationError(f"release channel {self.release_channel!r} is invalid: allowed "
                                  f"{', '.join(RELEASE_CHANNELS)}")
        pods = check_range("cluster (pod) CIDR", self.cluster_ipv4_range)
        services = check_service_range(self.service_ipv4_range)
        if pods.overlaps(services):
            raise ValidationError(f"the pod range {pods} and the service range {services} overlap: give each its own")
        if not self.master_security_group_ids:
            raise ValidationError("the master needs a security group: without one its API is reachable from "
                                  "anywhere the endpoint is")
        names = [g.name for g in self.node_groups]
        if len(set(names)) != len(names):
            raise ValidationError(f"node group names repeat: {', '.join(names)}")
        for group in self.node_groups:
            if group.zone not in self.subnet_ids:
                raise ValidationError(f"node group {group.name} is in {group.zone}, which has no subnet: subnets "
                                      f"exist in {', '.join(zones)}")
        if not any(g.gpus == 0 and g.min_size >= 1 for g in self.node_groups):
            raise ValidationError("the cluster needs a CPU node group with min >= 1 for its add-ons "
                                  "(ingress, ArgoCD, ECK, the GPU Operator)")


def kubeconfig(cluster_id: str | None, endpoint: str | None, ca_certificate: str | None,
               token: str | None = None) -> str:
    """A kubeconfig for the cluster: bearer ``token`` (an IAM token) when given, else authenticating
    through ``yc k8s create-token`` at use (no credential inside)."""
    name = f"yc-{cluster_id}"
    user: dict[str, object] = {"token": token} if token is not None else {"exec": {
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "command": "yc",
        "args": ["k8s", "create-token", "--profile=default"],
        "interactiveMode": "Never",
    }}
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": endpoint or "",
                                                "certificate-authority-data": _b64(ca_certificate or "")}}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    }
    return str(yaml.safe_dump(document, sort_keys=False))


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class ManagedKubernetes(StageComponent):
    component = "kubernetes"

    def __init__(self, name: str, args: ManagedKubernetesArgs, labels: dict[str, str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kubernetes:ManagedKubernetes", name, labels, opts)

        self.kms_key = yandex.KmsSymmetricKey(
            self.child_name("kms"),
            yandex.KmsSymmetricKeyArgs(
                folder_id=args.folder_id, name=self.child_name("kms"),
                description="Encrypts the Kubernetes secrets of the cluster at rest",
                default_algorithm="AES_256", rotation_period="8760h",
                deletion_protection=args.kms_deletion_protection, labels=self.labels),
            opts=self.child(),
        )
        self.cluster_identity = WorkloadIdentity(
            self.child_name("cluster"),
            WorkloadIdentityArgs(folder_id=args.folder_id, description="Managed Kubernetes cluster (master)",
                                 folder_roles=list(CLUSTER_ROLES)),
            labels, opts=self.child(),
        )
        self.node_identity = WorkloadIdentity(
            self.child_name("nodes"),
            WorkloadIdentityArgs(folder_id=args.folder_id, description="Managed Kubernetes nodes (image pulls)"),
            labels, opts=self.child(),
        )
        kms_user = yandex.KmsSymmetricKeyIamMember(
            self.child_name("kms-cluster"),
            yandex.KmsSymmetricKeyIamMemberArgs(symmetric_key_id=self.kms_key.id, role="kms.keys.encrypterDecrypter",
                                                member=self.cluster_identity.member),
            opts=self.child(),
        )

        if args.master == "regional":
            placement: dict[str, object] = {"regional": yandex.KubernetesClusterMasterRegionalArgs(
                region="ru-central1",
                locations=[yandex.KubernetesClusterMasterRegionalLocationArgs(zone=zone, subnet_id=subnet)
                           for zone, subnet in sorted(args.subnet_ids.items())])}
        else:
            placement = {"zonal": yandex.KubernetesClusterMasterZonalArgs(
                zone=args.master_zone, subnet_id=args.subnet_ids[args.master_zone])}

        cluster_name = self.child_name("cluster")
        master_version = self._planned_version("the master", args.version, args,
                                               lambda: _current_master_version(args.folder_id, cluster_name))
        self.cluster = yandex.KubernetesCluster(
            self.child_name("cluster"),
            yandex.KubernetesClusterArgs(
                folder_id=args.folder_id,
                name=cluster_name,
                description="The prod stage's cluster: TF Serving on GPU nodes, the service, ELK, ArgoCD",
                network_id=args.network_id,
                service_account_id=self.cluster_identity.service_account_id,
                node_service_account_id=self.node_identity.service_account_id,
                release_channel=args.release_channel,
                network_policy_provider="CALICO",
                cluster_ipv4_range=args.cluster_ipv4_range,
                service_ipv4_range=args.service_ipv4_range,
                kms_provider=yandex.KubernetesClusterKmsProviderArgs(key_id=self.kms_key.id),
                master=yandex.KubernetesClusterMasterArgs(
                    version=master_version,
                    public_ip=args.public_api,
                    security_group_ids=list(args.master_security_group_ids),
                    maintenance_policy=yandex.KubernetesClusterMasterMaintenancePolicyArgs(
                        auto_upgrade=args.auto_upgrade,
                        maintenance_windows=[yandex.KubernetesClusterMasterMaintenancePolicyMaintenanceWindowArgs(
                            day="sunday", start_time="03:00", duration="3h")]),
                    **placement,  # type: ignore[arg-type]
                ),
                labels=self.labels,
            ),
            opts=self.child(depends_on=[self.cluster_identity, self.node_identity, kms_user]),
        )

        self.node_groups: dict[str, yandex.KubernetesNodeGroup] = {}
        for spec in args.node_groups:
            self.node_groups[spec.name] = self._node_group(spec, args)

        self.cluster_id: pulumi.Output[str] = self.cluster.id
        endpoint = (self.cluster.master.external_v4_endpoint if args.public_api
                    else self.cluster.master.internal_v4_endpoint)
        ca = self.cluster.master.cluster_ca_certificate
        #: The kubeconfig for people (a Pulumi secret): ``yc`` issues the token at use.
        self.kubeconfig: pulumi.Output[str] = pulumi.Output.secret(pulumi.Output.all(
            self.cluster.id, endpoint, ca).apply(lambda v: kubeconfig(v[0], v[1], v[2])))
        #: The provider's: the IAM token of the credentials this deployment runs with.
        iam_token = yandex.get_client_config_output(opts=pulumi.InvokeOutputOptions(parent=self)).iam_token
        self.provider_kubeconfig: pulumi.Output[str] = pulumi.Output.secret(pulumi.Output.all(
            self.cluster.id, endpoint, ca, iam_token).apply(lambda v: kubeconfig(v[0], v[1], v[2], token=v[3] or "")))
        self.provider = k8s.Provider(
            self.child_name("provider"),
            k8s.ProviderArgs(kubeconfig=self.provider_kubeconfig, enable_server_side_apply=True,
                             delete_unreachable=False),
            opts=self.child(depends_on=list(self.node_groups.values())),
        )
        self.node_service_account_id: pulumi.Output[str] = self.node_identity.service_account_id
        self.register_outputs({"cluster_id": self.cluster_id, "kubeconfig": self.kubeconfig,
                               "node_groups": {n: g.id for n, g in self.node_groups.items()}})

    def _planned_version(self, what: str, configured: str, args: ManagedKubernetesArgs,
                         current: Callable[[], str | None]) -> str:
        """``configured``, unless auto-upgrade has already taken ``what`` past it."""
        if not args.auto_upgrade:
            return configured
        planned = effective_version(configured, current())
        if planned != configured:
            pulumi.log.warn(f"Yandex has upgraded {what} of {self.resource_name} to {planned} (auto-upgrade), past "
                            f"the configured {configured}: planning {planned}, not a downgrade; set "
                            f"aistack:kubernetes.version to {planned} in the stack file")
        return planned

    def _node_group(self, spec: NodeGroupSpec, args: ManagedKubernetesArgs) -> yandex.KubernetesNodeGroup:
        name = self.child_name(spec.name)
        version = self._planned_version(f"node group {spec.name}", args.version, args,
                                        lambda: _current_group_version(args.folder_id, name))
        resources = yandex.KubernetesNodeGroupInstanceTemplateResourcesArgs(
            cores=spec.cores, memory=spec.memory_gb,
            core_fraction=None if spec.gpus else spec.core_fraction,
            gpus=spec.gpus or None)
        gpu_settings = (yandex.KubernetesNodeGroupInstanceTemplateGpuSettingsArgs(
            gpu_environment=DRIVERLESS_ENVIRONMENT) if spec.driverless else None)
        return yandex.KubernetesNodeGroup(
            self.child_name(spec.name),
            yandex.KubernetesNodeGroupArgs(
                cluster_id=self.cluster.id,
                name=name,
                description=f"{spec.name} nodes ({spec.platform_id}, "
                            f"{f'{spec.gpus} GPU, ' if spec.gpus else ''}{spec.cores} vCPU, {spec.memory_gb} GB)",
                version=version,
                instance_template=yandex.KubernetesNodeGroupInstanceTemplateArgs(
                    platform_id=spec.platform_id,
                    resources=resources,
                    boot_disk=yandex.KubernetesNodeGroupInstanceTemplateBootDiskArgs(
                        type=spec.disk_type, size=spec.disk_size_gb),
                    network_interfaces=[yandex.KubernetesNodeGroupInstanceTemplateNetworkInterfaceArgs(
                        subnet_ids=[args.subnet_ids[spec.zone]], nat=False,
                        security_group_ids=list(args.node_security_group_ids))],
                    scheduling_policy=yandex.KubernetesNodeGroupInstanceTemplateSchedulingPolicyArgs(
                        preemptible=spec.preemptible),
                    container_runtime=yandex.KubernetesNodeGroupInstanceTemplateContainerRuntimeArgs(
                        type="containerd"),
                    gpu_settings=gpu_settings,
                    metadata={"serial-port-enable": "0"},
                    labels=self.labels,
                ),
                scale_policy=yandex.KubernetesNodeGroupScalePolicyArgs(
                    auto_scale=yandex.KubernetesNodeGroupScalePolicyAutoScaleArgs(
                        min=spec.min_size, max=spec.max_size, initial=spec.initial)),
                allocation_policy=yandex.KubernetesNodeGroupAllocationPolicyArgs(
                    locations=[yandex.KubernetesNodeGroupAllocationPolicyLocationArgs(zone=spec.zone)]),
                deploy_policy=yandex.KubernetesNodeGroupDeployPolicyArgs(max_expansion=1, max_unavailable=0),
                maintenance_policy=yandex.KubernetesNodeGroupMaintenancePolicyArgs(
                    auto_repair=True, auto_upgrade=args.auto_upgrade,
                    maintenance_windows=[yandex.KubernetesNodeGroupMaintenancePolicyMaintenanceWindowArgs(
                        day="sunday", start_time="04:00", duration="3h")]),
                node_labels=dict(spec.node_labels),
                node_taints=list(spec.node_taints) or None,
                labels=self.labels,
            ),
            opts=self.child(),
        )


# --- security groups of the cluster -------------------------------------------------------------
# As Yandex's "Configuring security groups" page for Managed Kubernetes lays them out: the rules of
# its group for the cluster and the node groups together (health checks, traffic within the group,
# the master reaching pods on the cluster CIDR, which Calico needs), of its node-group group
# (the pod and service CIDRs, all egress) and of its cluster group (the API from the allowlist,
# metrics-server on 4443, NTP), here split between the nodes' group and the master's.

def node_rules(vpc_cidrs: Sequence[str], pod_cidr: str, service_cidr: str,
               ingress_cidrs: Sequence[str]) -> SecurityGroupSpec:
    """Nodes: traffic between nodes, from the master and the VPC, pods and services, load balancer health
    checks, NodePorts from the clients of the ingress; all egress (image pulls, Object Storage, ClickHouse)."""
    low, high = NODEPORT_RANGE
    internal = tuple(dict.fromkeys([*vpc_cidrs, pod_cidr, service_cidr]))
    return SecurityGroupSpec(
        "Managed Kubernetes nodes",
        ingress=(
            SgRule("node to node", protocol="ANY", from_port=0, to_port=65535, group="k8s-nodes"),
            SgRule("master, pods and services (VPC, pod and service CIDRs)", protocol="ANY", from_port=0,
                   to_port=65535, cidrs=internal),
            SgRule("network load balancer health checks", protocol="TCP", from_port=0, to_port=65535,
                   predefined=LB_HEALTHCHECKS),
            SgRule("ICMP within the VPC", protocol="ICMP", cidrs=tuple(vpc_cidrs)),
            SgRule("NodePorts of the ingress load balancer", from_port=low, to_port=high,
                   cidrs=tuple(dict.fromkeys(ingress_cidrs))),
        ),
        egress=(SgRule("image pulls, Object Storage, ClickHouse, DNS", protocol="ANY", from_port=0, to_port=65535,
                       cidrs=(ANYWHERE,)),),
    )


def master_rules(api_allowlist: Sequence[str], vpc_cidrs: Sequence[str], pod_cidr: str) -> SecurityGroupSpec:
    """The master: the API (443, 6443) from the allowlist and the nodes, load balancer health checks
    (a regional master sits behind one) and its own hosts; egress to the nodes, to pods (admission
    webhooks such as ingress-nginx's and metrics-server answer on pod IPs of the cluster CIDR), NTP,
    and the VPC."""
    check_allowlist(api_allowlist)
    allow = tuple(dict.fromkeys(api_allowlist))
    ingress = [SgRule(f"Kubernetes API ({port}) from the allowlist", port=port, cidrs=allow) for port in API_PORTS]
    ingress += [SgRule(f"Kubernetes API ({port}) from the nodes", port=port, group="k8s-nodes") for port in API_PORTS]
    ingress += [
        SgRule("network load balancer health checks (regional master)", protocol="TCP", from_port=0,
               to_port=65535, predefined=LB_HEALTHCHECKS),
        SgRule("master to master", protocol="ANY", from_port=0, to_port=65535, predefined=SELF),
    ]
    return SecurityGroupSpec(
        "Managed Kubernetes master API",
        ingress=tuple(ingress),
        egress=(SgRule("kubelets and webhooks on the nodes", protocol="ANY", from_port=0, to_port=65535,
                       group="k8s-nodes"),
                SgRule("pods: admission webhooks, aggregated APIs (cluster CIDR)", protocol="ANY", from_port=0,
                       to_port=65535, cidrs=(pod_cidr,)),
                SgRule("metrics-server (cluster CIDR)", port=METRICS_SERVER_PORT, cidrs=(pod_cidr,)),
                SgRule("NTP", protocol="UDP", port=NTP_PORT, cidrs=(ANYWHERE,)),
                SgRule("master to master", protocol="ANY", from_port=0, to_port=65535, predefined=SELF),
                SgRule("the VPC (master to master, metadata)", protocol="ANY", from_port=0, to_port=65535,
                       cidrs=tuple(vpc_cidrs))),
    )
