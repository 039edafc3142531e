"""Metricbeat in prod: what it scrapes, how it names what it stores, and how long it keeps it.

One ``Beat`` of type ``metricbeat`` runs as a DaemonSet (every node, GPU nodes included) and ships
to the same Elasticsearch as Filebeat. Its configuration (:func:`metricbeat_config`) is data, built
here and checked by the tests:

- **Scrape targets found by their pod labels**, never by fixed addresses: a node-scoped
  ``kubernetes`` autodiscover provider launches, for each running pod of a target on the Beat's own
  node, the Prometheus ``collector`` on ``${data.host}:<port><path>`` (the pod IP from the
  autodiscover event). The targets (:class:`ScrapeTarget`) are the service (``/metrics`` on 8080),
  TF Serving (its Prometheus endpoint on the REST port, enabled by its monitoring config file) and
  the NVIDIA DCGM exporter that the GPU Operator runs on every GPU node (9400). Each target's events
  carry ``aistack.target: <name>``, which dashboards and alerts select on. TF Serving's model status
  (``GET /v1/models/<name>``) is polled as well (``http`` module, ``json`` metricset): it is what
  says whether the model is AVAILABLE.
- **Typed Prometheus layout** (``use_types``, ``rate_counters``): a gauge is
  ``prometheus.<metric>.value``, a counter ``prometheus.<metric>.counter`` with its increase since
  the previous scrape in ``prometheus.<metric>.rate``, a histogram ``prometheus.<metric>.histogram``
  (an Elasticsearch ``histogram``: bucket centroids and per-scrape counts, so percentiles over any
  time range are percentiles of the requests in it); labels are ``prometheus.labels.<label>``.
  Kibana's rules cannot filter the operands of a ratio separately, so the service's 5xx increase is
  also copied into ``aistack.http_requests_5xx.rate`` (a processor, on 5xx series only): the error
  ratio is then ``sum(5xx rate) / sum(rate)`` over the predict routes.
- **Nodes and pods** from the kubelet (``kubernetes`` module: node, system, pod, container,
  volume), the host (``system`` module through the node's ``/proc`` and cgroup mounts), and **cluster
  state** from kube-state-metrics (``state_*`` metricsets) plus Kubernetes events, both launched
  only on the Beat that holds the leader lease (a ``unique`` cluster-scoped provider), so the
  cluster is counted once.
- **Retention**: an ILM policy (:func:`ilm_policy`, the same shape as the logs') installed by the
  Beat at start-up from a ConfigMap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Where every Metricbeat document lands (Metricbeat 8's data stream ``metricbeat-<version>``).
INDEX_PATTERN = "metricbeat-*"
TIME_FIELD = "@timestamp"
#: The field each scrape target's events carry (``aistack.target: inference``...).
TARGET_FIELD = "aistack.target"
#: The service's predict 5xx increase, copied by a processor (see the module docstring).
HTTP_5XX_RATE = "aistack.http_requests_5xx.rate"
#: The namespace of TF Serving's model status document (``http.<namespace>.*``).
MODEL_STATUS_NAMESPACE = "tfserving_model"
MODEL_STATE_FIELD = f"http.{MODEL_STATUS_NAMESPACE}.model_version_status.state"
ILM_POLICY = "aistack-metrics"
ILM_MOUNT = "/usr/share/metricbeat/ilm"
HOSTFS = "/hostfs"
PERIOD = "15s"
#: The lease the cluster-wide metricsets are launched under (one holder at a time).
LEADER_LEASE = "aistack-metricbeat-cluster"
#: The fields this configuration adds to the documents (mapped by the Beat's index template).
APPENDED_FIELDS = ({"name": TARGET_FIELD, "type": "keyword"}, {"name": HTTP_5XX_RATE, "type": "double"})

_KINDS = ("value", "counter", "rate", "histogram")


def gauge(metric: str) -> str:
    return f"prometheus.{metric}.value"


def rate(metric: str) -> str:
    """The increase of a counter since the previous scrape (``rate_counters``)."""
    return f"prometheus.{metric}.rate"


def histogram(metric: str) -> str:
    return f"prometheus.{metric}.histogram"


def label(name: str) -> str:
    return f"prometheus.labels.{name}"


def prometheus_metric(field_name: str) -> tuple[str, str] | None:
    """``(metric, kind)`` of a typed Prometheus field (``prometheus.up.value`` -> ``("up", "value")``)."""
    if not field_name.startswith("prometheus.") or field_name.startswith("prometheus.labels."):
        return None
    metric, _, kind = field_name[len("prometheus."):].rpartition(".")
    return (metric, kind) if metric and kind in _KINDS else None


def kql_string(value: str) -> str:
    """A quoted KQL value."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def target_query(target: str) -> str:
    """KQL selecting one scrape target's documents."""
    return f"{TARGET_FIELD}: {kql_string(target)}"


