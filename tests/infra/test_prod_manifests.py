"""Every Kubernetes object of the prod stack and of deploy/, checked by real validators.

- Built-in kinds (from the plan and from deploy/, base and the rendered prod overlay):
  ``kubernetes-validate`` in strict mode (unknown fields are errors) for the pinned Kubernetes
  version and every other version the config allows; a kind without a schema is a failure.
- ArgoCD ``Application`` and ``AppProject``: ``@kubernetes-models/argo-cd`` (tests/js, run with node).
- ECK ``Elasticsearch``, ``Kibana`` and both ``Beat`` objects (Filebeat, Metricbeat): no package that
  installs here ships their CRD schemas, so they are checked structurally: their spec keys against
  the fields of ECK's API reference (eck 2.14), references between them, the ILM policies, and their
  embedded pod templates and volume claim templates validated as core
  ``PodTemplate``/``PersistentVolumeClaim`` objects with kubernetes-validate.

kustomize cannot be installed here either, so ``render_overlay`` applies the few kustomize
features the overlay uses (resources, namespace, labels, images, a strategic-merge patch without
list merge keys); a test refuses any other kustomization field, so the rendering cannot silently
drift from what kustomize would do with these files.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from components import kubernetes as k8s_component
from components import metricbeat, tfserving
from components.argocd import GITOPS_KINDS
from components.elk import ILM_CONFIGMAP, ILM_MOUNT, METRICBEAT_POD_LABELS, METRICS_ILM_CONFIGMAP
from components.k8s_platform import CLICKHOUSE_SECRET
from policy import guardrails as g
from stacks.config import ProdConfig, load_stage_config
from stagectl.plan import PlannedResource, run_plan
from tests.infra.conftest import ROOT, stack_config

DEPLOY = ROOT / "deploy"
OVERLAY = DEPLOY / "overlays" / "prod"
JS = ROOT / "tests" / "js"
CUSTOM_KINDS = {"Application", "AppProject", "Elasticsearch", "Kibana", "Beat", "ClusterIssuer"}
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}

#: Spec fields of the ECK resources (ECK 2.14 API reference: ElasticsearchSpec, NodeSet, KibanaSpec,
#: BeatSpec, DaemonSetSpec).
ECK_FIELDS = {
    "Elasticsearch": {"auth", "http", "image", "monitoring", "nodeSets", "podDisruptionBudget", "remoteClusters",
                      "remoteClusterServer", "revisionHistoryLimit", "secureSettings", "serviceAccountName",
                      "transport", "updateStrategy", "version", "volumeClaimDeletePolicy"},
    "NodeSet": {"name", "config", "count", "podTemplate", "volumeClaimTemplates"},
    "Kibana": {"config", "count", "elasticsearchRef", "enterpriseSearchRef", "http", "image", "monitoring",
               "podTemplate", "revisionHistoryLimit", "secureSettings", "serviceAccountName", "version"},
    "Beat": {"config", "configRef", "daemonSet", "deployment", "elasticsearchRef", "image", "kibanaRef",
             "monitoring", "revisionHistoryLimit", "secureSettings", "serviceAccountName", "type", "version"},
    "DaemonSet": {"podTemplate", "updateStrategy"},
}
ECK_API_VERSIONS = {"Elasticsearch": "elasticsearch.k8s.elastic.co/v1", "Kibana": "kibana.k8s.elastic.co/v1",
                    "Beat": "beat.k8s.elastic.co/v1beta1"}


# --- validators ---------------------------------------------------------------------------------------

def validate_strict(document: dict[str, Any], version: str) -> None:
    """kubernetes-validate in strict mode; a kind it has no schema for fails instead of warning."""
    try:
        kubernetes_validate.validate(document, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError as exc:
        raise AssertionError(f"no schema: {exc.message}") from None
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        raise AssertionError(f"{document['kind']}/{document['metadata'].get('name')}: {path}: {exc.message}") from None


def run_argocd_validator(documents: list[dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]:
    node = shutil.which("node")
    assert node, "node is not installed: Node.js 20 or newer is needed for tests/js"
    assert (JS / "node_modules" / "@kubernetes-models" / "argo-cd").is_dir(), \
        "tests/js/node_modules is missing: run scripts/install-test-deps.sh"
    result = subprocess.run([node, "validate-argocd.mjs"], cwd=JS, input=json.dumps(documents), capture_output=True,
                            text=True, timeout=60)
    assert not result.stderr.strip(), result.stderr
    return result.returncode, [json.loads(line) for line in result.stdout.splitlines()]


# --- the plan's objects -------------------------------------------------------------------------------

@cache
def prod_config() -> ProdConfig:
    cfg = load_stage_config("prod", stack_config("prod"))
    assert isinstance(cfg, ProdConfig)
    return cfg


@cache
def plan_objects() -> tuple[PlannedResource, ...]:
    plan = run_plan("prod", ROOT)
    return tuple(r for r in plan.resources
                 if r.type.startswith("kubernetes:") and r.type != "kubernetes:helm.sh/v3:Release")


def concrete(resource: PlannedResource) -> dict[str, Any]:
    """The object as Kubernetes gets it; secret Secret data (redacted in the plan) stands in as a map."""
    document = copy.deepcopy(resource.inputs)
    if document.get("kind") == "Secret" and document.get("stringData") == "[secret]":
        document["stringData"] = {"REDACTED": "redacted"}
    text = json.dumps(document)
    assert "[secret]" not in text and "[computed]" not in text, f"{resource.name} has unresolved values: {text}"
    return document


def objects_of(kinds: set[str] | None = None, exclude: set[str] | None = None) -> list[dict[str, Any]]:
    out = []
    for resource in plan_objects():
        kind = resource.inputs["kind"]
        if (kinds is None or kind in kinds) and kind not in (exclude or set()):
            out.append(concrete(resource))
    return out


# --- deploy/ ---------------------------------------------------------------------------------------------

def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomization(directory: Path) -> dict[str, Any]:
    document = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert document["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and document["kind"] == "Kustomization"
    return document


def merge_patch(target: Any, patch: Any) -> Any:
    """Strategic merge for objects without list merge keys: maps merge, lists and scalars replace."""
    if isinstance(target, dict) and isinstance(patch, dict):
        merged = dict(target)
        for key, value in patch.items():
            merged[key] = merge_patch(target.get(key), value) if key in target else value
        return merged
    return copy.deepcopy(patch)


def _add_labels(docs: list[dict[str, Any]], spec: dict[str, Any]) -> None:
    assert spec.get("includeSelectors", False) is False and "includeTemplates" not in spec
    for doc in docs:
        doc["metadata"].setdefault("labels", {}).update(spec["pairs"])


def render(directory: Path) -> list[dict[str, Any]]:
    k = kustomization(directory)
    docs: list[dict[str, Any]] = []
    for entry in k.get("resources", []):
        path = (directory / entry).resolve()
        docs += render(path) if path.is_dir() else load_docs(path)
    for spec in k.get("labels", []):
        _add_labels(docs, spec)
    for patch in k.get("patches", []):
        body = yaml.safe_load((directory / patch["path"]).read_text())
        target = patch["target"]
        hits = [i for i, d in enumerate(docs)
                if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]]
        assert len(hits) == 1, f"patch target {target} matches {len(hits)} objects"
        docs[hits[0]] = merge_patch(docs[hits[0]], body)
    if "namespace" in k:
        for doc in docs:
            doc["metadata"]["namespace"] = k["namespace"]
    for image in k.get("images", []):
        for doc in docs:
            for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                if container["image"].split("@")[0].split(":")[0] == image["name"]:
                    container["image"] = f"{image.get('newName', image['name'])}@{image['digest']}"
    return docs


def deploy_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml")


# --- kubernetes-validate ----------------------------------------------------------------------------------

def test_every_plan_object_is_validated_by_someone():
    kinds = {r.inputs["kind"] for r in plan_objects()}
    assert {"Namespace", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler", "NetworkPolicy",
            "ConfigMap", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"} <= kinds
    assert kinds >= CUSTOM_KINDS
    for resource in plan_objects():
        assert resource.inputs["metadata"].get("name"), f"{resource.name} has no explicit name"


@pytest.mark.parametrize("version", sorted({prod_config().kubernetes.version, *k8s_component.VERSIONS}))
def test_plan_objects_pass_strict_validation(version):
    documents = objects_of(exclude=CUSTOM_KINDS)
    assert len(documents) >= 15
    for document in documents:
        validate_strict(document, version)


@pytest.mark.parametrize("version", sorted({prod_config().kubernetes.version, *k8s_component.VERSIONS}))
def test_deploy_manifests_pass_strict_validation(version):
    base = [d for path in deploy_files() if path.parent.name == "base" for d in load_docs(path)]
    rendered = render(OVERLAY)
    assert {d["kind"] for d in rendered} == {"ServiceAccount", "Deployment", "Service", "Ingress",
                                             "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"}
    for document in [*base, *rendered]:
        validate_strict(document, version)


def test_strict_validation_fails_on_unknown_kinds_and_fields():
    version = prod_config().kubernetes.version
    deployment = next(d for d in render(OVERLAY) if d["kind"] == "Deployment")
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(AssertionError, match="readinessprobe"):
        validate_strict(typo, version)
    with pytest.raises(AssertionError, match="no schema: Couldn't find schema for kind Elasticsearch"):
        validate_strict(objects_of({"Elasticsearch"})[0], version)
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    with pytest.raises(AssertionError, match="containerPort"):
        validate_strict(wrong_type, version)


# --- ArgoCD -------------------------------------------------------------------------------------------------

def test_argocd_resources_pass_the_argo_cd_models():
    documents = objects_of({"Application", "AppProject"})
    assert sorted(d["kind"] for d in documents) == ["AppProject", "Application"]
    code, results = run_argocd_validator(documents)
    assert code == 0, results
    assert [r["ok"] for r in results] == [True, True]


def test_argocd_validator_rejects_broken_and_unknown_objects():
    application = objects_of({"Application"})[0]
    broken = copy.deepcopy(application)
    broken["spec"]["syncPolicy"]["automated"]["prune"] = "yes"
    missing = copy.deepcopy(application)
    del missing["spec"]["destination"]
    unknown = {**copy.deepcopy(application), "kind": "ApplicationSet"}
    code, results = run_argocd_validator([broken, missing, unknown])
    assert code == 1
    assert [r["ok"] for r in results] == [False, False, False]
    assert "prune must be boolean" in results[0]["error"]
    assert "data/spec must have required property destination" in results[1]["error"]
    assert results[2]["error"].startswith("unknown kind argoproj.io/v1alpha1/ApplicationSet")


def test_app_project_admits_exactly_the_kinds_deploy_holds():
    project = objects_of({"AppProject"})[0]["spec"]
    allowed = {(k["group"], k["kind"]) for k in project["namespaceResourceWhitelist"]}
    assert project["clusterResourceWhitelist"] == []
    used = {(d["apiVersion"].rpartition("/")[0], d["kind"]) for d in render(OVERLAY)}
    assert used <= allowed == set(GITOPS_KINDS)
    assert project["destinations"] == [{"server": "https://kubernetes.default.svc",
                                        "namespace": prod_config().gitops.namespace}]


# --- ECK --------------------------------------------------------------------------------------------------

def eck(kind: str, name: str | None = None) -> dict[str, Any]:
    (document,) = [d for d in objects_of({kind}) if name is None or d["metadata"]["name"] == name]
    assert document["apiVersion"] == ECK_API_VERSIONS[kind]
    return document


BEATS = ("filebeat", "metricbeat")


def test_the_beats_are_filebeat_and_metricbeat():
    assert sorted(d["metadata"]["name"] for d in objects_of({"Beat"})) == sorted(BEATS)
    for name in BEATS:
        assert eck("Beat", name)["spec"]["type"] == name


def pod_template(template: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "eck"}, "template": template}


def test_eck_specs_use_only_documented_fields():
    es, kibana = eck("Elasticsearch"), eck("Kibana")
    assert set(es["spec"]) <= ECK_FIELDS["Elasticsearch"]
    assert all(set(node_set) <= ECK_FIELDS["NodeSet"] for node_set in es["spec"]["nodeSets"])
    assert set(kibana["spec"]) <= ECK_FIELDS["Kibana"]
    for name in BEATS:
        beat = eck("Beat", name)
        assert set(beat["spec"]) <= ECK_FIELDS["Beat"], name
        assert set(beat["spec"]["daemonSet"]) <= ECK_FIELDS["DaemonSet"], name


def test_eck_embedded_pod_and_volume_templates_pass_strict_validation():
    version = prod_config().kubernetes.version
    es, kibana = eck("Elasticsearch"), eck("Kibana")
    for node_set in es["spec"]["nodeSets"]:
        validate_strict(pod_template(node_set["podTemplate"]), version)
        for claim in node_set["volumeClaimTemplates"]:
            validate_strict({"apiVersion": "v1", "kind": "PersistentVolumeClaim", **claim}, version)
    validate_strict(pod_template(kibana["spec"]["podTemplate"]), version)
    for name in BEATS:
        validate_strict(pod_template(eck("Beat", name)["spec"]["daemonSet"]["podTemplate"]), version)


def test_eck_resources_fit_together():
    cfg = prod_config()
    es, kibana = eck("Elasticsearch"), eck("Kibana")
    for name in BEATS:
        beat = eck("Beat", name)
        assert es["spec"]["version"] == kibana["spec"]["version"] == beat["spec"]["version"] == \
            cfg.elk.stack_version
        assert len({es["metadata"]["namespace"], kibana["metadata"]["namespace"],
                    beat["metadata"]["namespace"]}) == 1
        assert kibana["spec"]["elasticsearchRef"]["name"] == beat["spec"]["elasticsearchRef"]["name"] == \
            es["metadata"]["name"]
        assert beat["spec"]["kibanaRef"]["name"] == kibana["metadata"]["name"]
    (node_set,) = es["spec"]["nodeSets"]
    assert node_set["count"] == cfg.elk.elasticsearch_nodes
    # ECK mounts the data volume only under this claim name.
    assert [c["metadata"]["name"] for c in node_set["volumeClaimTemplates"]] == ["elasticsearch-data"]
    assert node_set["config"]["node.store.allow_mmap"] is False
    es_container = node_set["podTemplate"]["spec"]["containers"][0]
    assert es_container["name"] == "elasticsearch"
    assert es_container["resources"]["limits"]["memory"] == f"{cfg.elk.elasticsearch_memory_gi}Gi"


def test_filebeat_ships_container_logs_from_every_node_with_ilm_retention():
    cfg = prod_config()
    beat = eck("Beat", "filebeat")
    assert beat["spec"]["type"] == "filebeat" and "deployment" not in beat["spec"]
    spec = beat["spec"]["daemonSet"]["podTemplate"]["spec"]
    assert spec["tolerations"] == [{"operator": "Exists"}], "runs on the tainted GPU nodes too"
    (container,) = spec["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert set(mounts) == set(volumes)
    assert volumes["varlogcontainers"]["hostPath"]["path"] == "/var/log/containers"
    assert volumes["ilm-policy"]["configMap"]["name"] == ILM_CONFIGMAP and mounts["ilm-policy"] == ILM_MOUNT
    config = beat["spec"]["config"]
    (log_input,) = config["filebeat.inputs"]
    assert log_input["paths"] == ["/var/log/containers/*.log"]
    assert config["setup.ilm.enabled"] is True
    assert config["setup.ilm.policy_file"] == f"{ILM_MOUNT}/policy.json"
    (configmap,) = [c for c in objects_of({"ConfigMap"}) if c["metadata"]["name"] == ILM_CONFIGMAP]
    policy = json.loads(configmap["data"]["policy.json"])["policy"]["phases"]
    assert policy["delete"] == {"min_age": f"{cfg.elk.log_retention_days}d", "actions": {"delete": {}}}
    assert policy["hot"]["actions"]["rollover"]["max_age"] == "1d"
    (binding,) = [b for b in objects_of({"ClusterRoleBinding"}) if b["metadata"]["name"] == "aistack-filebeat"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": spec["serviceAccountName"],
                                    "namespace": beat["metadata"]["namespace"]}]


def test_metricbeat_runs_on_every_node_with_ilm_retention_next_to_the_logs():
    beat = eck("Beat", "metricbeat")
    assert beat["spec"]["type"] == "metricbeat" and "deployment" not in beat["spec"]
    spec = beat["spec"]["daemonSet"]["podTemplate"]["spec"]
    assert spec["tolerations"] == [{"operator": "Exists"}], "runs on the tainted GPU nodes too"
    assert spec.get("hostNetwork") is False, "NetworkPolicies must see the pod's own IP and labels"
    (container,) = spec["containers"]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"NODE_NAME": "spec.nodeName", "NODE_IP": "status.hostIP"}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert set(mounts) == set(volumes)
    assert all(m["readOnly"] for m in mounts.values())
    assert volumes["proc"]["hostPath"]["path"] == "/proc" and mounts["proc"]["mountPath"] == "/hostfs/proc"
    assert volumes["ilm-policy"]["configMap"]["name"] == METRICS_ILM_CONFIGMAP
    config = beat["spec"]["config"]
    assert config["setup.ilm.policy_name"] == metricbeat.ILM_POLICY != \
        eck("Beat", "filebeat")["spec"]["config"]["setup.ilm.policy_name"]
    assert config["setup.ilm.policy_file"] == f"{mounts['ilm-policy']['mountPath']}/policy.json"
    (configmap,) = [c for c in objects_of({"ConfigMap"}) if c["metadata"]["name"] == METRICS_ILM_CONFIGMAP]
    phases = json.loads(configmap["data"]["policy.json"])["policy"]["phases"]
    assert set(phases) == {"hot", "delete"} and phases["delete"]["min_age"] == "30d"
    (binding,) = [b for b in objects_of({"ClusterRoleBinding"}) if b["metadata"]["name"] == "aistack-metricbeat"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": spec["serviceAccountName"],
                                    "namespace": beat["metadata"]["namespace"]}]


# --- deploy/ against the stack ---------------------------------------------------------------------------

def test_kustomizations_use_only_the_rendered_features():
    for directory in (DEPLOY / "base", OVERLAY):
        k = kustomization(directory)
        assert set(k) <= KUSTOMIZATION_FIELDS, f"{directory}: {set(k) - KUSTOMIZATION_FIELDS}"
        for entry in k.get("resources", []):
            assert (directory / entry).exists(), f"{directory}: {entry} does not exist"
    listed = {(DEPLOY / "base" / entry).resolve() for entry in kustomization(DEPLOY / "base")["resources"]}
    assert listed == {p.resolve() for p in (DEPLOY / "base").glob("*.yaml") if p.name != "kustomization.yaml"}


def test_overlay_pins_the_released_image_by_digest():
    cfg = prod_config()
    (image,) = kustomization(OVERLAY)["images"]
    assert image["name"] == "inference" and "newTag" not in image
    assert re.fullmatch(r"cr\.yandex/[a-z0-9]+/inference", image["newName"])
    assert image["digest"] == cfg.release.image_digest, "deploy/overlays/prod and Pulumi.prod.yaml pin the same image"
    deployment = next(d for d in render(OVERLAY) if d["kind"] == "Deployment")
    resource = g.Resource("urn:x", "kubernetes:apps/v1:Deployment", "inference", deployment)
    facts = g.StackFacts(stack="prod", stage="prod")
    assert list(g.images_pinned_by_digest(resource, facts)) == []
    by_tag = copy.deepcopy(deployment)
    by_tag["spec"]["template"]["spec"]["containers"][0]["image"] = image["newName"] + ":1.0"
    tagged = g.Resource("urn:x", "kubernetes:apps/v1:Deployment", "inference", by_tag)
    assert list(g.images_pinned_by_digest(tagged, facts)), "the guardrail catches a tag"


def test_backend_deployment_runs_as_the_issue_asks():
    cfg = prod_config()
    rendered = {d["kind"]: d for d in render(OVERLAY)}
    deployment = rendered["Deployment"]
    assert all(d["metadata"]["namespace"] == cfg.gitops.namespace for d in rendered.values())
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["BACKEND"] == "tfserving" and env["STORE"] == "clickhouse"
    assert env["TFSERVING_URL"] == tfserving.service_url(cfg.gitops.namespace)
    assert env["TFSERVING_MODEL"] == cfg.model.name
    assert container["envFrom"] == [{"secretRef": {"name": CLICKHOUSE_SECRET}}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts[env["SPOOL_DIR"]]]
    # the service's stop is planned within the pod's grace period; records are fsynced before answers
    assert float(env["SHUTDOWN_GRACE_SECONDS"]) == pod["terminationGracePeriodSeconds"]
    assert env["STORE_DURABILITY"] == "wal"
    assert set(container["resources"]) == {"requests", "limits"}
    hpa, pdb = rendered["HorizontalPodAutoscaler"]["spec"], rendered["PodDisruptionBudget"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"] and hpa["minReplicas"] >= 2
    assert pdb["minAvailable"] < hpa["minReplicas"]
    ingress = rendered["Ingress"]["spec"]
    assert ingress["ingressClassName"] == "nginx"
    assert ingress["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == rendered["Service"]["metadata"][
        "name"]


def test_network_policies_connect_exactly_backend_tf_serving_and_clickhouse():
    cfg = prod_config()
    policy = next(d for d in render(OVERLAY) if d["kind"] == "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["ingress"]
    elk_namespace = eck("Beat", "metricbeat")["metadata"]["namespace"]
    assert ingress["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}},
         "podSelector": {"matchLabels": {"app.kubernetes.io/name": "ingress-nginx"}}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": elk_namespace}},
         "podSelector": {"matchLabels": METRICBEAT_POD_LABELS}},
    ], "the service's port admits the ingress controller and Metricbeat (for /metrics), nothing else"
    assert ingress["ports"] == [{"protocol": "TCP", "port": 8080}]
    assert eck("Beat", "metricbeat")["spec"]["daemonSet"]["podTemplate"]["metadata"]["labels"] == \
        METRICBEAT_POD_LABELS
    egress = {rule["ports"][0]["port"]: rule["to"] for rule in policy["egress"]}
    assert egress[tfserving.REST_PORT] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": tfserving.NAME}}}]
    assert sorted(peer["ipBlock"]["cidr"] for peer in egress[8443]) == sorted(cfg.network.subnets.values()), \
        "the overlay's ClickHouse ranges are the stage's subnets"
    (tf_policy,) = [d for d in objects_of({"NetworkPolicy"}) if d["metadata"]["name"] == tfserving.NAME]
    backend_labels = next(d for d in render(OVERLAY) if d["kind"] == "Deployment")["spec"]["template"]["metadata"][
        "labels"]
    backend_rule, scraper_rule = tf_policy["spec"]["ingress"]
    allowed = backend_rule["from"][0]["podSelector"]["matchLabels"]
    assert allowed.items() <= backend_labels.items(), "TF Serving admits the backend's pods"
    assert scraper_rule == {
        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": elk_namespace}},
                  "podSelector": {"matchLabels": METRICBEAT_POD_LABELS}}],
        "ports": [{"protocol": "TCP", "port": tfserving.REST_PORT}],
    }, "Metricbeat reaches TF Serving's REST port (metrics, model status) only"


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """The checks of Kubernetes' restricted Pod Security level that these pods could break."""
    found = []
    if pod.get("securityContext", {}).get("runAsNonRoot") is not True:
        found.append("runAsNonRoot")
    if pod.get("securityContext", {}).get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
        found.append("seccompProfile")
    for container in pod["containers"]:
        context = container.get("securityContext", {})
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{container['name']}: allowPrivilegeEscalation")
        if context.get("capabilities", {}).get("drop") != ["ALL"]:
            found.append(f"{container['name']}: capabilities.drop")
    for volume in pod.get("volumes", []):
        if set(volume) - {"name"} - {"emptyDir", "configMap", "secret", "projected", "persistentVolumeClaim"}:
            found.append(f"volume {volume['name']}")
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        found.append("host namespaces")
    return found


def test_workloads_of_the_app_namespace_meet_the_restricted_level_it_enforces():
    namespace = prod_config().gitops.namespace
    (ns,) = [d for d in objects_of({"Namespace"}) if d["metadata"]["name"] == namespace]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pods = [d["spec"]["template"]["spec"] for d in objects_of({"Deployment"})]
    pods += [d["spec"]["template"]["spec"] for d in render(OVERLAY) if d["kind"] == "Deployment"]
    assert len(pods) == 2
    for pod in pods:
        assert restricted_violations(pod) == [], pod["containers"][0]["name"]
    filebeat = eck("Beat", "filebeat")["spec"]["daemonSet"]["podTemplate"]["spec"]
    assert restricted_violations(filebeat), "the check does catch a privileged pod (Filebeat reads host paths)"


def test_deploy_yaml_passes_yamllint():
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    config = YamlLintConfig("extends: default\nrules:\n  line-length: {max: 120}\n  document-start: disable\n")
    for path in [*deploy_files(), *DEPLOY.rglob("kustomization.yaml")]:
        problems = [p for p in linter.run(path.read_text(), config) if p.level == "error"]
        assert problems == [], f"{path}: {problems}"
