"""ELK inside the cluster: the ECK operator (Helm, pinned) and Elasticsearch, Kibana and Filebeat resources.

Yandex discontinued its Managed Elasticsearch in 2024 and no bridge has Managed OpenSearch, so the
logs stack runs in the cluster, managed by Elastic Cloud on Kubernetes (ECK):

- the ``eck-operator`` chart (CRDs included) in ``elastic-system``, watching the logs namespace only;
- ``Elasticsearch`` (one node set, ``count`` nodes with persistent ``yc-network-ssd`` volumes;
  ``node.store.allow_mmap: false`` so no node needs ``vm.max_map_count`` raised);
- ``Kibana`` connected to it (``elasticsearchRef``); both keep ECK's self-signed TLS and are
  reachable only inside the cluster (``kubectl port-forward`` for people);
- ``Beat`` of type ``filebeat`` as a **DaemonSet** on every node (GPU nodes included: it tolerates
  every taint) that ships container logs (``/var/log/containers/*.log``, CRI format) with
  Kubernetes metadata and the service's JSON log fields decoded; its ServiceAccount, ClusterRole
  (read pods, namespaces, nodes) and binding.

**Index retention** is an ILM policy that Filebeat installs at start-up (``setup.ilm.policy_file``,
``setup.ilm.overwrite``) from a ConfigMap: roll over daily or at 50 GB per primary shard, delete
``retention_days`` after rollover. The policy is declarative and versioned with the stack; no Job
or manual ``PUT _ilm/policy`` is needed.

**Metrics** (components.metricbeat): a ``Beat`` of type ``metricbeat`` as a DaemonSet on every node
scrapes the service, TF Serving and the DCGM exporter (found by their pod labels), the kubelets and
the hosts, and, on the Beat holding the leader lease, kube-state-metrics (its chart, pinned, runs
in the same namespace) and the cluster's events; its own ILM policy (``metrics_retention_days``)
sits next to the logs'. Its ServiceAccount may read what autodiscover and the kubelet need, and hold
the lease in its namespace (a Role).

**Dashboards and alerts** (components.kibana_objects, components.alerts): a Job imports the
dashboards as saved objects and creates or updates the connectors and alerting rules through
Kibana's API, as the ``elastic`` user (ECK's Secret), trusting Kibana's CA (ECK's public
certificate Secret). Its name carries a digest of what it imports, so a change runs a new Job; a
rerun of the same Job changes nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import pulumi
import pulumi_kubernetes as k8s

from components import kibana_objects, metricbeat, tfserving
from components.alerts import AlertThresholds
from components.base import ValidationError
from components.gpu_operator import DCGM_EXPORTER_LABELS, DCGM_EXPORTER_PORT
from components.k8s_platform import (
    CPU_NODES,
    ECK_CHART,
    KUBE_STATE_METRICS_CHART,
    ChartPin,
    K8sComponent,
    PodPeer,
    check_namespace,
    meta,
)

ES_NAME = "logs"
KIBANA_NAME = "logs"
BEAT_NAME = "filebeat"
ILM_POLICY = "aistack-logs"
ILM_CONFIGMAP = "filebeat-ilm-policy"
ILM_MOUNT = "/usr/share/filebeat/ilm"
STORAGE_CLASS = "yc-network-ssd"
METRICBEAT_NAME = "metricbeat"
METRICS_ILM_CONFIGMAP = "metricbeat-ilm-policy"
#: The labels of Metricbeat's pods: NetworkPolicies admit the scraper by them.
METRICBEAT_POD_LABELS = {"app.kubernetes.io/name": METRICBEAT_NAME}
KUBE_STATE_METRICS = "kube-state-metrics"
KUBE_STATE_METRICS_PORT = 8080
#: The service's container port (deploy/base/deployment.yaml), which also serves /metrics.
SERVICE_PORT = 8080
KIBANA_SETUP_CONFIGMAP = "kibana-setup"
KIBANA_SETUP_DIR = "/setup"
KIBANA_CA_DIR = "/kibana-ca"
_STACK_VERSION = re.compile(r"^8\.\d+\.\d+$")
#: Elasticsearch node counts: 1 (no redundancy), or an odd number that keeps a master quorum.
ElasticsearchNodes = Literal[1, 3, 5]
ELASTICSEARCH_NODES: tuple[int, ...] = get_args(ElasticsearchNodes)


def kibana_url(namespace: str) -> str:
    return f"https://{KIBANA_NAME}-kb-http.{namespace}.svc:5601"


def elasticsearch_url(namespace: str) -> str:
    return f"https://{ES_NAME}-es-http.{namespace}.svc:9200"


def elastic_user_secret() -> str:
    """ECK's Secret with the ``elastic`` superuser's password (key ``elastic``)."""
    return f"{ES_NAME}-es-elastic-user"


def kibana_ca_secret() -> str:
    """ECK's Secret with Kibana's HTTP CA (``ca.crt``)."""
    return f"{KIBANA_NAME}-kb-http-certs-public"


def metricbeat_peer(namespace: str) -> PodPeer:
    """Metricbeat's pods as a NetworkPolicy peer."""
    return PodPeer(namespace, METRICBEAT_POD_LABELS)


