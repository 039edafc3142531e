"""Typed stage configuration loaded from Pulumi config.

Every key of the project namespace (``aistack:``) and the provider keys the stages rely on
(``yandex:folderId``, ``yandex:zone``) are parsed into frozen pydantic models. A missing or
invalid key fails before any resource is created, with a message that names the key, the
stack file and the allowed values. Validation rules are the components' own functions, so a
limit is written once.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from components import (
    clickhouse,
    elk,
    gpu,
    gpu_host,
    gpu_operator,
    kubernetes,
    mdb,
    network,
    postgres,
    runner,
    serverless,
    storage,
    tfserving,
    tls,
)
from components.base import ValidationError as LimitError
from components.base import check_labels
from components.host_workload import Images, SshUser, check_pinned_image
from components.k8s_platform import (
    ARGOCD_CHART,
    ECK_CHART,
    GPU_OPERATOR_CHART,
    INGRESS_NGINX_CHART,
    check_chart_version,
    check_namespace,
)

PROJECT = "aistack"
PROVIDER = "yandex"
Stage = Literal["mvp", "partner", "prod"]
STAGES: tuple[str, ...] = get_args(Stage)


class ConfigError(Exception):
    """Stack configuration is missing or invalid; the message says what to fix and where."""


def _check(fn: Any) -> AfterValidator:
    def run(value: Any) -> Any:
        fn(value)
        return value

    return AfterValidator(run)


Sha256 = Annotated[str, _check(storage.check_sha256)]
ImageDigest = Annotated[str, _check(serverless.check_image_digest)]
MemoryMb = Annotated[int, _check(serverless.check_memory)]


class Settings(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, extra="forbid", frozen=True, populate_by_name=False)


class ReleasePins(Settings):
    """What a release is: the service image and the model, both pinned by digest.

    ``images`` is the build's flavour of the image for each stage (service/Dockerfile's ``STAGE``:
    each carries only that stage's backend and store clients), as deploy:mvp records it and
    ``stagectl promote`` carries it; when it is there, a stack's ``imageDigest`` must be its own
    stage's entry (StageConfig checks it). A release recorded before the build made one image per
    stage has none: every stage then runs the one image.
    """

    image_digest: ImageDigest
    model_sha256: Sha256
    model_version: str | None = None
    images: dict[str, ImageDigest] | None = None

    @field_validator("images")
    @classmethod
    def _known_stages(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None:
            unknown = sorted(set(value) - set(STAGES))
            if unknown:
                raise LimitError(f"{', '.join(map(repr, unknown))} is not a stage: the keys are the stages "
                                 f"({', '.join(STAGES)}), each mapped to the digest of its flavour of the image")
        return value

    def check_flavour(self, stage: str) -> None:
        """With ``images``, ``imageDigest`` must be ``stage``'s flavour: a stack never runs another's."""
        if self.images is None:
            return
        own = self.images.get(stage)
        if own is None:
            listed = ", ".join(sorted(self.images)) or "nothing"
            raise LimitError(f"release.images has no {stage} flavour (it lists {listed}): record the digest the build "
                             f"job pushed as image-{stage}.digest in release.images.{stage}")
        if own != self.image_digest:
            raise LimitError(f"release.imageDigest {self.image_digest} is not release.images.{stage} {own}: the "
                             f"{stage} stack runs its own stage's flavour of the image; promote the release with "
                             "`stagectl promote`, which sets both")


class ModelSettings(Settings):
    name: str = Field("digits", pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    #: Local directory with ``model.onnx`` and ``card.json`` (``stagectl model build`` writes it).
    dir: str = "models/digits"


class StorageSettings(Settings):
    bucket_name: Annotated[str, _check(storage.check_bucket_name)] | None = None
    model_prefix: str = "models/"
    log_prefix: str = "predictions/"
    log_retention_days: int = Field(365, ge=1, le=3650)
    log_cold_after_days: int | None = Field(30, ge=1)
    noncurrent_version_days: int = Field(30, ge=1, le=3650)
    max_size_gb: int | None = Field(None, ge=1)
    force_destroy: bool = False
    kms_deletion_protection: bool = True


class ServerlessSettings(Settings):
    memory_mb: MemoryMb = 1024
    cores: Literal[1, 2, 3, 4] = 1
    #: A multiple of 5; 100 when cores > 1.
    core_fraction: int = Field(100, ge=serverless.CORE_FRACTION_RANGE[0], le=serverless.CORE_FRACTION_RANGE[1])
    concurrency: int = Field(4, ge=serverless.CONCURRENCY_RANGE[0], le=serverless.CONCURRENCY_RANGE[1])
    execution_timeout_s: int = Field(30, ge=serverless.TIMEOUT_RANGE_S[0], le=serverless.TIMEOUT_RANGE_S[1])
    provisioned_instances: int = Field(0, ge=0, le=100)
    public: bool = False
    log_retention_days: int = Field(7, ge=1, le=3653)
    log_level: serverless.LogLevel = "INFO"
    #: Largest number of instances one predict request may carry.
    max_instances: int = Field(64, ge=1, le=4096)
    #: Require an ``X-API-Key`` header on predict endpoints (the key itself is a secret config value).
    require_api_key: bool = False

    @model_validator(mode="after")
    def _resources(self) -> ServerlessSettings:
        serverless.check_cores_for_memory(self.cores, self.memory_mb)
        serverless.check_core_fraction(self.core_fraction, self.cores)
        return self


class UsageAssumptions(Settings):
    """What the cost model assumes about a month of use; shown in every cost report."""

    requests_per_month: int = Field(1_000_000, ge=0)
    mean_duration_ms: float = Field(50.0, ge=0)
    stored_gb: float = Field(100.0, ge=0)
    put_requests_per_month: int = Field(100_000, ge=0)
    get_requests_per_month: int = Field(1_000_000, ge=0)
    registry_gb: float = Field(1.0, ge=0)
    log_gb_per_month: float = Field(1.0, ge=0)
    #: Hours a month that GPU hosts or GPU nodes run (730 = always on).
    gpu_hours_per_month: float = Field(730.0, ge=0, le=744)
    #: Hours a month that everything else runs.
    hours_per_month: float = Field(730.0, ge=0, le=744)
    egress_gb_per_month: float = Field(10.0, ge=0)
    #: Subtract the monthly free tiers (they are per billing account, not per stack).
    free_tier: bool = True


class Budget(Settings):
    """Monthly budget: a cost above it fails the ``budget`` guardrail."""

    monthly: float = Field(gt=0)
    currency: Literal["USD", "RUB"] = "USD"


class StageConfig(Settings):
    """Settings every stage has."""

    usage: UsageAssumptions = Field(default_factory=UsageAssumptions)
    budget: Budget | None = None

    stage: Stage
    folder_id: str = Field(pattern=r"^[a-z0-9]{1,50}$")
    zone: network.Zone = "ru-central1-a"
    labels: dict[str, str] = Field(default_factory=dict)
    release: ReleasePins
    model: ModelSettings = Field(default_factory=ModelSettings)

    @field_validator("release")
    @classmethod
    def _own_flavour(cls, value: ReleasePins, info: ValidationInfo) -> ReleasePins:
        stage = info.data.get("stage")
        if stage is not None:
            value.check_flavour(stage)
        return value

    def resource_labels(self) -> dict[str, str]:
        """Labels for every resource: user labels plus ``project`` and ``stage``."""
        return check_labels({**self.labels, "project": PROJECT, "stage": self.stage}, "aistack:labels")

    def default_bucket_name(self) -> str:
        return f"{PROJECT}-{self.stage}-{self.folder_id}"


class MvpConfig(StageConfig):
    stage: Literal["mvp"]
    storage: StorageSettings = Field(default_factory=StorageSettings)
    serverless: ServerlessSettings = Field(default_factory=ServerlessSettings)

    @property
    def bucket_name(self) -> str:
        return self.storage.bucket_name or self.default_bucket_name()


Cidr = Annotated[str, _check(network.check_cidr)]
SubnetCidr = Annotated[str, _check(network.check_subnet_cidr)]
PinnedImage = Annotated[str, _check(check_pinned_image)]
_IMAGES = Images()


class NetworkSettings(Settings):
    #: The stage subnet (in ``yandex:zone``).
    cidr: SubnetCidr = "10.130.0.0/24"
    #: Who may call the inference service (port 8080).
    service_cidrs: list[Cidr] = Field(default_factory=lambda: [network.ANYWHERE], min_length=1)
    #: Networks of the operators: Triton, Prometheus and Grafana are open to these and to the VPC;
    #: SSH to these only, when ``ssh.enabled``.
    admin_cidrs: list[Cidr] = Field(default_factory=list)


class SshUserSettings(Settings):
    name: str
    ssh_keys: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _valid(self) -> SshUserSettings:
        SshUser(self.name, tuple(self.ssh_keys))
        return self


class SshSettings(Settings):
    #: Open port 22 to ``network.adminCidrs``. Users are created either way (serial console).
    enabled: bool = False
    users: list[SshUserSettings] = Field(default_factory=list)

    def ssh_users(self) -> list[SshUser]:
        return [SshUser(u.name, tuple(u.ssh_keys)) for u in self.users]


class GpuHostSettings(Settings):
    platform: str = gpu.T4
    gpus: int = 1
    cores: int = 8
    memory_gb: int = 32
    disk_size_gb: int = Field(100, ge=64, le=4096)
    disk_type: gpu_host.BootDiskType = "network-ssd"
    preemptible: bool = False
    static_ip: bool = True
    #: Boot from this image id instead of a copy of the latest Container-Optimized GPU image.
    image_id: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> GpuHostSettings:
        gpu.check_gpu_shape(self.platform, self.gpus, self.cores, self.memory_gb)
        return self


class TritonSettings(Settings):
    image: PinnedImage = _IMAGES.triton
    max_batch_size: int = Field(64, ge=1, le=65536)
    max_queue_delay_us: int = Field(500, ge=0, le=1_000_000)
    preferred_batch_sizes: list[int] = Field(default_factory=list)
    instance_count: int = Field(1, ge=1, le=16)


class TlsSettings(Settings):
    """HTTPS on the stage's endpoint with a Let's Encrypt certificate (components/tls.py)."""

    #: Off only on a private network: the API key and predictions would cross it in plain text.
    enabled: bool = True
    #: The DNS name clients use; an A record of the stage's address (output ingress_address/host_ip).
    host: Annotated[str, _check(tls.check_host)] | None = None
    #: Let's Encrypt's contact for the certificate.
    email: Annotated[str, _check(tls.check_email)] | None = None

    @model_validator(mode="after")
    def _named(self) -> TlsSettings:
        if self.enabled and (self.host is None or self.email is None):
            missing = " and ".join(k for k, v in (("tls.host", self.host), ("tls.email", self.email)) if v is None)
            raise LimitError(f"TLS is on but {missing} is not set: give the endpoint's DNS name (an A record of the "
                             "stage's address) and an e-mail for Let's Encrypt, or set tls.enabled to false on a "
                             "private network")
        return self

    def endpoint(self) -> tls.TlsEndpoint | None:
        if not self.enabled or self.host is None or self.email is None:
            return None
        return tls.TlsEndpoint(self.host, self.email)


def _acme_reachable(value: TlsSettings, info: ValidationInfo, cidrs_field: str) -> TlsSettings:
    """With TLS on, the network field ``cidrs_field`` must let Let's Encrypt in."""
    net = info.data.get("network")
    if value.enabled and net is not None:
        tls.check_reachable_for_acme(getattr(net, cidrs_field), f"network.{to_camel(cidrs_field)}")
    return value


