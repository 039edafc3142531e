"""The GPU inference host: a Compute instance on a GPU platform running a Docker Compose workload.

Boots Yandex's Container-Optimized Image (family ``container-optimized-image-gpu``: NVIDIA driver
and container toolkit included), which runs the Compose file from the metadata key
``docker-compose`` (see :mod:`components.host_workload` for what it contains and how secrets
reach the containers) and re-applies it to the running VM whenever it changes; cloud-init user-data
comes from the metadata key ``user-data``.

cloud-init applies user-data (the SSH users) once per instance: a changed value would reach the
metadata of the running VM and nothing else. So the instance is created anew when its user-data
changes (``replace_on_changes`` on ``metadata["user-data"]``, :data:`REPLACE_ON_USER_DATA`), deleted
first (``delete_before_replace``): its name is unique in the folder and its static address can be
attached to one VM at a time. A replacement loses what lives only on the boot disk: Prometheus' and
Grafana's data volumes and any prediction records still spooled for PostgreSQL.

The boot image is copied once from the family into the folder (a ``ComputeImage``), so a newer
image in the family does not replace the VM on the next ``pulumi up``; to move to a newer image,
replace that resource (``pulumi up --replace <its urn>``) or pin ``image_id``. The shape and zone
are checked against the platform (:mod:`components.gpu`) before anything is created. The public
address is static by default, so the service and Grafana URLs survive a re-creation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

import pulumi
from pulumi.output import UNKNOWN

from components.base import StageComponent, ValidationError
from components.gpu import T4, check_gpu_shape, check_gpu_zone
from components.yc import yandex

COI_GPU_FAMILY = "container-optimized-image-gpu"
COI_FAMILY = "container-optimized-image"
BootDiskType = Literal["network-ssd", "network-hdd"]
BOOT_DISK_TYPES: tuple[str, ...] = get_args(BootDiskType)
#: The GPU image, Triton's image (about 17 GB unpacked) and the rest need room.
DISK_RANGE_GB = (64, 4096)
#: Property path (Pulumi's syntax: bracket notation for a map key) whose change replaces the instance.
REPLACE_ON_USER_DATA = 'metadata["user-data"]'


def check_boot_disk(disk_type: str, size_gb: int, size_range: tuple[int, int]) -> None:
    if disk_type not in BOOT_DISK_TYPES:
        raise ValidationError(f"boot disk type {disk_type!r} is invalid: allowed {', '.join(BOOT_DISK_TYPES)}")
    low, high = size_range
    if not low <= size_gb <= high:
        raise ValidationError(f"boot disk size {size_gb} GB is out of range: allowed {low}-{high} GB")


@dataclass(frozen=True)
class GpuHostArgs:
    folder_id: str
    zone: str
    subnet_id: pulumi.Input[str]
    security_group_ids: Sequence[pulumi.Input[str]]
    service_account_id: pulumi.Input[str]
    #: The Compose file (metadata ``docker-compose``) and the cloud-init user-data.
    compose: pulumi.Input[str]
    user_data: pulumi.Input[str]
    platform_id: str = T4
    gpus: int = 1
    cores: int = 8
    memory_gb: int = 32
    disk_size_gb: int = 100
    disk_type: str = "network-ssd"
    preemptible: bool = False
    #: Reserve a static public address (otherwise an ephemeral one that changes on re-creation).
    static_ip: bool = True
    #: Boot from this image instead of a copy of the family's latest.
    image_id: str | None = None
    image_family: str = COI_GPU_FAMILY

    def __post_init__(self) -> None:
        check_gpu_shape(self.platform_id, self.gpus, self.cores, self.memory_gb)
        check_gpu_zone(self.platform_id, self.zone)
        check_boot_disk(self.disk_type, self.disk_size_gb, DISK_RANGE_GB)
        if not self.security_group_ids:
            raise ValidationError("the GPU host needs a security group: without one the network's default group "
                                  "applies")


def boot_image(owner: StageComponent, folder_id: str, family: str, image_id: str | None) -> pulumi.Input[str]:
    """``image_id`` if pinned, else a folder copy of the family's latest image (a child of ``owner``)."""
    if image_id is not None:
        return image_id
    image = yandex.ComputeImage(
        owner.child_name("image"),
        yandex.ComputeImageArgs(folder_id=folder_id, name=owner.child_name("image"), source_family=family,
                                description=f"Copy of the latest {family} image, pinned for this host",
                                labels=owner.labels),
        opts=owner.child(),
    )
    return image.id