def ilm_policy(retention_days: int) -> dict[str, Any]:
    """The ILM policy of the log indices (the body of ``PUT _ilm/policy/<name>``)."""
    return {"policy": {"phases": {
        "hot": {"min_age": "0ms", "actions": {"rollover": {"max_age": "1d", "max_primary_shard_size": "50gb"}}},
        "delete": {"min_age": f"{retention_days}d", "actions": {"delete": {}}},
    }}}


def filebeat_config() -> dict[str, Any]:
    """``spec.config`` of the Filebeat Beat: container logs, Kubernetes metadata, JSON fields, ILM."""
    return {
        "filebeat.inputs": [{
            "type": "filestream",
            "id": "kubernetes-container-logs",
            "paths": ["/var/log/containers/*.log"],
            "prospector.scanner.symlinks": True,
            "parsers": [{"container": {"stream": "all", "format": "cri"}}],
            "processors": [{"add_kubernetes_metadata": {
                "host": "${NODE_NAME}",
                "matchers": [{"logs_path": {"logs_path": "/var/log/containers/"}}],
            }}],
        }],
        "processors": [
            {"decode_json_fields": {"fields": ["message"], "target": "json", "overwrite_keys": False,
                                    "add_error_key": False, "max_depth": 2}},
            {"drop_fields": {"fields": ["agent.ephemeral_id", "ecs.version"], "ignore_missing": True}},
        ],
        "setup.ilm.enabled": True,
        "setup.ilm.policy_name": ILM_POLICY,
        "setup.ilm.policy_file": f"{ILM_MOUNT}/policy.json",
        "setup.ilm.overwrite": True,
    }


@dataclass(frozen=True)
class ElkArgs:
    stack_version: str = "8.15.3"
    chart: ChartPin = ECK_CHART
    namespace: str = "logging"
    operator_namespace: str = "elastic-system"
    elasticsearch_nodes: int = 3
    elasticsearch_memory_gi: int = 4
    elasticsearch_cpu: str = "1"
    elasticsearch_storage_gi: int = 50
    kibana_replicas: int = 1
    retention_days: int = 14
    metrics_retention_days: int = 30
    kube_state_metrics_chart: ChartPin = KUBE_STATE_METRICS_CHART
    #: Where the service and TF Serving run, and TF Serving's model (what Metricbeat scrapes and polls).
    app_namespace: str = "aistack"
    model_name: str = "digits"
    #: Where the GPU Operator runs the DCGM exporter.
    gpu_operator_namespace: str = "gpu-operator"
    thresholds: AlertThresholds = field(default_factory=AlertThresholds)

    def __post_init__(self) -> None:
        if not _STACK_VERSION.match(self.stack_version):
            raise ValidationError(f"Elastic stack version {self.stack_version!r} is invalid: pin one 8.x.y version "
                                  "(e.g. 8.15.3) used by Elasticsearch, Kibana and Filebeat alike")
        check_namespace(self.namespace)
        check_namespace(self.operator_namespace)
        if self.elasticsearch_nodes not in ELASTICSEARCH_NODES:
            raise ValidationError(f"Elasticsearch nodes {self.elasticsearch_nodes} is invalid: use 1 (no "
                                  "redundancy), 3 or 5 (an odd number keeps a master quorum)")
        if not 2 <= self.elasticsearch_memory_gi <= 64:
            raise ValidationError(f"Elasticsearch memory {self.elasticsearch_memory_gi} GiB is out of range: allowed "
                                  "2-64 GiB per node")
        if not 10 <= self.elasticsearch_storage_gi <= 4096:
            raise ValidationError(f"Elasticsearch storage {self.elasticsearch_storage_gi} GiB is out of range: allowed "
                                  "10-4096 GiB per node")
        if not 1 <= self.kibana_replicas <= 3:
            raise ValidationError(f"Kibana replicas {self.kibana_replicas} is out of range: allowed 1-3")
        if not 1 <= self.retention_days <= 365:
            raise ValidationError(f"log retention {self.retention_days} days is out of range: allowed 1-365")
        if not 1 <= self.metrics_retention_days <= 365:
            raise ValidationError(f"metrics retention {self.metrics_retention_days} days is out of range: "
                                  "allowed 1-365")
        check_namespace(self.app_namespace)
        check_namespace(self.gpu_operator_namespace)


