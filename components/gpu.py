"""GPU platforms of Yandex Compute Cloud: the shapes and zones each one allows.

Checked before anything is created: an invalid vCPU/RAM combination can make the provider hang
for about 30 minutes instead of failing (terraform-provider-yandex#178). The VM of the
``partner`` stage and the GPU node group of ``prod`` use the same functions.

| platform id | GPU | shapes (GPUs, vCPU, RAM GB) | zones |
|---|---|---|---|
| ``standard-v3-t4`` | NVIDIA T4 16 GB | exactly 1 GPU with 4/16, 8/32, 16/64 or 32/128 | ru-central1-a, -b, -d |
| ``standard-v3-t4i`` | NVIDIA T4i 24 GB | the same shapes as T4 | ru-central1-d |
| ``gpu-standard-v3`` | NVIDIA A100 80 GB | 1, 2, 4 or 8 GPUs, 28 vCPU and 119 GB per GPU | ru-central1-a, -b |

Zones as Compute Cloud's pages give them: V100, A100 and T4 in ``-a`` and ``-b`` ("GPUs"), and of
the GPU platforms only T4, T4i, Gen2 and GPU PLATFORM V4 in ``-d`` (the ``-d``/``-e`` platform
table). T4i's GPU quota, like the others', is zero until requested.
"""

from __future__ import annotations

from dataclasses import dataclass

from components.base import ValidationError


@dataclass(frozen=True)
class GpuShape:
    gpus: int
    cores: int
    memory_gb: int

    def __str__(self) -> str:
        return f"{self.gpus} GPU / {self.cores} vCPU / {self.memory_gb} GB"


@dataclass(frozen=True)
class GpuPlatform:
    id: str
    gpu: str
    shapes: tuple[GpuShape, ...]
    zones: tuple[str, ...]

    def describe_shapes(self) -> str:
        gpu_counts = sorted({s.gpus for s in self.shapes})
        if gpu_counts == [1]:
            pairs = [f"{s.cores}/{s.memory_gb}" for s in self.shapes]
            return f"exactly 1 GPU with {', '.join(pairs[:-1])} or {pairs[-1]} vCPU/GB"
        per_gpu = self.shapes[0]
        counts = ", ".join(str(n) for n in gpu_counts)
        return (f"{counts} GPUs with {per_gpu.cores} vCPU and {per_gpu.memory_gb} GB per GPU "
                f"({'; '.join(str(s) for s in self.shapes)})")


T4 = "standard-v3-t4"
T4I = "standard-v3-t4i"
A100 = "gpu-standard-v3"
GPU_ZONES = ("ru-central1-a", "ru-central1-b")
_T4_SHAPES = tuple(GpuShape(1, c, m) for c, m in ((4, 16), (8, 32), (16, 64), (32, 128)))

PLATFORMS: dict[str, GpuPlatform] = {
    T4: GpuPlatform(
        id=T4,
        gpu="NVIDIA T4 16 GB",
        shapes=_T4_SHAPES,
        zones=(*GPU_ZONES, "ru-central1-d"),
    ),
    T4I: GpuPlatform(
        id=T4I,
        gpu="NVIDIA T4i 24 GB",
        shapes=_T4_SHAPES,
        zones=("ru-central1-d",),
    ),
    A100: GpuPlatform(
        id=A100,
        gpu="NVIDIA A100 80 GB",
        shapes=tuple(GpuShape(n, 28 * n, 119 * n) for n in (1, 2, 4, 8)),
        zones=GPU_ZONES,
    ),
}

#: Platform ids people type by mistake, and what they meant.
_LOOKALIKES = {"standard-v3": A100, "t4": T4, "t4i": T4I, "gpu-standard-v3-t4": T4}


def check_gpu_platform(platform_id: str) -> GpuPlatform:
    platform = PLATFORMS.get(platform_id)
    if platform is None:
        hint = f" (did you mean {_LOOKALIKES[platform_id]!r}?)" if platform_id in _LOOKALIKES else ""
        raise ValidationError(
            f"GPU platform {platform_id!r} is not supported{hint}: use one of "
            + ", ".join(f"{p.id} ({p.gpu})" for p in PLATFORMS.values())
        )
    return platform


def check_gpu_shape(platform_id: str, gpus: int, cores: int, memory_gb: float) -> GpuShape:
    """The shape if ``platform_id`` allows it; otherwise an error listing the allowed shapes."""
    platform = check_gpu_platform(platform_id)
    for shape in platform.shapes:
        if (shape.gpus, shape.cores, shape.memory_gb) == (gpus, cores, memory_gb):
            return shape
    got = f"{gpus} GPU / {cores} vCPU / {memory_gb:g} GB"
    raise ValidationError(
        f"{platform.id} ({platform.gpu}) does not offer {got}: it takes {platform.describe_shapes()}; "
        "set gpus, cores and memory to one of those shapes"
    )


def _and(items: tuple[str, ...]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def check_gpu_zone(platform_id: str, zone: str) -> None:
    platform = check_gpu_platform(platform_id)
    if zone not in platform.zones:
        raise ValidationError(
            f"{platform.id} ({platform.gpu}) runs only in {_and(platform.zones)}, not in {zone}: "
            f"put the GPU workload in one of those zones (yandex:zone)"
        )
