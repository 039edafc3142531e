"""TensorFlow Serving on the GPU node group: Deployment, Service, HPA, NetworkPolicy and its S3 key.

The official image (``tensorflow/serving:<version>-gpu``, pinned) runs ``tensorflow_model_server``
on a local copy of the model's SavedModel: TF Serving has had no S3 filesystem since 2.7
(tensorflow/serving#1963; an ``s3://`` base path only logs ``File system scheme 's3' not
implemented`` and the model never loads). An init container, the service image (pinned by digest)
running ``python -m service.model_sync``, copies ``s3://<bucket>/models/<name>/<sha256>/tf``
(version directories ``1/``, ``2/``, ... below it, as TF Serving expects; the model publisher
uploads there) from Yandex Object Storage into an ``emptyDir`` before the server starts, and
``--model_base_path`` is that directory, ``/models/<name>``, mounted read-only into the server. A
release is a new sha256, so a new prefix, so a new pod that copies it: the copy never changes
under a running server. The init container's credentials come from a Kubernetes Secret holding a
static access key of TF Serving's own service account (read-only on the bucket); the key's secret
part is a Pulumi secret and exists only in the encrypted state and in the cluster (whose secrets
the cluster's KMS key encrypts). The server itself holds no credential.

Each replica requests one GPU, tolerates the GPU taint and is pinned to the GPU nodes; readiness,
liveness and startup probes ask the model status endpoint ``/v1/models/<name>`` on the REST port
8501. The HPA scales on CPU utilisation (GPU utilisation would need a custom-metrics adapter) up
to as many replicas as the GPU group has GPUs. Only the backend's pods may connect (NetworkPolicy),
and the metrics scrapers (prod's Metricbeat) on the REST port only.

**Metrics**: a monitoring config file (ConfigMap ``tf-serving-monitoring``, passed with
``--monitoring_config_file``) turns on TF Serving's Prometheus endpoint on the REST port at
:data:`METRICS_PATH` (``:tensorflow:serving:request_count``, ``:tensorflow:serving:request_latency``,
...). Metricbeat finds the pods by their ``app.kubernetes.io/name`` label (components.metricbeat).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components.base import ValidationError
from components.gpu_operator import GPU_TOLERATION
from components.host_workload import check_pinned_image
from components.k8s_platform import S3_ENDPOINT_HOST, S3_REGION, K8sComponent, PodPeer, check_namespace, meta
from components.kubernetes import POOL_LABEL
from components.yc import yandex

NAME = "tf-serving"
#: Where the init container puts the SavedModel versions and TF Serving reads them.
MODELS_DIR = "/models"
MODEL_VOLUME = "model"
REST_PORT = 8501
GRPC_PORT = 8500
#: Pod label value (``app.kubernetes.io/name``) of the service's backend pods (deploy/base).
BACKEND_APP = "inference"
S3_SECRET = "tf-serving-s3"
#: TF Serving's Prometheus endpoint (REST port), turned on by the monitoring config file.
METRICS_PATH = "/monitoring/prometheus/metrics"
MONITORING_CONFIGMAP = "tf-serving-monitoring"
MONITORING_DIR = "/etc/tf-serving"
MONITORING_FILE = "monitoring.config"
_MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_QUANTITY_CPU = re.compile(r"^\d+(\.\d+)?$|^\d+m$")


def status_path(model: str) -> str:
    """TF Serving's model status endpoint (REST API)."""
    return f"/v1/models/{model}"


def local_base_path(model: str) -> str:
    """TF Serving's ``--model_base_path``: the init container's copy."""
    return f"{MODELS_DIR}/{model}"


def sync_command(model_source: str, model: str) -> list[str]:
    """The init container's command (the service image's Python)."""
    return ["python", "-m", "service.model_sync", model_source, local_base_path(model)]


def monitoring_config() -> str:
    """TF Serving's ``--monitoring_config_file`` (text protobuf ``MonitoringConfig``)."""
    return f'prometheus_config {{\n  enable: true,\n  path: "{METRICS_PATH}"\n}}\n'


def service_url(namespace: str) -> str:
    """What the backend sets as ``TFSERVING_URL``."""
    return f"http://{NAME}.{namespace}.svc:{REST_PORT}"


def check_gpu_image(image: str) -> None:
    """A pinned GPU build: a versioned ``-gpu`` tag (``2.18.0-gpu``) or a digest."""
    check_pinned_image(image)
    if "@" in image:
        return
    tag = image.rpartition("/")[2].partition(":")[2]
    if not tag.endswith("-gpu"):
        raise ValidationError(f"TF Serving image {image!r} is not a GPU build: use the official '-gpu' tag, e.g. "
                              "tensorflow/serving:2.18.0-gpu")
    if not tag[:1].isdigit():
        raise ValidationError(f"TF Serving image {image!r} is not pinned to a release: use a versioned tag such as "
                              "tensorflow/serving:2.18.0-gpu or a digest")


