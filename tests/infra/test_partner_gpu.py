"""GPU shapes and zones (reused by prod's node group) and the GPU host component under mocks."""

from __future__ import annotations

import pytest

from components.base import ValidationError
from components.gpu import A100, T4, check_gpu_platform, check_gpu_shape, check_gpu_zone
from components.gpu_host import REPLACE_ON_USER_DATA, GpuHost, GpuHostArgs
from tests.infra.resource_options import Registered, lookup, record_options

LABELS = {"project": "aistack", "stage": "partner"}
T4_SHAPES = "exactly 1 GPU with 4/16, 8/32, 16/64 or 32/128 vCPU/GB"


@pytest.mark.parametrize(("cores", "memory"), [(4, 16), (8, 32), (16, 64), (32, 128)])
def test_t4_shapes_are_accepted(cores, memory):
    shape = check_gpu_shape(T4, 1, cores, memory)
    assert (shape.gpus, shape.cores, shape.memory_gb) == (1, cores, memory)


@pytest.mark.parametrize(("gpus", "cores", "memory"), [(1, 8, 16), (1, 6, 24), (2, 16, 64), (1, 4, 32), (0, 4, 16)])
def test_other_t4_shapes_are_refused_with_the_allowed_list(gpus, cores, memory):
    with pytest.raises(ValidationError) as info:
        check_gpu_shape(T4, gpus, cores, memory)
    assert str(info.value) == (
        f"standard-v3-t4 (NVIDIA T4 16 GB) does not offer {gpus} GPU / {cores} vCPU / {memory} GB: it takes "
        f"{T4_SHAPES}; set gpus, cores and memory to one of those shapes")


@pytest.mark.parametrize("gpus", [1, 2, 4, 8])
def test_a100_shapes_scale_per_gpu(gpus):
    assert check_gpu_shape(A100, gpus, 28 * gpus, 119 * gpus).gpus == gpus


def test_a100_wrong_shape_lists_per_gpu_rule():
    with pytest.raises(ValidationError, match=r"gpu-standard-v3 \(NVIDIA A100 80 GB\) does not offer 3 GPU / 84 vCPU "
                                              r"/ 357 GB: it takes 1, 2, 4, 8 GPUs with 28 vCPU and 119 GB per GPU"):
        check_gpu_shape(A100, 3, 84, 357)


def test_unknown_platform_hints_at_the_common_mistake():
    with pytest.raises(ValidationError, match=r"GPU platform 'standard-v3' is not supported \(did you mean "
                                              r"'gpu-standard-v3'\?\): use one of standard-v3-t4 \(NVIDIA T4 16 GB\), "
                                              r"standard-v3-t4i \(NVIDIA T4i 24 GB\), gpu-standard-v3 \(NVIDIA A100 "
                                              r"80 GB\)"):
        check_gpu_platform("standard-v3")


@pytest.mark.parametrize("zone", ["ru-central1-a", "ru-central1-b"])
def test_gpu_zones(zone):
    check_gpu_zone(T4, zone)
    check_gpu_zone(A100, zone)


def test_a100_in_zone_d_is_refused():
    with pytest.raises(ValidationError) as info:
        check_gpu_zone(A100, "ru-central1-d")
    assert str(info.value) == ("gpu-standard-v3 (NVIDIA A100 80 GB) runs only in ru-central1-a and ru-central1-b, not "
                               "in ru-central1-d: put the GPU workload in one of those zones (yandex:zone)")


def test_t4i_is_a_real_platform_in_zone_d():
    """Compute Cloud's T4i (24 GB): the T4's shapes, in ru-central1-d; T4 itself runs there too."""
    check_gpu_shape("standard-v3-t4i", 1, 8, 32)
    check_gpu_zone("standard-v3-t4i", "ru-central1-d")
    check_gpu_zone(T4, "ru-central1-d")
    with pytest.raises(ValidationError, match=r"standard-v3-t4i \(NVIDIA T4i 24 GB\) runs only in ru-central1-d, "
                                              r"not in ru-central1-a"):
        check_gpu_zone("standard-v3-t4i", "ru-central1-a")


