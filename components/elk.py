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
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.base import ValidationError
from components.k8s_platform import CPU_NODES, ECK_CHART, ChartPin, K8sComponent, check_namespace, meta

ES_NAME = "logs"
KIBANA_NAME = "logs"
BEAT_NAME = "filebeat"
ILM_POLICY = "aistack-logs"
ILM_CONFIGMAP = "filebeat-ilm-policy"
ILM_MOUNT = "/usr/share/filebeat/ilm"
STORAGE_CLASS = "yc-network-ssd"
_STACK_VERSION = re.compile(r"^8\.\d+\.\d+$")


def kibana_url(namespace: str) -> str:
    return f"https://{KIBANA_NAME}-kb-http.{namespace}.svc:5601"


def elasticsearch_url(namespace: str) -> str:
    return f"https://{ES_NAME}-es-http.{namespace}.svc:9200"


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

    def __post_init__(self) -> None:
        if not _STACK_VERSION.match(self.stack_version):
            raise ValidationError(f"Elastic stack version {self.stack_version!r} is invalid: pin one 8.x.y version "
                                  "(e.g. 8.15.3) used by Elasticsearch, Kibana and Filebeat alike")
        check_namespace(self.namespace)
        check_namespace(self.operator_namespace)
        if self.elasticsearch_nodes not in (1, 3, 5):
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
        account = k8s.core.v1.ServiceAccount(
            self.child_name("filebeat-sa"),
            k8s.core.v1.ServiceAccountInitArgs(metadata=meta(BEAT_NAME, ns_name, self.k8s_labels)),
            opts=self.kchild(depends_on=[logs_ns]),
        )
        role = k8s.rbac.v1.ClusterRole(
            self.child_name("filebeat-role"),
            k8s.rbac.v1.ClusterRoleInitArgs(
                metadata=meta(f"aistack-{BEAT_NAME}", None, self.k8s_labels),
                rules=[k8s.rbac.v1.PolicyRuleArgs(api_groups=[""], resources=["pods", "namespaces", "nodes"],
                                                  verbs=["get", "list", "watch"]),
                       k8s.rbac.v1.PolicyRuleArgs(api_groups=["apps"], resources=["replicasets"],
                                                  verbs=["get", "list", "watch"])],
            ),
            opts=self.kchild(),
        )
        binding = k8s.rbac.v1.ClusterRoleBinding(
            self.child_name("filebeat-binding"),
            k8s.rbac.v1.ClusterRoleBindingInitArgs(
                metadata=meta(f"aistack-{BEAT_NAME}", None, self.k8s_labels),
                role_ref=k8s.rbac.v1.RoleRefArgs(api_group="rbac.authorization.k8s.io", kind="ClusterRole",
                                                 name=f"aistack-{BEAT_NAME}"),
                subjects=[k8s.rbac.v1.SubjectArgs(kind="ServiceAccount", name=BEAT_NAME, namespace=ns_name)],
            ),
            opts=self.kchild(depends_on=[role, account]),
        )
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
        self.kibana_url = kibana_url(ns_name)
        self.elasticsearch_url = elasticsearch_url(ns_name)
        self.register_outputs({"kibana_url": self.kibana_url, "elasticsearch_url": self.elasticsearch_url})
