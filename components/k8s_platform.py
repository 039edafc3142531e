"""What the in-cluster components share, the ingress controller and the service's namespace.

Everything inside the cluster is created through the pulumi-kubernetes provider that
:class:`components.kubernetes.ManagedKubernetes` builds from the cluster's outputs:

- Helm charts as ``helm.v3.Release`` with a **pinned** chart version (:class:`ChartPin` refuses
  ranges, ``latest`` and missing versions) and explicit values, so a chart upgrade is a reviewed
  config change and ``pulumi preview`` shows the values;
- plain objects with the typed ``*Args`` classes of pulumi-kubernetes (never raw manifests), so a
  misspelled field fails at once; custom resources (ECK, ArgoCD) as ``apiextensions.CustomResource``.

This module holds :class:`K8sComponent` (the provider and the Kubernetes labels every child gets),
:class:`IngressController` (ingress-nginx behind a Yandex network load balancer on a reserved
static address) and :class:`AppNamespace` (the namespace the service and TF Serving run in, with
the Secret that carries the ClickHouse settings to the service).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.base import StageComponent, ValidationError
from components.kubernetes import POOL_LABEL
from components.network import check_cidr
from components.yc import yandex

_SEMVER = re.compile(r"^v?\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
#: Object Storage as TF Serving's S3 client reads it (host only; HTTPS is set separately).
S3_ENDPOINT_HOST = "storage.yandexcloud.net"
S3_REGION = "ru-central1"
#: The Secret of the service's namespace that holds the ClickHouse settings (``envFrom`` in deploy/).
CLICKHOUSE_SECRET = "backend-clickhouse"
#: The ConfigMap with Yandex's internal root CA, which signs Managed ClickHouse's certificates; the
#: backend (deploy/base) mounts it at CA_DIR and points CLICKHOUSE_CA_FILE at CA_DIR/CA_KEY.
CA_CONFIGMAP = "yandex-ca"
CA_KEY = "CA.pem"
CA_DIR = "/etc/yandex-ca"
#: Where Yandex publishes that CA (Managed Databases' "Connecting" pages).
YANDEX_CA_URL = "https://storage.yandexcloud.net/cloud-certs/CA.pem"


def clickhouse_env(host: str, port: int, database: str, user: str, password: str) -> dict[str, str]:
    """The backend's ClickHouse settings, as the Secret it reads with ``envFrom`` holds them."""
    return {
        "CLICKHOUSE_HOST": host,
        "CLICKHOUSE_PORT": str(port),
        "CLICKHOUSE_DATABASE": database,
        "CLICKHOUSE_USER": user,
        "CLICKHOUSE_PASSWORD": password,
        "CLICKHOUSE_SECURE": "true",
    }


INGRESS_CLASS = "nginx"


def check_chart_version(chart: str, version: str) -> None:
    if not _SEMVER.match(version):
        raise ValidationError(f"chart {chart} version {version!r} is not pinned: give one exact version such as "
                              "7.7.11 or v24.9.2 (no ranges, no 'latest')")


def check_namespace(name: str) -> None:
    if not _DNS_LABEL.match(name):
        raise ValidationError(f"namespace {name!r} is invalid: use 1-63 lowercase letters, digits or '-', starting "
                              "and ending with a letter or digit")


@dataclass(frozen=True)
class ChartPin:
    """A Helm chart at one exact version from one repository."""

    chart: str
    version: str
    repo: str

    def __post_init__(self) -> None:
        check_chart_version(self.chart, self.version)
        if not self.repo.startswith("https://"):
            raise ValidationError(f"chart {self.chart}: repository {self.repo!r} must be an https:// URL")


#: The charts of the prod platform, at the versions the config pins by default.
ARGOCD_CHART = ChartPin("argo-cd", "7.7.11", "https://argoproj.github.io/argo-helm")
ECK_CHART = ChartPin("eck-operator", "2.14.0", "https://helm.elastic.co")
GPU_OPERATOR_CHART = ChartPin("gpu-operator", "v24.9.2", "https://helm.ngc.nvidia.com/nvidia")
INGRESS_NGINX_CHART = ChartPin("ingress-nginx", "4.11.3", "https://kubernetes.github.io/ingress-nginx")
#: Cluster state as Prometheus metrics (kube-state-metrics 2.14.0), read by Metricbeat's state_* metricsets.
KUBE_STATE_METRICS_CHART = ChartPin("kube-state-metrics", "5.27.0", "https://prometheus-community.github.io/helm-charts")


