"""The NVIDIA GPU Operator on the GPU node group (Helm release, pinned).

Why the operator rather than the bare device plugin: the prod GPU nodes are **driverless** by
default (``gpu_settings.gpu_environment = "runc"``), so the node image carries no NVIDIA driver;
the operator installs the driver (at the pinned version), the container toolkit, the device
plugin (which advertises ``nvidia.com/gpu``), GPU feature discovery and the DCGM exporter. With
``driverless: false`` the nodes keep Yandex's preinstalled driver and the operator runs with its
driver component off (device plugin, toolkit and exporter only).

The **DCGM exporter** is the GPUs' metrics source in prod: a DaemonSet on the GPU nodes (pods
labelled ``app: nvidia-dcgm-exporter``) serving Prometheus metrics on port 9400
(``DCGM_FI_DEV_GPU_UTIL``, ``DCGM_FI_DEV_FB_USED``, ``DCGM_FI_DEV_FB_FREE``, ...). Metricbeat finds
its pods by that label (components.metricbeat); no Prometheus operator runs here, so its
ServiceMonitor stays off.

Checked here (Yandex's note for Managed Kubernetes): driverless nodes need GPU Operator chart
v24.9.2 or newer, and with Kubernetes 1.30 or newer a driver of 550.144.03 or newer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components.base import ValidationError
from components.k8s_platform import GPU_OPERATOR_CHART, ChartPin, K8sComponent, check_namespace
from components.kubernetes import GPU_TAINT_KEY, POOL_LABEL

MIN_OPERATOR = (24, 9, 2)
MIN_DRIVER_K8S_130 = (550, 144, 3)
GPU_TOLERATION = {"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}
#: How the operator's DCGM exporter pods are labelled and where they serve metrics.
DCGM_EXPORTER_LABELS = {"app": "nvidia-dcgm-exporter"}
DCGM_EXPORTER_PORT = 9400


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def check_gpu_operator(chart_version: str, driver_version: str, k8s_version: str, driverless: bool) -> None:
    if not re.match(r"^\d+\.\d+(\.\d+)?$", driver_version):
        raise ValidationError(f"NVIDIA driver version {driver_version!r} is invalid: give it as the operator's "
                              "driver tag, e.g. 550.144.03")
    if not driverless:
        return
    if _version(chart_version) < MIN_OPERATOR:
        raise ValidationError(f"driverless GPU nodes need the GPU Operator v24.9.2 or newer (chart version "
                              f"{chart_version}): raise charts.gpuOperator or set driverless to false")
    if _version(k8s_version + ".0") >= (1, 30, 0) and _version(driver_version) < MIN_DRIVER_K8S_130:
        raise ValidationError(f"NVIDIA driver {driver_version} is too old for Kubernetes {k8s_version}: driverless "
                              "nodes on Kubernetes 1.30 or newer need driver 550.144.03 or newer")


@dataclass(frozen=True)
class GpuOperatorArgs:
    k8s_version: str
    driverless: bool = True
    driver_version: str = "550.144.03"
    chart: ChartPin = GPU_OPERATOR_CHART
    namespace: str = "gpu-operator"

    def __post_init__(self) -> None:
        check_namespace(self.namespace)
        check_gpu_operator(self.chart.version, self.driver_version, self.k8s_version, self.driverless)


def gpu_operator_values(args: GpuOperatorArgs) -> dict[str, object]:
    return {
        "operator": {"defaultRuntime": "containerd", "nodeSelector": {POOL_LABEL: "cpu"}},
        "driver": {"enabled": args.driverless, "version": args.driver_version},
        "toolkit": {"enabled": True},
        "devicePlugin": {"enabled": True},
        "gfd": {"enabled": True},
        "dcgmExporter": {"enabled": True, "serviceMonitor": {"enabled": False}},
        "migManager": {"enabled": False},
        "nfd": {"enabled": True},
        "node-feature-discovery": {"worker": {"tolerations": [GPU_TOLERATION]},
                                   "master": {"nodeSelector": {POOL_LABEL: "cpu"}}},
        # The operands (driver, toolkit, device plugin, exporter) land on nodes that feature discovery
        # labels as having an NVIDIA PCI device: only the GPU group's nodes.
        "daemonsets": {"tolerations": [GPU_TOLERATION]},
    }


class GpuOperator(K8sComponent):
    component = "gpu-operator"

    def __init__(self, name: str, args: GpuOperatorArgs, labels: dict[str, str], provider: k8s.Provider,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("k8s:GpuOperator", name, labels, provider, opts)
        # The operator's pods need host access (driver, toolkit): the namespace is exempt from the
        # restricted Pod Security level.
        ns = self.namespace(args.namespace, {"pod-security.kubernetes.io/enforce": "privileged"})
        self.release_ = self.release("gpu-operator", args.chart, ns.metadata.name, gpu_operator_values(args),
                                     timeout_s=1800)
        self.register_outputs({"namespace": args.namespace, "chart_version": args.chart.version})