class GpuHost(StageComponent):
    component = "gpu-host"

    def __init__(self, name: str, args: GpuHostArgs, labels: dict[str, str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gpu:GpuHost", name, labels, opts)
        image_id = boot_image(self, args.folder_id, args.image_family, args.image_id)

        nat_ip: pulumi.Output[str] | None = None
        if args.static_ip:
            address = yandex.VpcAddress(
                self.child_name("ip"),
                yandex.VpcAddressArgs(
                    folder_id=args.folder_id, name=self.child_name("ip"),
                    description="Public address of the GPU inference host",
                    external_ipv4_address=yandex.VpcAddressExternalIpv4AddressArgs(zone_id=args.zone),
                    labels=self.labels),
                opts=self.child(),
            )
            nat_ip = cast(pulumi.Output[str], address.external_ipv4_address.apply(lambda a: a.address if a else None))

        self.instance = yandex.ComputeInstance(
            self.child_name("vm"),
            yandex.ComputeInstanceArgs(
                folder_id=args.folder_id,
                name=self.child_name("vm"),
                hostname=self.child_name("vm"),
                description="GPU inference host: Triton, the inference service, Prometheus, Grafana",
                zone=args.zone,
                platform_id=args.platform_id,
                resources=yandex.ComputeInstanceResourcesArgs(cores=args.cores, memory=args.memory_gb,
                                                              gpus=args.gpus, core_fraction=100),
                boot_disk=yandex.ComputeInstanceBootDiskArgs(
                    initialize_params=yandex.ComputeInstanceBootDiskInitializeParamsArgs(
                        image_id=image_id, size=args.disk_size_gb, type=args.disk_type),
                    auto_delete=True,
                ),
                network_interfaces=[yandex.ComputeInstanceNetworkInterfaceArgs(
                    subnet_id=args.subnet_id, nat=True, nat_ip_address=nat_ip,
                    security_group_ids=list(args.security_group_ids))],
                scheduling_policy=yandex.ComputeInstanceSchedulingPolicyArgs(preemptible=args.preemptible),
                service_account_id=args.service_account_id,
                metadata={"docker-compose": args.compose, "user-data": args.user_data, "serial-port-enable": "0"},
                # The GCE-style endpoint (and its IAM token) is what the boot step uses; the EC2-style one is off.
                metadata_options=yandex.ComputeInstanceMetadataOptionsArgs(
                    gce_http_endpoint=1, gce_http_token=1, aws_v1_http_endpoint=2, aws_v1_http_token=2),
                allow_stopping_for_update=True,
                labels=self.labels,
            ),
            opts=self.child(replace_on_changes=[REPLACE_ON_USER_DATA], delete_before_replace=True),
        )
        interface = self.instance.network_interfaces.apply(lambda nics: nics[0] if nics else None)
        self.public_ip: pulumi.Output[str | None] = interface.apply(
            lambda nic: getattr(nic, "nat_ip_address", None) if nic else None)
        self.private_ip: pulumi.Output[str | None] = interface.apply(
            lambda nic: getattr(nic, "ip_address", None) if nic else None)
        self.instance_id: pulumi.Output[str] = self.instance.id
        self.register_outputs({"instance_id": self.instance_id, "public_ip": self.public_ip,
                               "private_ip": self.private_ip})

    def url(self, port: int) -> pulumi.Output[str | None]:
        """``http://<public ip>:<port>``, unknown until the address is."""
        return self.public_ip.apply(lambda ip: f"http://{ip}:{port}" if ip else _unknown_in_preview())


def _unknown_in_preview() -> Any:
    """A value only the cloud knows: unknown in a preview (the offline plan shows ``[computed]``)."""
    return UNKNOWN if pulumi.runtime.is_dry_run() else None
