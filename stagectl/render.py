"""Human renderings of a plan: an indented resource tree and a Mermaid diagram."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from stagectl.plan import Plan, PlannedResource

#: Inputs worth showing in the tree, by resource type (the rest is in ``--json``).
KEY_SETTINGS: dict[str, tuple[str, ...]] = {
    "StorageBucket": ("bucket", "versioning.enabled", "anonymousAccessFlags",
                      "serverSideEncryptionConfiguration.rule.applyServerSideEncryptionByDefault.sseAlgorithm"),
    "StorageObject": ("key", "source"),
    "KmsSymmetricKey": ("defaultAlgorithm", "rotationPeriod", "deletionProtection"),
    "KmsSymmetricKeyIamMember": ("role", "member"),
    "IamServiceAccount": ("name",),
    "ResourcemanagerFolderIamMember": ("role", "member"),
    "IamServiceAccountStaticAccessKey": ("outputToLockbox.entryForAccessKey",),
    "LockboxSecret": ("name",),
    "LockboxSecretIamMember": ("role", "member"),
    "ContainerRegistry": ("name",),
    "ContainerRegistryIamBinding": ("role", "members"),
    "LoggingGroup": ("name", "retentionPeriod"),
    "ServerlessContainer": ("memory", "cores", "coreFraction", "concurrency", "executionTimeout",
                            "provisionPolicy.minInstances", "image.url"),
    "ServerlessContainerIamBinding": ("role", "members"),
    "KubernetesCluster": ("master.version", "master.publicIp", "master.securityGroupIds", "networkPolicyProvider",
                          "kmsProvider.keyId"),
    "KubernetesNodeGroup": ("instanceTemplate.platformId", "instanceTemplate.resources.gpus",
                            "instanceTemplate.resources.cores", "instanceTemplate.resources.memory",
                            "scalePolicy.autoScale.min", "scalePolicy.autoScale.max", "nodeTaints"),
    "MdbClickhouseCluster": ("version", "clickhouse.resources.resourcePresetId", "hosts.assignPublicIp",
                             "deletionProtection"),
    "VpcAddress": ("externalIpv4Address.zoneId", "deletionProtection"),
    "Release": ("chart", "version", "namespace"),
    "Deployment": ("metadata.namespace", "spec.template.spec.containers.image"),
    "HorizontalPodAutoscaler": ("spec.minReplicas", "spec.maxReplicas"),
    "Application": ("spec.source.path", "spec.source.targetRevision", "spec.syncPolicy.automated"),
    "Elasticsearch": ("spec.version", "spec.nodeSets.count"),
    "Beat": ("spec.type", "spec.version"),
    "Job": ("metadata.name", "spec.template.spec.containers.image"),
}


def short_type(token: str) -> str:
    """``yandex:index/storageBucket:StorageBucket`` -> ``yandex:StorageBucket``."""
    package, _, rest = token.partition(":")
    return f"{package}:{rest.rpartition(':')[2]}" if rest else token


def _lookup(inputs: dict[str, Any], path: str) -> Any:
    value: Any = inputs
    for part in path.split("."):
        if isinstance(value, list):
            value = value[0] if value else None
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def key_settings(resource: PlannedResource) -> str:
    kind = resource.type.rpartition(":")[2]
    parts = []
    for path in KEY_SETTINGS.get(kind, ()):
        value = _lookup(resource.inputs, path)
        if value is not None:
            text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
            parts.append(f"{path.rpartition('.')[2]}={text}")
    return "  ".join(parts)


def children_of(plan: Plan) -> dict[str | None, list[PlannedResource]]:
    tree: dict[str | None, list[PlannedResource]] = defaultdict(list)
    for resource in plan.resources:
        tree[resource.parent].append(resource)
    return tree


def tree(plan: Plan) -> str:
    tree_map = children_of(plan)
    custom = sum(1 for r in plan.resources if r.custom)
    lines = [f"stack {plan.stack} (project {plan.project}): {custom} cloud resources in "
             f"{len(plan.resources) - custom} components"]

    def walk(parent: str | None, indent: str) -> None:
        items = tree_map.get(parent, [])
        for i, resource in enumerate(items):
            last = i == len(items) - 1
            branch = "└─ " if last else "├─ "
            settings = key_settings(resource)
            lines.append(f"{indent}{branch}{short_type(resource.type)}  {resource.name}"
                         + (f"  [{settings}]" if settings else ""))
            walk(resource.urn, indent + ("   " if last else "│  "))

    walk(None, "")
    if plan.outputs:
        lines.append("outputs:")
        width = max(len(k) for k in plan.outputs)
        for key, value in plan.outputs.items():
            lines.append(f"  {key:<{width}}  {value if isinstance(value, str) else json.dumps(value)}")
    for warning in plan.warnings:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def mermaid(plan: Plan) -> str:
    """Components as subgraphs, cloud resources as nodes (GitLab renders ```mermaid blocks)."""
    ids = {r.urn: f"r{i}" for i, r in enumerate(plan.resources)}
    tree_map = children_of(plan)
    lines = ["flowchart LR"]

    def label(resource: PlannedResource) -> str:
        return f'"{short_type(resource.type).partition(":")[2]}<br/>{resource.name}"'

    def walk(parent: str | None, indent: str) -> None:
        for resource in tree_map.get(parent, []):
            node = ids[resource.urn]
            if resource.custom:
                lines.append(f"{indent}{node}[{label(resource)}]")
            else:
                lines.append(f"{indent}subgraph {node}[{label(resource)}]")
                walk(resource.urn, indent + "  ")
                lines.append(f"{indent}end")

    walk(None, "  ")
    return "\n".join(lines)