def host_args(**kw: object) -> GpuHostArgs:
    base: dict[str, object] = {"folder_id": "f", "zone": "ru-central1-a", "subnet_id": "subnet-1",
                               "security_group_ids": ["sg-1"], "service_account_id": "sa-1",
                               "compose": "services: {}\n", "user_data": "#cloud-config\n{}\n"}
    return GpuHostArgs(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(("kw", "message"), [
    ({"cores": 6, "memory_gb": 24}, "does not offer 1 GPU / 6 vCPU / 24 GB"),
    ({"platform_id": "standard-v3-t4i", "zone": "ru-central1-a"}, "runs only in ru-central1-d"),
    ({"disk_size_gb": 30}, "boot disk size 30 GB is out of range: allowed 64-4096 GB"),
    ({"disk_type": "network-ssd-nonreplicated"}, "boot disk type 'network-ssd-nonreplicated' is invalid: allowed "
                                                 "network-ssd, network-hdd"),
    ({"security_group_ids": []}, "needs a security group"),
])
def test_host_args_are_validated_before_anything_is_created(kw, message):
    with pytest.raises(ValidationError, match=message):
        host_args(**kw)


def test_gpu_host_as_registered(run_component):
    rec = run_component(lambda: GpuHost("gpu", host_args(preemptible=True), LABELS))
    vm = rec.one("ComputeInstance").inputs
    assert vm["platformId"] == "standard-v3-t4"
    assert vm["resources"] == {"cores": 8, "memory": 32, "gpus": 1, "coreFraction": 100}
    assert vm["schedulingPolicy"] == {"preemptible": True}
    assert vm["serviceAccountId"] == "sa-1"
    assert vm["bootDisk"]["initializeParams"] == {"imageId": "(gpu-image.id)", "size": 100, "type": "network-ssd"}
    # the static address is only known once created; a preview shows it as computed
    assert vm["networkInterfaces"] == [{"subnetId": "subnet-1", "nat": True, "natIpAddress": "[computed]",
                                        "securityGroupIds": ["sg-1"]}]
    assert vm["metadata"] == {"docker-compose": "services: {}\n", "user-data": "#cloud-config\n{}\n",
                              "serial-port-enable": "0"}
    assert vm["metadataOptions"] == {"gceHttpEndpoint": 1, "gceHttpToken": 1, "awsV1HttpEndpoint": 2,
                                     "awsV1HttpToken": 2}
    assert vm["labels"]["component"] == "gpu-host"
    image = rec.one("ComputeImage").inputs
    assert image["sourceFamily"] == "container-optimized-image-gpu" and image["folderId"] == "f"
    assert rec.one("VpcAddress").inputs["externalIpv4Address"] == {"zoneId": "ru-central1-a"}


def test_a_user_data_change_replaces_the_host(run_component, monkeypatch):
    """cloud-init applies user-data once per instance: a change of it is made by a new instance, the old one
    deleted first (its name and static address cannot be held by two instances)."""
    registered = record_options(monkeypatch)
    rec = run_component(lambda: GpuHost("gpu", host_args(), LABELS))
    vm = rec.one("ComputeInstance")
    assert registered[vm.name] == Registered(('metadata["user-data"]',), delete_before_replace=True)
    assert lookup(vm.inputs, REPLACE_ON_USER_DATA) == "#cloud-config\n{}\n"
    assert not any(o.replace_on_changes for name, o in registered.items() if name != vm.name)


def test_pinned_image_and_ephemeral_address(run_component):
    rec = run_component(lambda: GpuHost("gpu", host_args(image_id="fd8abc", static_ip=False), LABELS))
    assert rec.of_type("ComputeImage") == [] and rec.of_type("VpcAddress") == []
    assert rec.one("ComputeInstance").inputs["bootDisk"]["initializeParams"]["imageId"] == "fd8abc"