class HostServiceSettings(Settings):
    """The inference service container on the GPU host."""

    max_instances: int = Field(64, ge=1, le=4096)
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class PostgresSettings(Settings):
    version: postgres.PostgresVersion = "16"
    resource_preset: Annotated[str, _check(postgres.check_preset)] = "s2.micro"
    disk_type: mdb.DiskType = "network-ssd"
    disk_size_gb: int = 20
    hosts: int = Field(1, ge=1, le=7)
    database: str = "predictions"
    user: str = "inference"
    conn_limit: int = Field(50, ge=1, le=1000)
    deletion_protection: bool = True
    backup_retain_days: int = Field(7, ge=7, le=60)

    @model_validator(mode="after")
    def _disk(self) -> PostgresSettings:
        postgres.check_disk(self.resource_preset, self.disk_type, self.disk_size_gb, self.hosts)
        postgres.check_identifier("database name", self.database)
        postgres.check_identifier("user name", self.user)
        return self


class MonitoringSettings(Settings):
    prometheus_retention_days: int = Field(15, ge=1, le=365)
    error_ratio: float = Field(0.05, gt=0, le=1)
    p99_latency_ms: int = Field(500, ge=1, le=60_000)
    gpu_memory_ratio: float = Field(0.9, gt=0, le=1)
    gpu_utilisation_percent: float = Field(95, gt=0, le=100)
    prometheus_image: PinnedImage = _IMAGES.prometheus
    grafana_image: PinnedImage = _IMAGES.grafana
    node_exporter_image: PinnedImage = _IMAGES.node_exporter
    dcgm_exporter_image: PinnedImage = _IMAGES.dcgm_exporter
    blackbox_exporter_image: PinnedImage = _IMAGES.blackbox_exporter