@dataclass(frozen=True)
class ScrapeTarget:
    """Pods whose Prometheus endpoint Metricbeat scrapes, found by namespace and labels."""

    name: str
    namespace: str
    labels: Mapping[str, str]
    port: int
    path: str = "/metrics"
    #: Processors applied to this target's events only.
    processors: Sequence[Mapping[str, Any]] = ()
    #: Further module configurations launched for the same pods (e.g. a status poll).
    extra_modules: Sequence[Mapping[str, Any]] = field(default_factory=tuple)

    def condition(self) -> dict[str, Any]:
        """The autodiscover condition: Kubernetes labels are matched undotted (Metricbeat 8.6+)."""
        clauses: list[dict[str, Any]] = [{"equals": {"kubernetes.namespace": self.namespace}}]
        clauses += [{"equals": {f"kubernetes.labels.{key}": value}} for key, value in sorted(self.labels.items())]
        return {"and": clauses}

    def modules(self) -> list[dict[str, Any]]:
        tag = {"fields": {TARGET_FIELD: self.name}, "fields_under_root": True}
        collector: dict[str, Any] = {
            "module": "prometheus",
            "metricsets": ["collector"],
            "period": PERIOD,
            "hosts": [f"${{data.host}}:{self.port}"],
            "metrics_path": self.path,
            "use_types": True,
            "rate_counters": True,
            **tag,
        }
        if self.processors:
            collector["processors"] = [dict(p) for p in self.processors]
        return [collector, *({**dict(m), **tag} for m in self.extra_modules)]


def service_processors() -> list[dict[str, Any]]:
    """Copy the 5xx series' increase into :data:`HTTP_5XX_RATE` (the error ratio's numerator)."""
    return [{"copy_fields": {
        "when": {"regexp": {label("status"): "^5[0-9][0-9]$"}},
        "fields": [{"from": rate("http_requests_total"), "to": HTTP_5XX_RATE}],
        "fail_on_error": False,
        "ignore_missing": True,
    }}]


def model_status_module(port: int, model: str) -> dict[str, Any]:
    """TF Serving's model status (``GET /v1/models/<model>``) as a document per pod and period."""
    return {
        "module": "http",
        "metricsets": ["json"],
        "period": PERIOD,
        "hosts": [f"${{data.host}}:{port}"],
        "path": f"/v1/models/{model}",
        "namespace": MODEL_STATUS_NAMESPACE,
        "response.enabled": True,
    }


def ilm_policy(retention_days: int) -> dict[str, Any]:
    """The ILM policy of the metric indices (the body of ``PUT _ilm/policy/<name>``)."""
    return {"policy": {"phases": {
        "hot": {"min_age": "0ms", "actions": {"rollover": {"max_age": "1d", "max_primary_shard_size": "50gb"}}},
        "delete": {"min_age": f"{retention_days}d", "actions": {"delete": {}}},
    }}}


def metricbeat_config(targets: Sequence[ScrapeTarget], kube_state_metrics: str) -> dict[str, Any]:
    """``spec.config`` of the Metricbeat Beat; ``kube_state_metrics`` is its ``host:port``."""
    node_provider = {
        "type": "kubernetes",
        "scope": "node",
        "node": "${NODE_NAME}",
        "resource": "pod",
        "templates": [{"condition": t.condition(), "config": t.modules()} for t in targets],
    }
    cluster_provider = {
        "type": "kubernetes",
        "scope": "cluster",
        "node": "${NODE_NAME}",
        "unique": True,
        "leader_lease": LEADER_LEASE,
        "templates": [{"config": [
            {
                "module": "kubernetes",
                "metricsets": ["state_node", "state_deployment", "state_daemonset", "state_replicaset",
                               "state_pod", "state_container", "state_job"],
                "period": PERIOD,
                "hosts": [kube_state_metrics],
                "add_metadata": True,
            },
            {"module": "kubernetes", "metricsets": ["event"], "period": PERIOD},
        ]}],
    }
    kubelet = {
        "module": "kubernetes",
        "metricsets": ["node", "system", "pod", "container", "volume"],
        "period": PERIOD,
        "node": "${NODE_NAME}",
        # The pod runs without host networking (NetworkPolicies then see its pod IP): the kubelet is
        # reached on the node's address.
        "hosts": ["https://${NODE_IP}:10250"],
        "bearer_token_file": "/var/run/secrets/kubernetes.io/serviceaccount/token",
        "ssl.verification_mode": "none",
        "add_metadata": True,
    }
    system = [
        {"module": "system", "period": PERIOD, "hostfs": HOSTFS,
         "metricsets": ["cpu", "load", "memory", "process_summary"],
         "cpu.metrics": ["percentages", "normalized_percentages"]},
        {"module": "system", "period": "1m", "hostfs": HOSTFS, "metricsets": ["filesystem", "fsstat"],
         "processors": [{"drop_event": {"when": {"regexp": {
             "system.filesystem.mount_point": "^/(sys|cgroup|proc|dev|etc|host|lib|snap)($|/)"}}}}]},
    ]
    return {
        "metricbeat.autodiscover": {"providers": [node_provider, cluster_provider]},
        "metricbeat.modules": [kubelet, *system],
        "processors": [{"add_cloud_metadata": {}}, {"add_host_metadata": {}}],
        "setup.template.append_fields": [dict(f) for f in APPENDED_FIELDS],
        "setup.ilm.enabled": True,
        "setup.ilm.policy_name": ILM_POLICY,
        "setup.ilm.policy_file": f"{ILM_MOUNT}/policy.json",
        "setup.ilm.overwrite": True,
    }