def _cpu_cores(quantity: str) -> float:
    if not _QUANTITY_CPU.match(quantity):
        raise ValidationError(f"CPU quantity {quantity!r} is invalid: write cores (2, 1.5) or millicores (500m)")
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


@dataclass(frozen=True)
class TfServingArgs:
    namespace: str
    model_name: str
    #: ``s3://<bucket>/<prefix>``: the directory holding the version directories in Object Storage.
    model_source: pulumi.Input[str]
    #: The service image by digest (``cr.yandex/<registry>/inference@sha256:...``): its
    #: ``service.model_sync`` copies the model in the init container.
    sync_image: pulumi.Input[str]
    #: The service account whose static key reads the model (it needs READ on the bucket).
    service_account_id: pulumi.Input[str]
    image: str = "tensorflow/serving:2.18.0-gpu"
    min_replicas: int = 1
    max_replicas: int = 2
    target_cpu_percent: int = 70
    cpu: str = "2"
    memory_gi: int = 8
    #: GPUs the GPU node group can hold at most (max nodes x GPUs per node): the HPA's ceiling.
    gpu_capacity: int = 1
    #: One GPU node's vCPUs and memory: a replica's requests must fit on it.
    node_cores: int = 8
    node_memory_gb: int = 32
    #: Pod labels of the clients allowed in (the backend).
    client_labels: Mapping[str, str] | None = None
    #: Size limit of the model's local copy (every version below the prefix).
    model_volume_gi: int = 4
    #: Pods allowed to read the metrics endpoint (the REST port only).
    metrics_scrapers: Sequence[PodPeer] = ()

    def __post_init__(self) -> None:
        check_namespace(self.namespace)
        check_gpu_image(self.image)
        if not _MODEL_NAME.match(self.model_name):
            raise ValidationError(f"model name {self.model_name!r} is invalid for TF Serving: use lowercase letters, "
                                  "digits, '-' or '_'")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValidationError(f"TF Serving replicas min {self.min_replicas} / max {self.max_replicas} are "
                                  "invalid: need 1 <= min <= max")
        if self.max_replicas > self.gpu_capacity:
            raise ValidationError(f"TF Serving max replicas {self.max_replicas} exceeds the GPUs the GPU node group "
                                  f"can hold ({self.gpu_capacity}): each replica takes one GPU; lower maxReplicas or "
                                  "raise the GPU group's max")
        if not 10 <= self.target_cpu_percent <= 100:
            raise ValidationError(f"target CPU utilisation {self.target_cpu_percent}% is out of range: allowed 10-100")
        if _cpu_cores(self.cpu) > self.node_cores - 1:
            raise ValidationError(f"TF Serving CPU request {self.cpu} does not fit a {self.node_cores}-vCPU GPU node "
                                  f"(at most {self.node_cores - 1} cores; the rest is for the node's agents)")
        if not 1 <= self.memory_gi <= self.node_memory_gb - 4:
            raise ValidationError(f"TF Serving memory {self.memory_gi} GiB does not fit a {self.node_memory_gb} GB "
                                  f"GPU node: allowed 1-{self.node_memory_gb - 4} GiB")


