"""Serverless inference: a Yandex Serverless Container running the service image by digest.

Limits checked here (Yandex Serverless Containers, "Runtime environment" and "Quotas and limits"):
memory in MB, a multiple of 128, at most 8192; 1-4 cores, at most what the memory allows (1 vCPU
below 4 GB, 2 below 6 GB, 3 below 8 GB, 4 at 8 GB); core fraction a multiple of 5 % from 5 to
100, and 100 when cores > 1; 1-16 concurrent requests per instance; execution timeout 1 s - 1 h.
Warned about, because they need something of the cloud: a timeout over 10 minutes (a long-lived
container), provisioned instances beyond the default quota (2 per cloud), log retention beyond
Cloud Logging's (31 days). Logs go to a dedicated Cloud Logging group. Invocation is public only
when asked for (an ``allUsers`` invoker binding); otherwise callers need
``serverless.containers.invoker``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import pulumi

from components.base import StageComponent, ValidationError
from components.yc import yandex

MEMORY_STEP_MB = 128
MEMORY_MAX_MB = 8192
CORES = (1, 2, 3, 4)
CORE_FRACTION_RANGE = (5, 100)
CORE_FRACTION_STEP = 5
CONCURRENCY_RANGE = (1, 16)
TIMEOUT_RANGE_S = (1, 3600)
#: Above this an instance is a long-lived container (Yandex: "a timeout of over 10 minutes is only
#: available for long-lived containers").
LONG_LIVED_AFTER_S = 600
#: Default quotas a stage may run into, with their quota ids.
PROVISIONED_QUOTA = ("serverless.containersWorkersProvisioned.count", 2)
LOG_RETENTION_QUOTA = ("logging.retentionDays.count", 31)
#: The most vCPUs an instance gets for its memory: (memory below, in MB) -> cores.
_CORES_BY_MEMORY = ((4096, 1), (6144, 2), (8192, 3))
LogLevel = Literal["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"]
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def check_memory(memory_mb: int) -> None:
    if memory_mb <= 0 or memory_mb % MEMORY_STEP_MB or memory_mb > MEMORY_MAX_MB:
        raise ValidationError(
            f"memory {memory_mb} MB is invalid: Serverless Containers take a multiple of "
            f"{MEMORY_STEP_MB} MB, at most {MEMORY_MAX_MB} MB (e.g. 512, 1024, 2048)"
        )


def check_in_range(what: str, value: int, bounds: tuple[int, int], unit: str = "") -> None:
    low, high = bounds
    if not low <= value <= high:
        raise ValidationError(f"{what} {value}{unit} is out of range: allowed {low}-{high}{unit}")


def check_cores(cores: int) -> None:
    if cores not in CORES:
        raise ValidationError(f"cores {cores} is invalid: allowed {', '.join(map(str, CORES))}")


def max_cores(memory_mb: int) -> int:
    """The vCPUs an instance of ``memory_mb`` gets at most (the runtime page's table)."""
    return next((cores for below, cores in _CORES_BY_MEMORY if memory_mb < below), 4)


def check_cores_for_memory(cores: int, memory_mb: int) -> None:
    allowed = max_cores(memory_mb)
    if cores > allowed:
        needed = {2: 4096, 3: 6144, 4: 8192}[cores]
        raise ValidationError(f"{cores} cores need at least {needed} MB of memory: an instance with {memory_mb} MB "
                              f"gets at most {allowed} vCPU (1 below 4 GB, 2 below 6 GB, 3 below 8 GB, 4 at 8 GB)")


def check_core_fraction(core_fraction: int, cores: int) -> None:
    check_in_range("core fraction", core_fraction, CORE_FRACTION_RANGE, "%")
    if core_fraction % CORE_FRACTION_STEP:
        raise ValidationError(f"core fraction {core_fraction}% is invalid: use a multiple of {CORE_FRACTION_STEP}% "
                              "(5, 10, ... 100)")
    if cores > 1 and core_fraction != 100:
        raise ValidationError(f"core fraction {core_fraction}% is invalid with {cores} cores: more than one core "
                              "takes 100%")


def quota_warnings(timeout_s: int, provisioned_instances: int, log_retention_days: int) -> list[str]:
    """What the configuration needs of the cloud beyond the defaults, each naming the quota or feature."""
    warnings = []
    if timeout_s > LONG_LIVED_AFTER_S:
        warnings.append(f"execution timeout {timeout_s} s is over 10 minutes: the container becomes a long-lived "
                        "container, which Yandex offers on request (Preview): ask support to enable it for the cloud")
    quota, default = PROVISIONED_QUOTA
    if provisioned_instances > default:
        warnings.append(f"{provisioned_instances} provisioned instances exceed the default quota of {default} per "
                        f"cloud ({quota}): request an increase before deploying")
    quota, default = LOG_RETENTION_QUOTA
    if log_retention_days > default:
        warnings.append(f"log retention {log_retention_days} days exceeds Cloud Logging's default of {default} days "
                        f"({quota}): request an increase or the log group cannot be created")
    return warnings


def check_image_digest(digest: str) -> None:
    if not _DIGEST.match(digest):
        raise ValidationError(
            f"image digest {digest!r} is invalid: expected 'sha256:' followed by 64 lowercase hex characters "
            "(the digest the build job recorded)"
        )


@dataclass(frozen=True)
class SecretEnv:
    """An environment variable filled from a Lockbox secret entry."""

    env: str
    secret_id: pulumi.Input[str]
    version_id: pulumi.Input[str]
    key: str


@dataclass(frozen=True)
class ServerlessServiceArgs:
    folder_id: str
    service_account_id: pulumi.Input[str]
    #: ``cr.yandex/<registry-id>/<repository>``
    image_repository: pulumi.Input[str]
    image_digest: str
    memory_mb: int = 1024
    cores: int = 1
    core_fraction: int = 100
    concurrency: int = 4
    execution_timeout_s: int = 30
    provisioned_instances: int = 0
    public: bool = False
    log_retention_days: int = 7
    log_min_level: str = "INFO"
    environment: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    secrets: Sequence[SecretEnv] = field(default_factory=list)
    #: The grants a revision needs before it is deployed: the account's image pull, its secrets'
    #: payloadViewer and its logging.writer. The provider turns a revision that fails for want of
    #: them into a warning only, and the stack would then record a container without a revision.
    grants: Sequence[pulumi.Resource] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_memory(self.memory_mb)
        check_cores(self.cores)
        check_cores_for_memory(self.cores, self.memory_mb)
        check_core_fraction(self.core_fraction, self.cores)
        check_in_range("concurrency", self.concurrency, CONCURRENCY_RANGE)
        check_in_range("execution timeout", self.execution_timeout_s, TIMEOUT_RANGE_S, " s")
        check_in_range("provisioned instances", self.provisioned_instances, (0, 100))
        check_in_range("log retention", self.log_retention_days, (1, 3653), " days")
        check_image_digest(self.image_digest)
        if self.log_min_level not in LOG_LEVELS:
            raise ValidationError(f"log level {self.log_min_level!r} is invalid: allowed {', '.join(LOG_LEVELS)}")
        clash = set(self.environment) & {s.env for s in self.secrets}
        if clash:
            raise ValidationError(f"environment variables set both plainly and from secrets: {sorted(clash)}")


class ServerlessService(StageComponent):
    component = "serverless"

    def __init__(self, name: str, args: ServerlessServiceArgs, labels: dict[str, str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("serverless:ServerlessService", name, labels, opts)
        for warning in quota_warnings(args.execution_timeout_s, args.provisioned_instances, args.log_retention_days):
            pulumi.log.warn(f"{name}: {warning}")

        self.log_group = yandex.LoggingGroup(
            self.child_name("logs"),
            yandex.LoggingGroupArgs(
                folder_id=args.folder_id,
                name=self.child_name("logs"),
                description="JSON request logs of the inference service",
                retention_period=f"{args.log_retention_days * 24}h",
                labels=self.labels,
            ),
            opts=self.child(),
        )

        self.container = yandex.ServerlessContainer(
            self.child_name("container"),
            yandex.ServerlessContainerArgs(
                folder_id=args.folder_id,
                name=self.child_name("container"),
                description="FastAPI + ONNX Runtime inference service",
                service_account_id=args.service_account_id,
                image=yandex.ServerlessContainerImageArgs(
                    url=pulumi.Output.concat(args.image_repository, "@", args.image_digest),
                    digest=args.image_digest,
                    environment=dict(args.environment),
                ),
                memory=args.memory_mb,
                cores=args.cores,
                core_fraction=args.core_fraction,
                concurrency=args.concurrency,
                execution_timeout=f"{args.execution_timeout_s}s",
                provision_policy=(
                    yandex.ServerlessContainerProvisionPolicyArgs(min_instances=args.provisioned_instances)
                    if args.provisioned_instances else None
                ),
                secrets=[
                    yandex.ServerlessContainerSecretArgs(
                        environment_variable=s.env, id=s.secret_id, version_id=s.version_id, key=s.key)
                    for s in args.secrets
                ] or None,
                log_options=yandex.ServerlessContainerLogOptionsArgs(
                    log_group_id=self.log_group.id, min_level=args.log_min_level),
                labels=self.labels,
            ),
            opts=self.child(depends_on=list(args.grants)),
        )

        if args.public:
            yandex.ServerlessContainerIamBinding(
                self.child_name("public-invoker"),
                yandex.ServerlessContainerIamBindingArgs(
                    container_id=self.container.id,
                    role="serverless.containers.invoker",
                    members=["system:allUsers"],
                ),
                opts=self.child(),
            )

        self.url: pulumi.Output[str] = self.container.url
        self.register_outputs({"url": self.url, "container_id": self.container.id,
                               "log_group_id": self.log_group.id})