def scrape_targets(args: ElkArgs) -> list[metricbeat.ScrapeTarget]:
    """What Metricbeat scrapes: the service, TF Serving (and its model status), the DCGM exporter."""
    return [
        metricbeat.ScrapeTarget("inference", args.app_namespace, {"app.kubernetes.io/name": tfserving.BACKEND_APP},
                                SERVICE_PORT, "/metrics", processors=metricbeat.service_processors()),
        metricbeat.ScrapeTarget("tf-serving", args.app_namespace, {"app.kubernetes.io/name": tfserving.NAME},
                                tfserving.REST_PORT, tfserving.METRICS_PATH,
                                extra_modules=[metricbeat.model_status_module(tfserving.REST_PORT, args.model_name)]),
        metricbeat.ScrapeTarget("dcgm-exporter", args.gpu_operator_namespace, DCGM_EXPORTER_LABELS,
                                DCGM_EXPORTER_PORT, "/metrics"),
    ]


def metricbeat_config(args: ElkArgs) -> dict[str, Any]:
    return metricbeat.metricbeat_config(scrape_targets(args),
                                        f"{KUBE_STATE_METRICS}.{args.namespace}.svc:{KUBE_STATE_METRICS_PORT}")


class Elk(K8sComponent):
    component = "elk"

    def __init__(self, name: str, args: ElkArgs, labels: dict[str, str], provider: k8s.Provider,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("k8s:Elk", name, labels, provider, opts)
        ns_name = args.namespace
        operator_ns = self.namespace(args.operator_namespace)
        # Filebeat reads the nodes' log files (hostPath): the namespace needs the privileged level.
        logs_ns = self.namespace(ns_name, {"pod-security.kubernetes.io/enforce": "privileged"})
        self.operator = self.release(
            "eck-operator", args.chart, operator_ns.metadata.name,
            {
                "installCRDs": True,
                "managedNamespaces": [ns_name],
                "nodeSelector": CPU_NODES,
                "resources": {"requests": {"cpu": "100m", "memory": "150Mi"}, "limits": {"memory": "512Mi"}},
                "config": {"metrics": {"port": 0}},
                "podMonitor": {"enabled": False},
                "webhook": {"enabled": True},
            },
        )
        after_operator = [self.operator, logs_ns]
        es_memory = f"{args.elasticsearch_memory_gi}Gi"
        self.elasticsearch = k8s.apiextensions.CustomResource(
            self.child_name("elasticsearch"),
            api_version="elasticsearch.k8s.elastic.co/v1",
            kind="Elasticsearch",
            metadata=meta(ES_NAME, ns_name, self.k8s_labels),
            spec={
                "version": args.stack_version,
                "nodeSets": [{
                    "name": "default",
                    "count": args.elasticsearch_nodes,
                    "config": {"node.store.allow_mmap": False},
                    "podTemplate": {"spec": {
                        "nodeSelector": CPU_NODES,
                        "containers": [{
                            "name": "elasticsearch",
                            "resources": {"requests": {"cpu": args.elasticsearch_cpu, "memory": es_memory},
                                          "limits": {"memory": es_memory}},
                        }],
                    }},
                    "volumeClaimTemplates": [{
                        "metadata": {"name": "elasticsearch-data"},
                        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": STORAGE_CLASS,
                                 "resources": {"requests": {"storage": f"{args.elasticsearch_storage_gi}Gi"}}},
                    }],
                }],
            },
            opts=self.kchild(depends_on=after_operator),
        )
        self.kibana = k8s.apiextensions.CustomResource(
            self.child_name("kibana"),
            api_version="kibana.k8s.elastic.co/v1",
            kind="Kibana",
            metadata=meta(KIBANA_NAME, ns_name, self.k8s_labels),
            spec={
                "version": args.stack_version,
                "count": args.kibana_replicas,
                "elasticsearchRef": {"name": ES_NAME},
                "podTemplate": {"spec": {
                    "nodeSelector": CPU_NODES,
                    "containers": [{"name": "kibana",
                                    "resources": {"requests": {"cpu": "250m", "memory": "1Gi"},
                                                  "limits": {"memory": "1Gi"}}}],
                }},
            },
            opts=self.kchild(depends_on=after_operator),
        )

        self.ilm_config = k8s.core.v1.ConfigMap(
            self.child_name("ilm-policy"),
            k8s.core.v1.ConfigMapInitArgs(
                metadata=meta(ILM_CONFIGMAP, ns_name, self.k8s_labels),
                data={"policy.json": json.dumps(ilm_policy(args.retention_days), indent=2, sort_keys=True)},
            ),
            opts=self.kchild(depends_on=[logs_ns]),
        )
        _, binding = self._beat_identity(BEAT_NAME, ns_name, logs_ns, [
            k8s.rbac.v1.PolicyRuleArgs(api_groups=[""], resources=["pods", "namespaces", "nodes"],
                                       verbs=["get", "list", "watch"]),
            k8s.rbac.v1.PolicyRuleArgs(api_groups=["apps"], resources=["replicasets"], verbs=["get", "list", "watch"]),
        ])
        host_paths = {"varlogcontainers": "/var/log/containers", "varlogpods": "/var/log/pods"}
        self.filebeat = k8s.apiextensions.CustomResource(
            self.child_name("filebeat"),
            api_version="beat.k8s.elastic.co/v1beta1",
            kind="Beat",
            metadata=meta(BEAT_NAME, ns_name, self.k8s_labels),
            spec={
                "type": "filebeat",
                "version": args.stack_version,
                "elasticsearchRef": {"name": ES_NAME},
                "kibanaRef": {"name": KIBANA_NAME},
                "config": filebeat_config(),
                "daemonSet": {"podTemplate": {"spec": {
                    "serviceAccountName": BEAT_NAME,
                    "automountServiceAccountToken": True,
                    "dnsPolicy": "ClusterFirstWithHostNet",
                    "hostNetwork": False,
                    "securityContext": {"runAsUser": 0},
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [{
                        "name": "filebeat",
                        "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                        "resources": {"requests": {"cpu": "100m", "memory": "200Mi"}, "limits": {"memory": "400Mi"}},
                        "volumeMounts": [
                            *({"name": volume, "mountPath": path, "readOnly": True}
                              for volume, path in host_paths.items()),
                            {"name": "ilm-policy", "mountPath": ILM_MOUNT, "readOnly": True},
                        ],
                    }],
                    "volumes": [
                        *({"name": volume, "hostPath": {"path": path}} for volume, path in host_paths.items()),
                        {"name": "ilm-policy", "configMap": {"name": ILM_CONFIGMAP}},
                    ],
                }}},
            },
            opts=self.kchild(depends_on=[*after_operator, self.ilm_config, binding, self.elasticsearch]),
        )
        self._metrics(args, logs_ns, after_operator)
        self._kibana_setup(args, logs_ns)
        self.kibana_url = kibana_url(ns_name)
        self.elasticsearch_url = elasticsearch_url(ns_name)
        self.dashboards = {board.title: self.kibana_url + kibana_objects.dashboard_path(board)
                           for board in kibana_objects.dashboards(args.app_namespace)}
        self.alerts = {rule.create["name"]: self.kibana_url + kibana_objects.rule_path(rule.id)
                       for rule in self.rules}
        self.register_outputs({"kibana_url": self.kibana_url, "elasticsearch_url": self.elasticsearch_url,
                               "dashboards": self.dashboards, "alerts": self.alerts})

    def _beat_identity(self, beat: str, ns_name: str, logs_ns: Any,
                       rules: list[k8s.rbac.v1.PolicyRuleArgs]) -> tuple[Any, Any]:
        """A Beat's ServiceAccount ``<beat>`` and its ClusterRole and binding ``aistack-<beat>``
        (children ``<beat>-sa``, ``-role``, ``-binding``); returns (account, binding)."""
        account = k8s.core.v1.ServiceAccount(
            self.child_name(f"{beat}-sa"),
            k8s.core.v1.ServiceAccountInitArgs(metadata=meta(beat, ns_name, self.k8s_labels)),
            opts=self.kchild(depends_on=[logs_ns]),
        )
        role = k8s.rbac.v1.ClusterRole(
            self.child_name(f"{beat}-role"),
            k8s.rbac.v1.ClusterRoleInitArgs(metadata=meta(f"aistack-{beat}", None, self.k8s_labels), rules=rules),
            opts=self.kchild(),
        )
        binding = k8s.rbac.v1.ClusterRoleBinding(
            self.child_name(f"{beat}-binding"),
            k8s.rbac.v1.ClusterRoleBindingInitArgs(
                metadata=meta(f"aistack-{beat}", None, self.k8s_labels),
                role_ref=k8s.rbac.v1.RoleRefArgs(api_group="rbac.authorization.k8s.io", kind="ClusterRole",
                                                 name=f"aistack-{beat}"),
                subjects=[k8s.rbac.v1.SubjectArgs(kind="ServiceAccount", name=beat, namespace=ns_name)],
            ),
            opts=self.kchild(depends_on=[role, account]),
        )
        return account, binding

    def _metrics(self, args: ElkArgs, logs_ns: k8s.core.v1.Namespace,
                 after_operator: Sequence[pulumi.Resource]) -> None:
        """kube-state-metrics, Metricbeat's RBAC, its ILM policy and the Metricbeat Beat."""
        ns_name = args.namespace
        self.kube_state_metrics = self.release(
            KUBE_STATE_METRICS, args.kube_state_metrics_chart, logs_ns.metadata.name,
            {
                "fullnameOverride": KUBE_STATE_METRICS,
                "nodeSelector": CPU_NODES,
                "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
                "service": {"port": KUBE_STATE_METRICS_PORT},
                "prometheusScrape": False,
            },
            depends_on=[logs_ns],
        )
        self.metrics_ilm_config = k8s.core.v1.ConfigMap(
            self.child_name("metrics-ilm-policy"),
            k8s.core.v1.ConfigMapInitArgs(
                metadata=meta(METRICS_ILM_CONFIGMAP, ns_name, self.k8s_labels),
                data={"policy.json": json.dumps(metricbeat.ilm_policy(args.metrics_retention_days), indent=2,
                                                sort_keys=True)},
            ),
            opts=self.kchild(depends_on=[logs_ns]),
        )
        read = ["get", "list", "watch"]
        account, binding = self._beat_identity(METRICBEAT_NAME, ns_name, logs_ns, [
            k8s.rbac.v1.PolicyRuleArgs(api_groups=[""], verbs=read,
                                       resources=["nodes", "namespaces", "pods", "services", "events"]),
            k8s.rbac.v1.PolicyRuleArgs(api_groups=[""], resources=["nodes/stats"], verbs=["get"]),
            k8s.rbac.v1.PolicyRuleArgs(api_groups=["apps"], verbs=read,
                                       resources=["replicasets", "deployments", "daemonsets", "statefulsets"]),
            k8s.rbac.v1.PolicyRuleArgs(api_groups=["batch"], resources=["jobs", "cronjobs"], verbs=read),
            k8s.rbac.v1.PolicyRuleArgs(non_resource_urls=["/metrics"], verbs=["get"]),
        ])
        # The cluster-wide metricsets run on the lease holder only; the lease lives in this namespace.
        lease_role = k8s.rbac.v1.Role(
            self.child_name("metricbeat-lease-role"),
            k8s.rbac.v1.RoleInitArgs(
                metadata=meta(f"{METRICBEAT_NAME}-leader", ns_name, self.k8s_labels),
                rules=[k8s.rbac.v1.PolicyRuleArgs(api_groups=["coordination.k8s.io"], resources=["leases"],
                                                  verbs=["get", "create", "update"])],
            ),
            opts=self.kchild(depends_on=[logs_ns]),
        )
        lease_binding = k8s.rbac.v1.RoleBinding(
            self.child_name("metricbeat-lease-binding"),
            k8s.rbac.v1.RoleBindingInitArgs(
                metadata=meta(f"{METRICBEAT_NAME}-leader", ns_name, self.k8s_labels),
                role_ref=k8s.rbac.v1.RoleRefArgs(api_group="rbac.authorization.k8s.io", kind="Role",
                                                 name=f"{METRICBEAT_NAME}-leader"),
                subjects=[k8s.rbac.v1.SubjectArgs(kind="ServiceAccount", name=METRICBEAT_NAME, namespace=ns_name)],
            ),
            opts=self.kchild(depends_on=[lease_role, account]),
        )
        host_paths = {"proc": ("/proc", f"{metricbeat.HOSTFS}/proc"),
                      "cgroup": ("/sys/fs/cgroup", f"{metricbeat.HOSTFS}/sys/fs/cgroup")}
        self.metricbeat = k8s.apiextensions.CustomResource(
            self.child_name("metricbeat"),
            api_version="beat.k8s.elastic.co/v1beta1",
            kind="Beat",
            metadata=meta(METRICBEAT_NAME, ns_name, self.k8s_labels),
            spec={
                "type": "metricbeat",
                "version": args.stack_version,
                "elasticsearchRef": {"name": ES_NAME},
                "kibanaRef": {"name": KIBANA_NAME},
                "config": metricbeat_config(args),
                "daemonSet": {"podTemplate": {
                    "metadata": {"labels": dict(METRICBEAT_POD_LABELS)},
                    "spec": {
                        "serviceAccountName": METRICBEAT_NAME,
                        "automountServiceAccountToken": True,
                        # Not on the host network: NetworkPolicies see the pod's own IP and labels.
                        "hostNetwork": False,
                        "dnsPolicy": "ClusterFirst",
                        "securityContext": {"runAsUser": 0},
                        "tolerations": [{"operator": "Exists"}],
                        "containers": [{
                            "name": "metricbeat",
                            "env": [
                                {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                                {"name": "NODE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                            ],
                            "resources": {"requests": {"cpu": "100m", "memory": "200Mi"},
                                          "limits": {"memory": "500Mi"}},
                            "volumeMounts": [
                                *({"name": volume, "mountPath": mount, "readOnly": True}
                                  for volume, (_, mount) in host_paths.items()),
                                {"name": "ilm-policy", "mountPath": metricbeat.ILM_MOUNT, "readOnly": True},
                            ],
                        }],
                        "volumes": [
                            *({"name": volume, "hostPath": {"path": path}}
                              for volume, (path, _) in host_paths.items()),
                            {"name": "ilm-policy", "configMap": {"name": METRICS_ILM_CONFIGMAP}},
                        ],
                    },
                }},
            },
            opts=self.kchild(depends_on=[*after_operator, self.metrics_ilm_config, binding, lease_binding,
                                         self.elasticsearch, self.kube_state_metrics]),
        )

    def _kibana_setup(self, args: ElkArgs, logs_ns: k8s.core.v1.Namespace) -> None:
        """The dashboards, connectors and alerting rules, imported by a Job through Kibana's API."""
        ns_name = args.namespace
        files = kibana_objects.setup_files(args.app_namespace, args.thresholds)
        self.rules = kibana_objects.rules(args.thresholds)
        self.setup_config = k8s.core.v1.ConfigMap(
            self.child_name("kibana-setup"),
            k8s.core.v1.ConfigMapInitArgs(metadata=meta(KIBANA_SETUP_CONFIGMAP, ns_name, self.k8s_labels),
                                          data=files),
            opts=self.kchild(depends_on=[logs_ns]),
        )
        job_name = f"kibana-setup-{kibana_objects.digest(files)}"
        self.setup_job = k8s.batch.v1.Job(
            self.child_name("kibana-setup-job"),
            k8s.batch.v1.JobInitArgs(
                metadata=meta(job_name, ns_name, self.k8s_labels, {"pulumi.com/timeoutSeconds": "1800"}),
                spec=k8s.batch.v1.JobSpecArgs(
                    backoff_limit=6,
                    active_deadline_seconds=1800,
                    template=k8s.core.v1.PodTemplateSpecArgs(
                        metadata=k8s.meta.v1.ObjectMetaArgs(labels={**self.k8s_labels,
                                                                    "app.kubernetes.io/name": "kibana-setup"}),
                        spec=k8s.core.v1.PodSpecArgs(
                            restart_policy="OnFailure",
                            automount_service_account_token=False,
                            node_selector=CPU_NODES,
                            security_context=k8s.core.v1.PodSecurityContextArgs(
                                run_as_non_root=True, run_as_user=1000, run_as_group=1000,
                                seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault")),
                            containers=[k8s.core.v1.ContainerArgs(
                                name="kibana-setup",
                                # Kibana's own image (pinned with the stack) has curl and a shell.
                                image=f"docker.elastic.co/kibana/kibana:{args.stack_version}",
                                command=["/bin/sh", f"{KIBANA_SETUP_DIR}/{kibana_objects.SCRIPT}"],
                                env=[
                                    k8s.core.v1.EnvVarArgs(name="KIBANA_URL", value=kibana_url(ns_name)),
                                    k8s.core.v1.EnvVarArgs(name="KIBANA_CA", value=f"{KIBANA_CA_DIR}/ca.crt"),
                                    k8s.core.v1.EnvVarArgs(name="SETUP_DIR", value=KIBANA_SETUP_DIR),
                                    k8s.core.v1.EnvVarArgs(
                                        name="ELASTIC_PASSWORD",
                                        value_from=k8s.core.v1.EnvVarSourceArgs(
                                            secret_key_ref=k8s.core.v1.SecretKeySelectorArgs(
                                                name=elastic_user_secret(), key="elastic"))),
                                ],
                                resources=k8s.core.v1.ResourceRequirementsArgs(
                                    requests={"cpu": "50m", "memory": "64Mi"}, limits={"memory": "128Mi"}),
                                security_context=k8s.core.v1.SecurityContextArgs(
                                    allow_privilege_escalation=False, read_only_root_filesystem=True,
                                    capabilities=k8s.core.v1.CapabilitiesArgs(drop=["ALL"])),
                                volume_mounts=[
                                    k8s.core.v1.VolumeMountArgs(name="setup", mount_path=KIBANA_SETUP_DIR,
                                                                read_only=True),
                                    k8s.core.v1.VolumeMountArgs(name="kibana-ca", mount_path=KIBANA_CA_DIR,
                                                                read_only=True),
                                    k8s.core.v1.VolumeMountArgs(name="tmp", mount_path="/tmp"),
                                ],
                            )],
                            volumes=[
                                k8s.core.v1.VolumeArgs(name="setup", config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(
                                    name=KIBANA_SETUP_CONFIGMAP)),
                                k8s.core.v1.VolumeArgs(name="kibana-ca", secret=k8s.core.v1.SecretVolumeSourceArgs(
                                    secret_name=kibana_ca_secret(),
                                    items=[k8s.core.v1.KeyToPathArgs(key="ca.crt", path="ca.crt")])),
                                k8s.core.v1.VolumeArgs(name="tmp", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(
                                    size_limit="16Mi")),
                            ],
                        ),
                    ),
                ),
            ),
            opts=self.kchild(depends_on=[self.setup_config, self.kibana, self.elasticsearch]),
        )