def k8s_labels(stage: str, component: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {"app.kubernetes.io/part-of": "aistack", "app.kubernetes.io/managed-by": "pulumi",
            "aistack.io/stage": stage, "aistack.io/component": component, **(extra or {})}


def meta(name: str, namespace: pulumi.Input[str] | None, labels: Mapping[str, str],
         annotations: Mapping[str, str] | None = None) -> k8s.meta.v1.ObjectMetaArgs:
    return k8s.meta.v1.ObjectMetaArgs(name=name, namespace=namespace, labels=dict(labels),
                                      annotations=dict(annotations) if annotations else None)


CPU_NODES: dict[str, str] = {POOL_LABEL: "cpu"}


@dataclass(frozen=True)
class PodPeer:
    """Pods of another namespace that a NetworkPolicy admits (e.g. the metrics scraper)."""

    namespace: str
    labels: Mapping[str, str]

    def __post_init__(self) -> None:
        check_namespace(self.namespace)
        if not self.labels:
            raise ValidationError(f"a pod peer in {self.namespace} needs labels: an empty selector admits every pod")

    def peer(self) -> k8s.networking.v1.NetworkPolicyPeerArgs:
        return k8s.networking.v1.NetworkPolicyPeerArgs(
            namespace_selector=k8s.meta.v1.LabelSelectorArgs(
                match_labels={"kubernetes.io/metadata.name": self.namespace}),
            pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=dict(self.labels)))


class K8sComponent(StageComponent):
    """A component whose children are Kubernetes objects created through one provider."""

    def __init__(self, type_name: str, name: str, labels: dict[str, str], provider: k8s.Provider,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(type_name, name, labels, opts)
        self.provider = provider
        self.k8s_labels = k8s_labels(self.labels["stage"], self.component)

    def kchild(self, **extra: Any) -> pulumi.ResourceOptions:
        return self.child(provider=self.provider, **extra)

    def namespace(self, name: str, extra_labels: Mapping[str, str] | None = None) -> k8s.core.v1.Namespace:
        check_namespace(name)
        return k8s.core.v1.Namespace(
            self.child_name(f"ns-{name}"),
            k8s.core.v1.NamespaceInitArgs(metadata=meta(name, None, {**self.k8s_labels, **(extra_labels or {})})),
            opts=self.kchild(),
        )

    def release(self, name: str, pin: ChartPin, namespace: pulumi.Input[str], values: Mapping[str, Any],
                depends_on: Sequence[pulumi.Resource] = (), timeout_s: int = 900) -> k8s.helm.v3.Release:
        """A Helm release of ``pin`` with ``values``; waits until its workloads are ready."""
        return k8s.helm.v3.Release(
            self.child_name(name),
            k8s.helm.v3.ReleaseArgs(
                name=name, chart=pin.chart, version=pin.version,
                repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=pin.repo),
                namespace=namespace, create_namespace=False, values=dict(values),
                atomic=True, cleanup_on_fail=True, max_history=10, timeout=timeout_s,
            ),
            opts=self.kchild(depends_on=list(depends_on)),
        )


# --- ingress -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngressControllerArgs:
    folder_id: str
    zone: str
    #: Who may reach the load balancer (``loadBalancerSourceRanges``).
    source_cidrs: Sequence[str]
    chart: ChartPin = INGRESS_NGINX_CHART
    replicas: int = 2
    namespace: str = "ingress-nginx"

    def __post_init__(self) -> None:
        if not self.source_cidrs:
            raise ValidationError("the ingress needs at least one source CIDR (0.0.0.0/0 for a public API)")
        for cidr in self.source_cidrs:
            check_cidr(cidr, "ingress source CIDR")
        if not 1 <= self.replicas <= 10:
            raise ValidationError(f"ingress controller replicas {self.replicas} is out of range: allowed 1-10")
        check_namespace(self.namespace)


