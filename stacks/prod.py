"""The ``prod`` stage: Managed Kubernetes with GPU nodes, TensorFlow Serving, Managed ClickHouse, ELK, ArgoCD.

Resources: a VPC with a subnet per zone, a NAT gateway and security groups (nodes; the master API
open only to ``network.apiAllowlist``; ClickHouse open only to the nodes); the private
KMS-encrypted bucket with the pinned model, read by TF Serving's own service account; the Managed
Kubernetes cluster (KMS-encrypted secrets, Calico, separate cluster and node service accounts)
with an autoscaled ``cpu`` group and a tainted, autoscaled ``gpu`` group; the Container Registry
the nodes pull from; Managed ClickHouse (private; password generated, kept in Lockbox and in a
Kubernetes Secret for the service). Inside the cluster, through a provider built from the
cluster's outputs: the NVIDIA GPU Operator, ingress-nginx on a reserved address, the service's
namespace with its ClickHouse Secret, TF Serving (Deployment, Service, HPA, NetworkPolicy), ECK
with Elasticsearch, Kibana, Filebeat (logs) and Metricbeat (metrics of the service, TF Serving, the
GPUs, the nodes and the cluster, with kube-state-metrics), Kibana's dashboards and alerting rules
(imported by a Job), and ArgoCD with the Application that syncs
``deploy/overlays/prod`` (the service itself: Deployment, Service, Ingress, HPA, PDB,
NetworkPolicy).

TF Serving serves a local copy of the SavedModel under ``models/<name>/<sha256>/tf/`` of the stage
bucket (version directories below it), which an init container (the service image) copies before
the server starts: TF Serving has no S3 filesystem. The SavedModel is part of the released model
(``models/<name>/tf/<version>/``, committed beside model.onnx) and this program uploads it with the
model, so the release that is promoted is the one that is served.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pulumi

from components import clickhouse, kubernetes
from components.argocd import ArgoCd, ArgoCdArgs
from components.clickhouse import Clickhouse, ClickhouseArgs
from components.elk import Elk, ElkArgs, metricbeat_peer
from components.gpu_operator import GpuOperator, GpuOperatorArgs
from components.identity import WorkloadIdentity, WorkloadIdentityArgs
from components.k8s_platform import (
    ARGOCD_CHART,
    ECK_CHART,
    GPU_OPERATOR_CHART,
    INGRESS_NGINX_CHART,
    YANDEX_CA_URL,
    AppNamespace,
    AppNamespaceArgs,
    IngressController,
    IngressControllerArgs,
)
from components.kubernetes import ManagedKubernetes, ManagedKubernetesArgs, cpu_node_group, gpu_node_group
from components.network import StageNetwork, StageNetworkArgs, SubnetSpec
from components.registry import ImageRegistry, ImageRegistryArgs
from components.storage import ModelStore, model_object_key
from components.tfserving import BACKEND_APP, TfServing, TfServingArgs
from components.tls import CERT_MANAGER_CHART, CertManager, CertManagerArgs
from stacks.common import model_store_args
from stacks.config import PROJECT, ConfigError, ProdConfig

REPO_TOKEN_KEY = "gitopsRepoToken"
#: The directory (below the model's prefix) that holds TF Serving's version directories.
TF_MODEL_DIR = "tf"


def tf_model_prefix(cfg: ProdConfig) -> str:
    """``models/<name>/<sha256>/tf``: where the stage bucket holds the SavedModel versions."""
    return model_object_key(cfg.storage.model_prefix, cfg.model.name, cfg.release.model_sha256, TF_MODEL_DIR)


#: What the offline plan and previews carry while the CA file is not there yet (never deployed).
_CA_PLACEHOLDER = "-----BEGIN CERTIFICATE-----\n(downloaded before pulumi up)\n-----END CERTIFICATE-----\n"


def yandex_ca(cfg: ProdConfig, root: Path) -> str:
    """Yandex's internal root CA from ``clickhouse.caFile``; a placeholder in previews while it is
    missing, an error on ``pulumi up`` (the backend could not verify ClickHouse without it)."""
    path = root / cfg.clickhouse.ca_file
    if path.is_file():
        return path.read_text(encoding="utf-8")
    fetch = f"curl -fsSL --create-dirs -o {cfg.clickhouse.ca_file} {YANDEX_CA_URL}"
    if pulumi.runtime.is_dry_run():
        return _CA_PLACEHOLDER
    raise ConfigError(f"{cfg.clickhouse.ca_file} is missing: the service verifies Managed ClickHouse's certificate "
                      f"with Yandex's CA; download it first: {fetch}")


def program(cfg: ProdConfig, root: Path) -> None:
    labels = cfg.resource_labels()
    prefix = cfg.stage
    net_cfg, k = cfg.network, cfg.kubernetes
    vpc_cidrs = [cidr for _, cidr in sorted(net_cfg.subnets.items())]

    net = StageNetwork(
        f"{prefix}-net",
        StageNetworkArgs(
            folder_id=cfg.folder_id,
            subnets=[SubnetSpec(zone, cidr) for zone, cidr in sorted(net_cfg.subnets.items())],
            security_groups={
                "k8s-nodes": kubernetes.node_rules(vpc_cidrs, k.cluster_ipv4_range, k.service_ipv4_range,
                                                   net_cfg.ingress_cidrs),
                "k8s-master": kubernetes.master_rules(net_cfg.api_allowlist, vpc_cidrs, k.cluster_ipv4_range),
                "clickhouse": clickhouse.clickhouse_rules("k8s-nodes"),
            },
        ),
        labels,
    )

    model_reader = WorkloadIdentity(
        f"{prefix}-model-reader",
        WorkloadIdentityArgs(folder_id=cfg.folder_id, description="TF Serving: reads the model from Object Storage"),
        labels,
    )
    store = ModelStore(
        f"{prefix}-data",
        model_store_args(cfg, root / cfg.model.dir, readers=[model_reader.service_account_id],
                         saved_model_dir=root / cfg.model.dir / TF_MODEL_DIR),
        labels,
    )

    cpu, gpu = k.cpu_nodes, k.gpu_nodes
    cluster = ManagedKubernetes(
        f"{prefix}-k8s",
        ManagedKubernetesArgs(
            folder_id=cfg.folder_id,
            network_id=net.network_id,
            subnet_ids=net.subnet_ids,
            master_security_group_ids=[net.security_group_ids["k8s-master"]],
            node_security_group_ids=[net.security_group_ids["k8s-nodes"]],
            node_groups=[
                cpu_node_group(cfg.zone, platform_id=cpu.platform, cores=cpu.cores, memory_gb=cpu.memory_gb,
                               core_fraction=cpu.core_fraction, disk_type=cpu.disk_type,
                               disk_size_gb=cpu.disk_size_gb, preemptible=cpu.preemptible, min_size=cpu.min,
                               max_size=cpu.max),
                gpu_node_group(cfg.zone, platform_id=gpu.platform, gpus=gpu.gpus, cores=gpu.cores,
                               memory_gb=gpu.memory_gb, disk_type=gpu.disk_type, disk_size_gb=gpu.disk_size_gb,
                               preemptible=gpu.preemptible, min_size=gpu.min, max_size=gpu.max,
                               driverless=gpu.driverless),
            ],
            version=k.version,
            master=k.master,
            master_zone=cfg.zone,
            public_api=k.public_api,
            release_channel=k.release_channel,
            cluster_ipv4_range=k.cluster_ipv4_range,
            service_ipv4_range=k.service_ipv4_range,
            kms_deletion_protection=k.kms_deletion_protection,
            auto_upgrade=k.auto_upgrade,
        ),
        labels,
    )
    registry = ImageRegistry(
        f"{prefix}-images", ImageRegistryArgs(folder_id=cfg.folder_id, pullers=[cluster.node_service_account_id]),
        labels)

    ch_cfg = cfg.clickhouse
    ch = Clickhouse(
        f"{prefix}-clickhouse",
        ClickhouseArgs(
            folder_id=cfg.folder_id, network_id=net.network_id, subnet_ids=net.subnet_ids,
            security_group_ids=[net.security_group_ids["clickhouse"]], version=ch_cfg.version,
            resource_preset=ch_cfg.resource_preset, disk_type=ch_cfg.disk_type, disk_size_gb=ch_cfg.disk_size_gb,
            shards=ch_cfg.shards, replicas=ch_cfg.replicas, coordination=ch_cfg.coordination,
            database=ch_cfg.database, user=ch_cfg.user,
            deletion_protection=ch_cfg.deletion_protection, backup_retain_days=ch_cfg.backup_retain_days,
        ),
        labels,
    )

    provider = cluster.provider
    charts = cfg.charts
    gpu_operator = GpuOperator(
        f"{prefix}-gpu-operator",
        GpuOperatorArgs(k8s_version=k.version, driverless=gpu.driverless,
                        driver_version=cfg.gpu_operator.driver_version,
                        chart=dataclasses.replace(GPU_OPERATOR_CHART, version=charts.gpu_operator)),
        labels, provider,
    )
    ingress = IngressController(
        f"{prefix}-ingress",
        IngressControllerArgs(folder_id=cfg.folder_id, zone=cfg.zone, source_cidrs=net_cfg.ingress_cidrs,
                              chart=dataclasses.replace(INGRESS_NGINX_CHART, version=charts.ingress_nginx)),
        labels, provider,
    )
    endpoint = cfg.tls.endpoint()
    certificates = None
    if endpoint is not None:
        certificates = CertManager(
            f"{prefix}-cert-manager",
            CertManagerArgs(email=endpoint.email,
                            chart=dataclasses.replace(CERT_MANAGER_CHART, version=charts.cert_manager)),
            labels, provider,
        )
    gitops = cfg.gitops
    app = AppNamespace(
        f"{prefix}-app",
        AppNamespaceArgs(namespace=gitops.namespace, clickhouse_host=ch.host, clickhouse_port=ch.port,
                         clickhouse_database=ch.database_name, clickhouse_user=ch.user_name,
                         clickhouse_password=ch.password.result, ca_pem=yandex_ca(cfg, root)),
        labels, provider,
    )
    tf = cfg.tf_serving
    elk_args = ElkArgs(stack_version=cfg.elk.stack_version,
                       chart=dataclasses.replace(ECK_CHART, version=charts.eck_operator),
                       elasticsearch_nodes=cfg.elk.elasticsearch_nodes,
                       elasticsearch_memory_gi=cfg.elk.elasticsearch_memory_gi,
                       elasticsearch_storage_gi=cfg.elk.elasticsearch_storage_gi,
                       kibana_replicas=cfg.elk.kibana_replicas, retention_days=cfg.elk.log_retention_days,
                       app_namespace=gitops.namespace, model_name=cfg.model.name)
    model_source = pulumi.Output.concat("s3://", store.bucket_name, "/", tf_model_prefix(cfg))
    tf_serving = TfServing(
        f"{prefix}-tf-serving",
        TfServingArgs(namespace=gitops.namespace, model_name=cfg.model.name, model_source=model_source,
                      sync_image=pulumi.Output.concat(registry.repository_url, "@", cfg.release.image_digest),
                      service_account_id=model_reader.service_account_id, image=tf.image,
                      min_replicas=tf.min_replicas, max_replicas=tf.max_replicas,
                      target_cpu_percent=tf.target_cpu_percent, cpu=tf.cpu, memory_gi=tf.memory_gi,
                      gpu_capacity=gpu.max * gpu.gpus, node_cores=gpu.cores, node_memory_gb=gpu.memory_gb,
                      client_labels={"app.kubernetes.io/name": BACKEND_APP},
                      metrics_scrapers=[metricbeat_peer(elk_args.namespace)]),
        labels, provider,
        opts=pulumi.ResourceOptions(depends_on=[app, gpu_operator, store]),
    )
    elk = Elk(f"{prefix}-elk", elk_args, labels, provider, opts=pulumi.ResourceOptions(depends_on=[gpu_operator]))
    argocd = ArgoCd(
        f"{prefix}-argocd",
        ArgoCdArgs(repo_url=gitops.repo_url, app_namespace=gitops.namespace, path=gitops.path,
                   target_revision=gitops.target_revision,
                   chart=dataclasses.replace(ARGOCD_CHART, version=charts.argocd),
                   repo_token=pulumi.Config(PROJECT).get_secret(REPO_TOKEN_KEY), repo_username=gitops.repo_username),
        labels, provider,
        opts=pulumi.ResourceOptions(depends_on=[app, tf_serving, ingress, *([certificates] if certificates else [])]),
    )

    pulumi.export("ingress_address", ingress.ip)
    pulumi.export("service_url", endpoint.url if endpoint is not None else
                  ingress.ip.apply(lambda ip: f"http://{ip}/" if ip else None))
    pulumi.export("argocd_url", argocd.url)
    pulumi.export("kibana_url", elk.kibana_url)
    pulumi.export("kibana_dashboards", elk.dashboards)
    pulumi.export("kibana_alerts", elk.alerts)
    pulumi.export("tf_serving_url", tf_serving.url)
    pulumi.export("tf_model_source", model_source)
    pulumi.export("tf_model_base_path", tf_serving.model_base_path)
    pulumi.export("clickhouse_host", ch.host)
    pulumi.export("clickhouse_port", ch.port)
    pulumi.export("clickhouse_database", ch.database_name)
    pulumi.export("clickhouse_user", ch.user_name)
    pulumi.export("cluster_id", cluster.cluster_id)
    pulumi.export("kubeconfig", cluster.kubeconfig)
    pulumi.export("bucket_name", store.bucket_name)
    pulumi.export("registry_id", registry.registry_id)
    pulumi.export("image_repository", registry.repository_url)
    pulumi.export("model_uri", store.model_uri)