class RunnerSettings(Settings):
    #: Off unless configured; when on, the secret ``aistack:gitlabRunnerToken`` must be set.
    enabled: bool = False
    gitlab_url: str = Field("https://gitlab.com", pattern=r"^https://[^\s]+$")
    cores: int = 2
    memory_gb: int = 4
    core_fraction: kubernetes.CoreFraction = 100
    disk_size_gb: int = Field(64, ge=runner.DISK_RANGE_GB[0], le=runner.DISK_RANGE_GB[1])
    preemptible: bool = False
    concurrent: int = Field(2, ge=1, le=32)
    runner_image: PinnedImage = "gitlab/gitlab-runner:v17.5.3"
    job_image: PinnedImage = "alpine:3.20.3"

    @model_validator(mode="after")
    def _shape(self) -> RunnerSettings:
        runner.check_runner_shape(self.cores, self.memory_gb, self.core_fraction)
        return self


class PartnerConfig(StageConfig):
    stage: Literal["partner"]
    storage: StorageSettings = Field(default_factory=StorageSettings)
    network: NetworkSettings = Field(default_factory=NetworkSettings)
    ssh: SshSettings = Field(default_factory=SshSettings)
    gpu_host: GpuHostSettings = Field(default_factory=GpuHostSettings)
    triton: TritonSettings = Field(default_factory=TritonSettings)
    service: HostServiceSettings = Field(default_factory=HostServiceSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    runner: RunnerSettings = Field(default_factory=RunnerSettings)
    tls: TlsSettings = Field(default_factory=TlsSettings)

    @field_validator("tls")
    @classmethod
    def _acme_reaches_the_host(cls, value: TlsSettings, info: ValidationInfo) -> TlsSettings:
        return _acme_reachable(value, info, "service_cidrs")

    @field_validator("gpu_host")
    @classmethod
    def _gpu_zone(cls, value: GpuHostSettings, info: ValidationInfo) -> GpuHostSettings:
        zone = info.data.get("zone")
        if zone is not None:
            gpu.check_gpu_zone(value.platform, zone)
        return value

    @field_validator("ssh")
    @classmethod
    def _ssh_needs_admin_networks(cls, value: SshSettings, info: ValidationInfo) -> SshSettings:
        net = info.data.get("network")
        if value.enabled and net is not None and not net.admin_cidrs:
            raise LimitError("SSH is enabled but network.adminCidrs is empty: SSH opens only to the admin "
                             "networks; add your CIDR (e.g. 203.0.113.7/32) or set ssh.enabled to false")
        if value.enabled and not value.users:
            raise LimitError("SSH is enabled but ssh.users is empty: add a user with an SSH public key")
        return value

    @property
    def bucket_name(self) -> str:
        return self.storage.bucket_name or self.default_bucket_name()


# --- prod --------------------------------------------------------------------------------------

Namespace = Annotated[str, _check(check_namespace)]


def _default_prod_subnets() -> dict[network.Zone, str]:
    return {"ru-central1-a": "10.140.0.0/24", "ru-central1-b": "10.140.1.0/24", "ru-central1-d": "10.140.2.0/24"}


class ProdNetworkSettings(Settings):
    #: One subnet per zone. A regional master needs all three zones.
    subnets: dict[network.Zone, SubnetCidr] = Field(default_factory=_default_prod_subnets, min_length=1)
    #: Who may reach the Kubernetes API (443, 6443): operators' and CI's networks, never 0.0.0.0/0.
    api_allowlist: list[Cidr] = Field(min_length=1)
    #: Who may reach the service through the ingress load balancer.
    ingress_cidrs: list[Cidr] = Field(default_factory=lambda: [network.ANYWHERE], min_length=1)

    @field_validator("api_allowlist")
    @classmethod
    def _not_world(cls, value: list[str]) -> list[str]:
        kubernetes.check_allowlist(value)
        return value


class CpuNodeSettings(Settings):
    platform: kubernetes.CpuPlatform = "standard-v3"
    cores: int = 4
    memory_gb: int = 16
    core_fraction: kubernetes.CoreFraction = 100
    disk_type: gpu_host.BootDiskType = "network-ssd"
    disk_size_gb: int = Field(64, ge=kubernetes.NODE_DISK_RANGE_GB[0], le=kubernetes.NODE_DISK_RANGE_GB[1])
    preemptible: bool = False
    min: int = Field(2, ge=1, le=kubernetes.MAX_NODES)
    max: int = Field(4, ge=1, le=kubernetes.MAX_NODES)

    @model_validator(mode="after")
    def _valid(self) -> CpuNodeSettings:
        kubernetes.check_cpu_shape(self.platform, self.cores, self.memory_gb, self.core_fraction)
        kubernetes.check_scale("cpu", self.min, self.max, self.min, may_scale_to_zero=False)
        return self


class GpuNodeSettings(Settings):
    platform: str = gpu.T4
    gpus: int = 1
    cores: int = 8
    memory_gb: int = 32
    disk_type: gpu_host.BootDiskType = "network-ssd"
    disk_size_gb: int = Field(100, ge=64, le=kubernetes.NODE_DISK_RANGE_GB[1])
    preemptible: bool = False
    #: 0 lets the group scale to zero when no GPU pod is pending.
    min: int = Field(1, ge=0, le=kubernetes.MAX_NODES)
    max: int = Field(2, ge=1, le=kubernetes.MAX_NODES)
    #: Nodes without a preinstalled NVIDIA driver: the GPU Operator installs it.
    driverless: bool = True

    @model_validator(mode="after")
    def _valid(self) -> GpuNodeSettings:
        gpu.check_gpu_shape(self.platform, self.gpus, self.cores, self.memory_gb)
        kubernetes.check_scale("gpu", self.min, self.max, self.min, may_scale_to_zero=True)
        return self


class KubernetesSettings(Settings):
    #: The minor version; with autoUpgrade it is a floor (what Yandex upgraded to is never downgraded).
    version: kubernetes.KubernetesVersion = kubernetes.DEFAULT_VERSION  # type: ignore[assignment]
    #: ``zonal`` (in yandex:zone) or ``regional`` (three zones; needs three subnets).
    master: kubernetes.MasterType = "zonal"
    release_channel: kubernetes.ReleaseChannel = "STABLE"
    #: Yandex upgrades the master and nodes in their maintenance windows (Sundays 03:00 / 04:00).
    auto_upgrade: bool = True
    public_api: bool = True
    cluster_ipv4_range: str = "10.112.0.0/16"
    service_ipv4_range: str = "10.96.0.0/16"
    kms_deletion_protection: bool = True
    cpu_nodes: CpuNodeSettings = Field(default_factory=CpuNodeSettings)
    gpu_nodes: GpuNodeSettings = Field(default_factory=GpuNodeSettings)

    @model_validator(mode="after")
    def _ranges(self) -> KubernetesSettings:
        kubernetes.check_version(self.version, self.release_channel)
        pods = kubernetes.check_range("cluster (pod) CIDR", self.cluster_ipv4_range)
        services = kubernetes.check_service_range(self.service_ipv4_range)
        if pods.overlaps(services):
            raise LimitError(f"clusterIpv4Range {pods} and serviceIpv4Range {services} overlap: give each its own")
        return self


class ChartSettings(Settings):
    """Helm chart versions, pinned exactly (no ranges)."""

    argocd: str = ARGOCD_CHART.version
    eck_operator: str = ECK_CHART.version
    gpu_operator: str = GPU_OPERATOR_CHART.version
    ingress_nginx: str = INGRESS_NGINX_CHART.version
    cert_manager: str = tls.CERT_MANAGER_CHART.version

    @field_validator("argocd", "eck_operator", "gpu_operator", "ingress_nginx", "cert_manager")
    @classmethod
    def _pinned(cls, value: str, info: ValidationInfo) -> str:
        check_chart_version(to_camel(str(info.field_name)), value)
        return value


class GpuOperatorSettings(Settings):
    driver_version: str = "550.144.03"


class GitopsSettings(Settings):
    #: The repository ArgoCD syncs (this project's); a private one needs ``aistack:gitopsRepoToken``.
    repo_url: str = Field(pattern=r"^(https://[^\s]+|git@[^\s:]+:[^\s]+)$")
    target_revision: str = "main"
    path: str = "deploy/overlays/prod"
    #: Namespace of the service and TF Serving (deploy/overlays/prod sets the same).
    namespace: Namespace = "aistack"
    repo_username: str = "argocd"


class ElkSettings(Settings):
    stack_version: str = Field("8.15.3", pattern=r"^8\.\d+\.\d+$")
    elasticsearch_nodes: elk.ElasticsearchNodes = 3
    elasticsearch_memory_gi: int = Field(4, ge=2, le=64)
    elasticsearch_storage_gi: int = Field(50, ge=10, le=4096)
    kibana_replicas: int = Field(1, ge=1, le=3)
    log_retention_days: int = Field(14, ge=1, le=365)


class TfServingSettings(Settings):
    image: Annotated[str, _check(tfserving.check_gpu_image)] = "tensorflow/serving:2.18.0-gpu"
    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(2, ge=1)
    target_cpu_percent: int = Field(70, ge=10, le=100)
    cpu: str = "2"
    memory_gi: int = Field(8, ge=1)


class ClickhouseSettings(Settings):
    version: clickhouse.ClickhouseVersion = "24.8"
    resource_preset: Annotated[str, _check(clickhouse.check_preset)] = "s3-c2-m8"
    disk_type: mdb.DiskType = "network-ssd"
    disk_size_gb: int = 32
    shards: int = Field(1, ge=clickhouse.SHARDS_RANGE[0], le=clickhouse.SHARDS_RANGE[1])
    replicas: int = Field(1, ge=clickhouse.REPLICAS_RANGE[0], le=clickhouse.REPLICAS_RANGE[1])
    #: ``none`` or ``embedded-keeper`` (3+ hosts): chosen once, when the cluster is created.
    coordination: clickhouse.Coordination = "none"
    #: Yandex's internal root CA, which signs Managed ClickHouse's certificates (the backend verifies
    #: them with it): download it here before `pulumi up` (docs/deploying.md).
    ca_file: str = "build/yandex-ca.pem"
    database: str = "predictions"
    user: str = "inference"
    deletion_protection: bool = True
    backup_retain_days: int = Field(7, ge=7, le=60)

    @model_validator(mode="after")
    def _disk(self) -> ClickhouseSettings:
        clickhouse.check_topology(self.shards, self.replicas, self.coordination)
        clickhouse.check_disk(self.resource_preset, self.disk_type, self.disk_size_gb, self.replicas)
        clickhouse.check_identifier("database name", self.database)
        clickhouse.check_identifier("user name", self.user)
        return self


class ProdConfig(StageConfig):
    stage: Literal["prod"]
    storage: StorageSettings = Field(default_factory=StorageSettings)
    network: ProdNetworkSettings
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)
    charts: ChartSettings = Field(default_factory=ChartSettings)
    gpu_operator: GpuOperatorSettings = Field(default_factory=GpuOperatorSettings)
    gitops: GitopsSettings
    elk: ElkSettings = Field(default_factory=ElkSettings)
    tf_serving: TfServingSettings = Field(default_factory=TfServingSettings)
    clickhouse: ClickhouseSettings = Field(default_factory=ClickhouseSettings)
    tls: TlsSettings = Field(default_factory=TlsSettings)

    @field_validator("tls")
    @classmethod
    def _acme_reaches_the_ingress(cls, value: TlsSettings, info: ValidationInfo) -> TlsSettings:
        return _acme_reachable(value, info, "ingress_cidrs")

    @field_validator("network")
    @classmethod
    def _zone_has_subnet(cls, value: ProdNetworkSettings, info: ValidationInfo) -> ProdNetworkSettings:
        zone = info.data.get("zone")
        if zone is not None and zone not in value.subnets:
            zones = ", ".join(sorted(value.subnets))
            raise LimitError(f"yandex:zone {zone} has no subnet in network.subnets ({zones}): the node groups and "
                             "a zonal master live in yandex:zone; add a subnet for it")
        return value

    @field_validator("kubernetes")
    @classmethod
    def _placement(cls, value: KubernetesSettings, info: ValidationInfo) -> KubernetesSettings:
        net, zone = info.data.get("network"), info.data.get("zone")
        if net is not None:
            kubernetes.check_master(value.master, sorted(net.subnets))
        if zone is not None:
            gpu.check_gpu_zone(value.gpu_nodes.platform, zone)
        if value.cpu_nodes.min > value.cpu_nodes.max:
            raise LimitError(f"cpuNodes: min {value.cpu_nodes.min} is above max {value.cpu_nodes.max}")
        return value

    @field_validator("gpu_operator")
    @classmethod
    def _driver(cls, value: GpuOperatorSettings, info: ValidationInfo) -> GpuOperatorSettings:
        charts, k = info.data.get("charts"), info.data.get("kubernetes")
        if charts is not None and k is not None:
            gpu_operator.check_gpu_operator(charts.gpu_operator, value.driver_version, k.version,
                                            k.gpu_nodes.driverless)
        return value

    @field_validator("tf_serving")
    @classmethod
    def _gpu_capacity(cls, value: TfServingSettings, info: ValidationInfo) -> TfServingSettings:
        if value.min_replicas > value.max_replicas:
            raise LimitError(f"minReplicas {value.min_replicas} is above maxReplicas {value.max_replicas}")
        k = info.data.get("kubernetes")
        if k is not None and value.max_replicas > k.gpu_nodes.max * k.gpu_nodes.gpus:
            raise LimitError(f"maxReplicas {value.max_replicas} exceeds the GPUs of the GPU node group "
                             f"(kubernetes.gpuNodes.max x gpus = {k.gpu_nodes.max * k.gpu_nodes.gpus}): each "
                             "replica takes one GPU; lower it or raise kubernetes.gpuNodes.max")
        return value

    @property
    def bucket_name(self) -> str:
        return self.storage.bucket_name or self.default_bucket_name()