class IngressController(K8sComponent):
    """ingress-nginx behind a network load balancer on a reserved static address."""

    component = "ingress"

    def __init__(self, name: str, args: IngressControllerArgs, labels: dict[str, str], provider: k8s.Provider,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("k8s:IngressController", name, labels, provider, opts)
        self.address = yandex.VpcAddress(
            self.child_name("ip"),
            yandex.VpcAddressArgs(folder_id=args.folder_id, name=self.child_name("ip"),
                                  description="Static address of the service's ingress load balancer",
                                  external_ipv4_address=yandex.VpcAddressExternalIpv4AddressArgs(zone_id=args.zone),
                                  deletion_protection=True, labels=self.labels),
            opts=self.child(),
        )
        self.ip: pulumi.Output[str] = self.address.external_ipv4_address.apply(
            lambda a: a.address if a is not None and a.address else "")
        ns = self.namespace(args.namespace)
        self.ns_name = args.namespace
        values = {
            "controller": {
                "replicaCount": args.replicas,
                "ingressClassResource": {"name": INGRESS_CLASS, "default": True},
                "nodeSelector": CPU_NODES,
                "service": {
                    "type": "LoadBalancer",
                    "loadBalancerIP": self.ip,
                    "externalTrafficPolicy": "Local",
                    "loadBalancerSourceRanges": list(args.source_cidrs),
                },
                "config": {"use-forwarded-headers": "false", "server-tokens": "false",
                           "proxy-body-size": "4m", "log-format-escape-json": "true"},
                "metrics": {"enabled": True},
                "admissionWebhooks": {"enabled": True},
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
            },
        }
        self.release_ = self.release("ingress-nginx", args.chart, ns.metadata.name, values)
        self.register_outputs({"address": self.ip})


# --- the service's namespace ---------------------------------------------------------------------


@dataclass(frozen=True)
class AppNamespaceArgs:
    namespace: str
    clickhouse_host: pulumi.Input[str]
    clickhouse_port: int
    clickhouse_database: str
    clickhouse_user: str
    #: The ClickHouse password: a Pulumi secret.
    clickhouse_password: pulumi.Input[str]
    #: Yandex's internal root CA (PEM): the backend verifies ClickHouse's certificate with it.
    ca_pem: str

    def __post_init__(self) -> None:
        check_namespace(self.namespace)
        if "-----BEGIN CERTIFICATE-----" not in self.ca_pem:
            raise ValidationError("the Yandex CA is not a PEM certificate: download it again from "
                                  f"{YANDEX_CA_URL}")


class AppNamespace(K8sComponent):
    """The namespace of the service and TF Serving (ArgoCD syncs deploy/ into it), the ClickHouse Secret
    and Yandex's CA."""

    component = "app"

    def __init__(self, name: str, args: AppNamespaceArgs, labels: dict[str, str], provider: k8s.Provider,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("k8s:AppNamespace", name, labels, provider, opts)
        # Both workloads (the service and TF Serving) meet the restricted Pod Security level; enforce it.
        self.ns = self.namespace(args.namespace, {"pod-security.kubernetes.io/enforce": "restricted"})
        self.name: str = args.namespace
        self.clickhouse_secret = k8s.core.v1.Secret(
            self.child_name("clickhouse"),
            k8s.core.v1.SecretInitArgs(
                metadata=meta(CLICKHOUSE_SECRET, self.ns.metadata.name, self.k8s_labels),
                type="Opaque",
                string_data=pulumi.Output.secret(pulumi.Output.all(
                    host=args.clickhouse_host, password=args.clickhouse_password,
                ).apply(lambda v: clickhouse_env(v["host"] or "", args.clickhouse_port, args.clickhouse_database,
                                                 args.clickhouse_user, v["password"] or ""))),
            ),
            opts=self.kchild(),
        )
        self.ca = k8s.core.v1.ConfigMap(
            self.child_name("yandex-ca"),
            k8s.core.v1.ConfigMapInitArgs(metadata=meta(CA_CONFIGMAP, self.ns.metadata.name, self.k8s_labels),
                                          data={CA_KEY: args.ca_pem}),
            opts=self.kchild(),
        )
        self.register_outputs({"namespace": self.name})