class TfServing(K8sComponent):
    component = "tf-serving"

    def __init__(self, name: str, args: TfServingArgs, labels: dict[str, str], provider: k8s.Provider,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("k8s:TfServing", name, labels, provider, opts)
        ns = args.namespace
        selector = {"app.kubernetes.io/name": NAME}
        pod_labels = {**self.k8s_labels, **selector}

        key = yandex.IamServiceAccountStaticAccessKey(
            self.child_name("s3-key"),
            yandex.IamServiceAccountStaticAccessKeyArgs(
                service_account_id=args.service_account_id,
                description="TF Serving reads the SavedModel from Object Storage; kept only in a Kubernetes Secret"),
            opts=self.child(additional_secret_outputs=["secretKey", "accessKey", "encryptedSecretKey"]),
        )
        self.s3_secret = k8s.core.v1.Secret(
            self.child_name("s3"),
            k8s.core.v1.SecretInitArgs(
                metadata=meta(S3_SECRET, ns, self.k8s_labels),
                type="Opaque",
                string_data=pulumi.Output.secret(pulumi.Output.all(key.access_key, key.secret_key).apply(
                    lambda v: {"AWS_ACCESS_KEY_ID": v[0] or "", "AWS_SECRET_ACCESS_KEY": v[1] or ""})),
            ),
            opts=self.kchild(),
        )
        account = k8s.core.v1.ServiceAccount(
            self.child_name("sa"),
            k8s.core.v1.ServiceAccountInitArgs(metadata=meta(NAME, ns, self.k8s_labels),
                                               automount_service_account_token=False),
            opts=self.kchild(),
        )

        def secret_env(variable: str) -> k8s.core.v1.EnvVarArgs:
            return k8s.core.v1.EnvVarArgs(name=variable, value_from=k8s.core.v1.EnvVarSourceArgs(
                secret_key_ref=k8s.core.v1.SecretKeySelectorArgs(name=S3_SECRET, key=variable)))

        def probe(failure_threshold: int, period_s: int) -> k8s.core.v1.ProbeArgs:
            return k8s.core.v1.ProbeArgs(
                http_get=k8s.core.v1.HTTPGetActionArgs(path=status_path(args.model_name), port=REST_PORT),
                period_seconds=period_s, timeout_seconds=5, failure_threshold=failure_threshold)

        gpu = {"nvidia.com/gpu": "1"}
        locked_down = k8s.core.v1.SecurityContextArgs(
            allow_privilege_escalation=False, read_only_root_filesystem=True,
            capabilities=k8s.core.v1.CapabilitiesArgs(drop=["ALL"]))
        fetch = k8s.core.v1.ContainerArgs(
            name="fetch-model",
            image=args.sync_image,
            command=pulumi.Output.from_input(args.model_source).apply(
                lambda source: sync_command(source, args.model_name)),
            env=[
                k8s.core.v1.EnvVarArgs(name="S3_ENDPOINT_URL", value=f"https://{S3_ENDPOINT_HOST}"),
                k8s.core.v1.EnvVarArgs(name="AWS_REGION", value=S3_REGION),
                secret_env("AWS_ACCESS_KEY_ID"),
                secret_env("AWS_SECRET_ACCESS_KEY"),
            ],
            resources=k8s.core.v1.ResourceRequirementsArgs(
                requests={"cpu": "100m", "memory": "256Mi"}, limits={"memory": "512Mi"}),
            security_context=locked_down,
            volume_mounts=[k8s.core.v1.VolumeMountArgs(name=MODEL_VOLUME, mount_path=MODELS_DIR)],
        )
        container = k8s.core.v1.ContainerArgs(
            name=NAME,
            image=args.image,
            command=["/usr/bin/tensorflow_model_server"],
            args=[
                f"--model_name={args.model_name}",
                f"--model_base_path={local_base_path(args.model_name)}",
                f"--port={GRPC_PORT}",
                f"--rest_api_port={REST_PORT}",
                f"--monitoring_config_file={MONITORING_DIR}/{MONITORING_FILE}",
            ],
            ports=[k8s.core.v1.ContainerPortArgs(name="http", container_port=REST_PORT),
                   k8s.core.v1.ContainerPortArgs(name="grpc", container_port=GRPC_PORT)],
            resources=k8s.core.v1.ResourceRequirementsArgs(
                requests={"cpu": args.cpu, "memory": f"{args.memory_gi}Gi", **gpu},
                limits={"memory": f"{args.memory_gi}Gi", **gpu}),
            startup_probe=probe(failure_threshold=60, period_s=10),
            readiness_probe=probe(failure_threshold=3, period_s=10),
            liveness_probe=probe(failure_threshold=5, period_s=20),
            security_context=locked_down,
            volume_mounts=[k8s.core.v1.VolumeMountArgs(name="tmp", mount_path="/tmp"),
                           k8s.core.v1.VolumeMountArgs(name=MODEL_VOLUME, mount_path=MODELS_DIR, read_only=True),
                           k8s.core.v1.VolumeMountArgs(name="monitoring", mount_path=MONITORING_DIR, read_only=True)],
        )
        self.monitoring = k8s.core.v1.ConfigMap(
            self.child_name("monitoring"),
            k8s.core.v1.ConfigMapInitArgs(metadata=meta(MONITORING_CONFIGMAP, ns, self.k8s_labels),
                                          data={MONITORING_FILE: monitoring_config()}),
            opts=self.kchild(),
        )
        self.deployment = k8s.apps.v1.Deployment(
            self.child_name("deployment"),
            k8s.apps.v1.DeploymentInitArgs(
                metadata=meta(NAME, ns, pod_labels, {"pulumi.com/timeoutSeconds": "1800"}),
                spec=k8s.apps.v1.DeploymentSpecArgs(
                    replicas=args.min_replicas,
                    revision_history_limit=5,
                    progress_deadline_seconds=1200,
                    selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector),
                    strategy=k8s.apps.v1.DeploymentStrategyArgs(
                        type="RollingUpdate",
                        rolling_update=k8s.apps.v1.RollingUpdateDeploymentArgs(max_surge=1, max_unavailable=0)),
                    template=k8s.core.v1.PodTemplateSpecArgs(
                        metadata=k8s.meta.v1.ObjectMetaArgs(labels=pod_labels),
                        spec=k8s.core.v1.PodSpecArgs(
                            service_account_name=NAME,
                            automount_service_account_token=False,
                            node_selector={POOL_LABEL: "gpu"},
                            tolerations=[k8s.core.v1.TolerationArgs(key=GPU_TOLERATION["key"], operator="Exists",
                                                                   effect="NoSchedule")],
                            security_context=k8s.core.v1.PodSecurityContextArgs(
                                run_as_non_root=True, run_as_user=1000, run_as_group=1000, fs_group=1000,
                                seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault")),
                            init_containers=[fetch],
                            containers=[container],
                            volumes=[
                                k8s.core.v1.VolumeArgs(
                                    name="tmp", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(size_limit="1Gi")),
                                k8s.core.v1.VolumeArgs(
                                    name=MODEL_VOLUME,
                                    empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(
                                        size_limit=f"{args.model_volume_gi}Gi")),
                                k8s.core.v1.VolumeArgs(
                                    name="monitoring",
                                    config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name=MONITORING_CONFIGMAP)),
                            ],
                            termination_grace_period_seconds=30,
                        ),
                    ),
                ),
            ),
            opts=self.kchild(depends_on=[self.s3_secret, account, self.monitoring]),
        )
        self.service = k8s.core.v1.Service(
            self.child_name("service"),
            k8s.core.v1.ServiceInitArgs(
                metadata=meta(NAME, ns, pod_labels),
                spec=k8s.core.v1.ServiceSpecArgs(
                    type="ClusterIP", selector=selector,
                    ports=[k8s.core.v1.ServicePortArgs(name="http", port=REST_PORT, target_port="http"),
                           k8s.core.v1.ServicePortArgs(name="grpc", port=GRPC_PORT, target_port="grpc")]),
            ),
            opts=self.kchild(),
        )
        self.hpa = k8s.autoscaling.v2.HorizontalPodAutoscaler(
            self.child_name("hpa"),
            k8s.autoscaling.v2.HorizontalPodAutoscalerInitArgs(
                metadata=meta(NAME, ns, self.k8s_labels),
                spec=k8s.autoscaling.v2.HorizontalPodAutoscalerSpecArgs(
                    scale_target_ref=k8s.autoscaling.v2.CrossVersionObjectReferenceArgs(
                        api_version="apps/v1", kind="Deployment", name=NAME),
                    min_replicas=args.min_replicas,
                    max_replicas=args.max_replicas,
                    metrics=[k8s.autoscaling.v2.MetricSpecArgs(
                        type="Resource",
                        resource=k8s.autoscaling.v2.ResourceMetricSourceArgs(
                            name="cpu", target=k8s.autoscaling.v2.MetricTargetArgs(
                                type="Utilization", average_utilization=args.target_cpu_percent)))],
                    behavior=k8s.autoscaling.v2.HorizontalPodAutoscalerBehaviorArgs(
                        scale_down=k8s.autoscaling.v2.HPAScalingRulesArgs(
                            stabilization_window_seconds=600,
                            policies=[k8s.autoscaling.v2.HPAScalingPolicyArgs(type="Pods", value=1,
                                                                              period_seconds=300)])),
                ),
            ),
            opts=self.kchild(depends_on=[self.deployment]),
        )
        clients = dict(args.client_labels or {"app.kubernetes.io/name": BACKEND_APP})
        self.network_policy = k8s.networking.v1.NetworkPolicy(
            self.child_name("netpol"),
            k8s.networking.v1.NetworkPolicyInitArgs(
                metadata=meta(NAME, ns, self.k8s_labels),
                spec=k8s.networking.v1.NetworkPolicySpecArgs(
                    pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector),
                    policy_types=["Ingress"],
                    ingress=[
                        k8s.networking.v1.NetworkPolicyIngressRuleArgs(
                            from_=[k8s.networking.v1.NetworkPolicyPeerArgs(
                                pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=clients))],
                            ports=[k8s.networking.v1.NetworkPolicyPortArgs(protocol="TCP", port=REST_PORT),
                                   k8s.networking.v1.NetworkPolicyPortArgs(protocol="TCP", port=GRPC_PORT)],
                        ),
                        *(k8s.networking.v1.NetworkPolicyIngressRuleArgs(
                            from_=[scraper.peer()],
                            ports=[k8s.networking.v1.NetworkPolicyPortArgs(protocol="TCP", port=REST_PORT)],
                        ) for scraper in args.metrics_scrapers),
                    ],
                ),
            ),
            opts=self.kchild(),
        )
        self.url = service_url(ns)
        self.model_base_path = local_base_path(args.model_name)
        self.register_outputs({"url": self.url, "model_source": args.model_source,
                               "model_base_path": self.model_base_path})