STAGE_CONFIGS: dict[str, type[StageConfig]] = {"mvp": MvpConfig, "partner": PartnerConfig, "prod": ProdConfig}

#: Keys that hold secrets. They are read by the programs as Pulumi secrets
#: (``Config.get_secret``), never into the typed config, and must be set with ``--secret``.
SECRET_KEYS = frozenset({"apiKey", "gitlabRunnerToken", "gitopsRepoToken"})

#: Keys read from the provider's namespace, with the name they take in the typed config.
PROVIDER_KEYS = {"folderId": "folderId", "zone": "zone"}


def _parse_value(raw: Any) -> Any:
    """Pulumi passes config as strings; structured values are JSON."""
    if isinstance(raw, str) and raw[:1] in "{[":
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def _key_name(loc: tuple[int | str, ...]) -> str:
    head, *rest = [str(p) for p in loc]
    namespace = PROVIDER if head in PROVIDER_KEYS.values() else PROJECT
    path = head + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in rest)
    return f"{namespace}:{path}"


def _describe(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    if kind == "missing":
        return "is required but not set"
    if kind == "extra_forbidden":
        return "is not a known setting (misspelled?)"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{message} (got {error.get('input')!r})"


def _known_keys(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The allowed keys at the level where an unknown key was found."""
    current: Any = model
    for part in loc[:-1]:
        field = current.model_fields.get(_field_name(current, str(part)))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return []
        current = field.annotation
    return sorted(f.alias or n for n, f in current.model_fields.items())


def _field_name(model: type[BaseModel], alias: str) -> str:
    for name, field in model.model_fields.items():
        if field.alias == alias:
            return name
    return alias


def load_stage_config(stack: str, config: Mapping[str, Any],
                      secret_keys: Collection[str] | None = None) -> StageConfig:
    """Build the typed config of ``stack`` from the flat Pulumi config map (``ns:key`` -> value).

    ``secret_keys`` are the keys the engine marks secret; a secret-holding key set in plain
    text is refused when it is given.
    """
    stack_file = f"Pulumi.{stack}.yaml"
    data: dict[str, Any] = {}
    for key, raw in config.items():
        namespace, _, name = key.partition(":")
        if namespace == PROJECT and name in SECRET_KEYS:
            if secret_keys is not None and key not in secret_keys:
                raise ConfigError(
                    f"{stack_file}: {key} holds a secret but is stored in plain text: remove it and run "
                    f"`pulumi config set --secret {name} <value> --stack {stack}`"
                )
            continue
        if namespace == PROJECT:
            data[name] = _parse_value(raw)
        elif namespace == PROVIDER and name in PROVIDER_KEYS:
            data[PROVIDER_KEYS[name]] = _parse_value(raw)
    data.setdefault("stage", stack)
    stage = data["stage"]
    if stage not in STAGES:
        raise ConfigError(
            f"{stack_file}: {PROJECT}:stage is {stage!r}; known stages: {', '.join(STAGES)} "
            "(set aistack:stage or name the stack after its stage)"
        )
    model = STAGE_CONFIGS.get(stage)
    if model is None:
        raise StageNotBuilt(stage)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            line = f"  {_key_name(error['loc'])}: {_describe(error)}"
            if error["type"] == "extra_forbidden":
                known = _known_keys(model, error["loc"])
                if known:
                    line += f"; known keys here: {', '.join(known)}"
            lines.append(line)
        raise ConfigError(f"{stack_file}: invalid stack configuration:\n" + "\n".join(lines)) from None


class StageNotBuilt(ConfigError):
    def __init__(self, stage: str) -> None:
        built = ", ".join(STAGE_CONFIGS)
        super().__init__(f"the {stage!r} stage is not built yet (built stages: {built})")
        self.stage = stage
