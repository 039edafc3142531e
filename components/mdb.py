"""Yandex Managed Databases: what PostgreSQL and ClickHouse share: host classes, disk limits, the
special FQDN and the Lockbox secret of the service user's generated password (:func:`user_password_secret`).

Both services run on the same host classes, but do not offer the same ones (Yandex's
"Host classes" pages of each service): PostgreSQL has no ``b3`` class, ClickHouse offers
``b3-c1-m4``. Disks (each service's "Quotas and limits" page):

- ``network-ssd``/``network-hdd``: burstable classes (``b2``, ``b3``) up to 512 GB; ClickHouse on
  Cascade Lake classes (``s2``, ``m2``) up to 4096 GB and on Ice Lake (``s3``, ``m3``) up to
  8192 GB; PostgreSQL up to 8192 GB on either; 10 GB at least;
- ``network-ssd-nonreplicated`` in steps of 93 GB and ``local-ssd`` in steps of 100 GB (Cascade
  Lake) or 368 GB (Ice Lake): the cloud keeps no copy, so the service wants several hosts.

``yc managed-postgresql resource-preset list`` / ``yc managed-clickhouse resource-preset list``
show a cloud's current offer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import pulumi
import pulumi_random

from components.base import StageComponent, ValidationError
from components.secrets import GeneratedSecret, GeneratedSecretArgs

DiskType = Literal["network-ssd", "network-hdd", "network-ssd-nonreplicated", "local-ssd"]
DISK_TYPES: tuple[str, ...] = get_args(DiskType)
MIN_DISK_GB = 10
NONREPLICATED_STEP_GB = 93
LOCAL_SSD_STEP_GB = {"cascade-lake": 100, "ice-lake": 368}
BURSTABLE_MAX_DISK_GB = 512


@dataclass(frozen=True)
class HostClass:
    cores: int
    memory_gb: int
    #: ``cascade-lake`` (s2, b2, m2) or ``ice-lake`` (s3, b3, m3).
    generation: str
    burstable: bool = False


HOST_CLASSES: dict[str, HostClass] = {
    # Intel Cascade Lake
    "b2.medium": HostClass(2, 4, "cascade-lake", burstable=True),
    "s2.micro": HostClass(2, 8, "cascade-lake"),
    "s2.small": HostClass(4, 16, "cascade-lake"),
    "s2.medium": HostClass(8, 32, "cascade-lake"),
    "s2.large": HostClass(12, 48, "cascade-lake"),
    "s2.xlarge": HostClass(16, 64, "cascade-lake"),
    "s2.2xlarge": HostClass(24, 96, "cascade-lake"),
    "m2.micro": HostClass(2, 16, "cascade-lake"),
    "m2.small": HostClass(4, 32, "cascade-lake"),
    "m2.medium": HostClass(6, 48, "cascade-lake"),
    # Intel Ice Lake
    "b3-c1-m4": HostClass(2, 4, "ice-lake", burstable=True),
    "s3-c2-m8": HostClass(2, 8, "ice-lake"),
    "s3-c4-m16": HostClass(4, 16, "ice-lake"),
    "s3-c8-m32": HostClass(8, 32, "ice-lake"),
    "s3-c12-m48": HostClass(12, 48, "ice-lake"),
    "s3-c16-m64": HostClass(16, 64, "ice-lake"),
    "s3-c24-m96": HostClass(24, 96, "ice-lake"),
    "s3-c32-m128": HostClass(32, 128, "ice-lake"),
    "m3-c2-m16": HostClass(2, 16, "ice-lake"),
    "m3-c4-m32": HostClass(4, 32, "ice-lake"),
    "m3-c8-m64": HostClass(8, 64, "ice-lake"),
}


@dataclass(frozen=True)
class Service:
    """One Managed Databases service: its name, the classes it offers and its network-disk caps."""

    name: str
    classes: tuple[str, ...]
    #: Largest network disk (GB) per host generation.
    network_disk_max_gb: dict[str, int]
    #: The CLI's preset listing, for messages.
    cli: str
    #: The database engine, for descriptions.
    engine: str

    def host_class(self, preset: str) -> HostClass:
        if preset not in self.classes:
            raise ValidationError(
                f"resource preset {preset!r} is not a {self.name} host class: allowed {', '.join(self.classes)} "
                f"(check `{self.cli} resource-preset list` for your cloud)")
        return HOST_CLASSES[preset]

    def check_disk(self, preset: str, disk_type: str, size_gb: int, copies: int, min_copies: int,
                   copies_name: str) -> None:
        """A disk of ``disk_type`` and ``size_gb`` on ``preset``, with ``copies`` hosts holding the data
        (the cloud keeps none of non-replicated and local disks: they need ``min_copies``)."""
        host = self.host_class(preset)
        if disk_type not in DISK_TYPES:
            raise ValidationError(f"disk type {disk_type!r} is invalid: allowed {', '.join(DISK_TYPES)}")
        if disk_type in ("network-ssd-nonreplicated", "local-ssd"):
            if copies < min_copies:
                raise ValidationError(f"{disk_type} is not replicated by the cloud: it needs {min_copies} or more "
                                      f"{copies_name} (got {copies}); add them or use network-ssd")
            if host.burstable:
                raise ValidationError(f"{preset} takes network disks only (network-ssd or network-hdd)")
        if disk_type == "network-ssd-nonreplicated":
            if size_gb <= 0 or size_gb % NONREPLICATED_STEP_GB:
                raise ValidationError(f"disk size {size_gb} GB is invalid for network-ssd-nonreplicated: use a "
                                      f"multiple of {NONREPLICATED_STEP_GB} GB (93, 186, 279, ...)")
        elif disk_type == "local-ssd":
            step = LOCAL_SSD_STEP_GB[host.generation]
            if size_gb <= 0 or size_gb % step:
                raise ValidationError(f"disk size {size_gb} GB is invalid for local-ssd on {preset} "
                                      f"({host.generation}): use a multiple of {step} GB")
        else:
            high = BURSTABLE_MAX_DISK_GB if host.burstable else self.network_disk_max_gb[host.generation]
            if not MIN_DISK_GB <= size_gb <= high:
                raise ValidationError(f"disk size {size_gb} GB is out of range for {disk_type} on {preset} in "
                                      f"{self.name}: allowed {MIN_DISK_GB}-{high} GB")


POSTGRESQL = Service(
    "Managed PostgreSQL",
    classes=tuple(name for name in HOST_CLASSES if not name.startswith("b3")),
    network_disk_max_gb={"cascade-lake": 8192, "ice-lake": 8192},
    cli="yc managed-postgresql",
    engine="PostgreSQL",
)
CLICKHOUSE = Service(
    "Managed ClickHouse",
    classes=tuple(HOST_CLASSES),
    network_disk_max_gb={"cascade-lake": 4096, "ice-lake": 8192},
    cli="yc managed-clickhouse",
    engine="ClickHouse",
)


def special_fqdn(cluster_id: str) -> str:
    """The FQDN that resolves to the cluster's primary (PostgreSQL) or an available host (ClickHouse)."""
    return f"c-{cluster_id}.rw.mdb.yandexcloud.net"


def user_password_secret(owner: StageComponent, service: Service, password: pulumi_random.RandomPassword, *,
                         folder_id: str, user: str, entry: str, readers: Sequence[pulumi.Input[str]],
                         deletion_protection: bool, labels: dict[str, str]) -> GeneratedSecret:
    """The Lockbox secret ``<owner>-password`` with the service user's generated ``password`` under ``entry``,
    readable by ``readers``."""
    return GeneratedSecret(
        owner.child_name("password"),
        password,
        GeneratedSecretArgs(folder_id=folder_id, description=f"Password of {service.engine} user {user}", entry=entry,
                            readers=list(readers), deletion_protection=deletion_protection),
        labels,
        opts=owner.child(),
    )
