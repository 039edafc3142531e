"""Guardrails: one set of rules, run offline by ``stagectl plan``/``diff`` and by the policy pack.

A rule looks at resources as the engine registers them (type token, name, camelCase inputs) and
at a few facts about the stack (stage, cost, budget, config). The same functions back the
``pulumi-policy`` pack in this directory (``pulumi preview --policy-pack policy``) and the
offline checks over a plan, so a rule is written once. Limits come from the components' own
validators.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SECRET_MARK = "[secret]"


@dataclass(frozen=True)
class Resource:
    urn: str
    type: str
    name: str
    inputs: Mapping[str, Any]

    @property
    def kind(self) -> str:
        return self.type.rpartition(":")[2]

    @property
    def package(self) -> str:
        return self.type.partition(":")[0]


@dataclass(frozen=True)
class StackFacts:
    stack: str
    stage: str
    #: Monthly cost and budget in the same currency (None when unknown).
    monthly_cost: float | None = None
    budget: float | None = None
    currency: str = "USD"
    #: Config keys that hold secrets but are stored in plain text.
    plain_secret_keys: tuple[str, ...] = ()
    outputs: Mapping[str, Any] = field(default_factory=dict)
    #: True when secrets in ``inputs``/``outputs`` are marked ``[secret]`` (the offline plan);
    #: the policy pack sees them unwrapped and cannot tell.
    secrets_marked: bool = False


@dataclass(frozen=True)
class Finding:
    rule: str
    urn: str | None
    message: str


ResourceCheck = Callable[[Resource, StackFacts], Iterable[str]]
StackCheck = Callable[[Sequence[Resource], StackFacts], Iterable[Finding]]


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    resource: ResourceCheck | None = None
    stack: StackCheck | None = None


def _get(data: Any, path: str, default: Any = None) -> Any:
    value = data
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return default
        value = value.get(part)
    return default if value is None else value


def _validator(check: Callable[[], Any]) -> list[str]:
    """Run a component validator; its ValidationError message is the finding."""
    from components.base import ValidationError

    try:
        check()
    except ValidationError as exc:
        return [str(exc)]
    return []


# --- Object Storage -----------------------------------------------------------------------------

PUBLIC_ACLS = {"public-read", "public-read-write", "authenticated-read"}
ALL_USERS_URIS = {"http://acs.amazonaws.com/groups/global/AllUsers",
                  "http://acs.amazonaws.com/groups/global/AuthenticatedUsers"}


def bucket_not_public(r: Resource, facts: StackFacts) -> Iterator[str]:
    if r.kind == "StorageBucket":
        flags = r.inputs.get("anonymousAccessFlags") or {}
        for flag in ("read", "list", "configRead"):
            if flags.get(flag) is True:
                yield f"bucket {r.name} allows anonymous {flag}: set anonymousAccessFlags.{flag} to false"
        for grant in r.inputs.get("grants") or []:
            if grant.get("uri") in ALL_USERS_URIS or grant.get("type") == "Group":
                yield f"bucket {r.name} grants {grant.get('permissions')} to a public group"
    if r.kind in ("StorageBucket", "StorageObject") and r.inputs.get("acl") in PUBLIC_ACLS:
        yield f"{r.kind} {r.name} has the public ACL {r.inputs['acl']!r}: remove it"
    if r.kind == "StorageBucket" and r.inputs.get("website"):
        yield f"bucket {r.name} is a public website: remove the website block"


def bucket_encrypted(r: Resource, facts: StackFacts) -> Iterator[str]:
    if r.kind != "StorageBucket":
        return
    rule = _get(r.inputs, "serverSideEncryptionConfiguration.rule.applyServerSideEncryptionByDefault", {})
    if rule.get("sseAlgorithm") != "aws:kms" or not rule.get("kmsMasterKeyId"):
        yield (f"bucket {r.name} is not encrypted with a KMS key: set serverSideEncryptionConfiguration with "
               "sseAlgorithm aws:kms and a kmsMasterKeyId")


# --- Databases -----------------------------------------------------------------------------------

DB_KINDS = ("MdbPostgresqlCluster", "MdbClickhouseCluster", "MdbMysqlCluster", "MdbRedisCluster",
            "MdbMongodbCluster", "MdbKafkaCluster", "MdbGreenplumCluster")


def db_no_public_ip(r: Resource, facts: StackFacts) -> Iterator[str]:
    if r.kind not in DB_KINDS:
        return
    for host in r.inputs.get("hosts") or []:
        if host.get("assignPublicIp") is True:
            yield f"{r.kind} {r.name} has a host with a public IP in {host.get('zone')}: set assignPublicIp false"


def prod_db_deletion_protection(r: Resource, facts: StackFacts) -> Iterator[str]:
    if facts.stage == "prod" and r.kind in DB_KINDS and r.inputs.get("deletionProtection") is not True:
        yield f"{r.kind} {r.name} in prod has no deletion protection: set deletionProtection true"


def db_preset_valid(r: Resource, facts: StackFacts) -> Iterator[str]:
    if r.kind == "MdbPostgresqlCluster":
        from components.postgres import check_preset

        preset = _get(r.inputs, "config.resources.resourcePresetId")
        yield from _validator(lambda: check_preset(str(preset)))
    elif r.kind == "MdbClickhouseCluster":
        from components import clickhouse

        preset = _get(r.inputs, "clickhouse.resources.resourcePresetId")
        yield from _validator(lambda: clickhouse.check_preset(str(preset)))


def no_managed_elasticsearch(r: Resource, facts: StackFacts) -> Iterator[str]:
    if r.kind == "MdbElasticsearchCluster":
        yield (f"{r.name}: Managed Service for Elasticsearch was discontinued by Yandex Cloud (2024-04-11); "
               "run ELK in Kubernetes (ECK) or use Managed OpenSearch")


# --- Network ---------------------------------------------------------------------------------------

WORLD = {"0.0.0.0/0", "::/0"}


def _opens(rule: Mapping[str, Any], port: int) -> bool:
    if str(rule.get("protocol", "ANY")).upper() not in ("TCP", "ANY"):
        return False
    if rule.get("port") is not None and int(rule["port"]) != -1:
        return int(rule["port"]) == port
    low, high = int(rule.get("fromPort", 0) or 0), int(rule.get("toPort", 65535) or 65535)
    return low <= port <= high


def _to_world(rule: Mapping[str, Any]) -> bool:
    blocks = list(rule.get("v4CidrBlocks") or []) + list(rule.get("v6CidrBlocks") or [])
    for block in blocks:
        try:
            if ipaddress.ip_network(block, strict=False).prefixlen == 0:
                return True
        except ValueError:
            continue
    return False


def ssh_not_open_to_world(r: Resource, facts: StackFacts) -> Iterator[str]:
    if r.kind != "VpcSecurityGroup":
        return
    for rule in r.inputs.get("ingresses") or []:
        if _opens(rule, 22) and _to_world(rule):
            yield f"security group {r.name} opens SSH (22) to the world: allow only an admin CIDR"


def k8s_api_not_open_to_world(resources: Sequence[Resource], facts: StackFacts) -> Iterator[Finding]:
    groups = {f"({r.name}.id)": r for r in resources if r.kind == "VpcSecurityGroup"}
    for cluster in (r for r in resources if r.kind == "KubernetesCluster"):
        master = cluster.inputs.get("master") or {}
        if master.get("publicIp") is not True:
            continue
        attached = [groups[g] for g in master.get("securityGroupIds") or [] if g in groups]
        if not master.get("securityGroupIds"):
            yield Finding("k8s-api-not-open-to-world", cluster.urn,
                          f"cluster {cluster.name} has a public master with no security group: attach one that "
                          "allows 443/6443 only from the allowlist")
        for group in attached:
            for rule in group.inputs.get("ingresses") or []:
                if (_opens(rule, 443) or _opens(rule, 6443)) and _to_world(rule):
                    yield Finding("k8s-api-not-open-to-world", group.urn,
                                  f"security group {group.name} opens the Kubernetes API of {cluster.name} to the "
                                  "world: allow only the master allowlist")


# --- Compute limits --------------------------------------------------------------------------------


def serverless_memory(r: Resource, facts: StackFacts) -> Iterator[str]:
    if r.kind == "ServerlessContainer":
        from components.serverless import check_memory

        yield from _validator(lambda: check_memory(int(r.inputs.get("memory", 0))))


def gpu_platform_zone_shape(r: Resource, facts: StackFacts) -> Iterator[str]:
    from components import gpu

    if r.kind == "ComputeInstance":
        platform, resources = r.inputs.get("platformId", ""), r.inputs.get("resources") or {}
        zones = [r.inputs.get("zone")]
    elif r.kind == "KubernetesNodeGroup":
        template = r.inputs.get("instanceTemplate") or {}
        platform, resources = template.get("platformId", ""), template.get("resources") or {}
        zones = [loc.get("zone") for loc in _get(r.inputs, "allocationPolicy", {}).get("locations") or []]
    else:
        return
    gpus = int(resources.get("gpus") or 0)
    if gpus == 0 and platform not in gpu.PLATFORMS:
        return  # a CPU host
    yield from _validator(lambda: gpu.check_gpu_shape(platform, gpus, int(resources.get("cores") or 0),
                                                      float(resources.get("memory") or 0)))
    for zone in filter(None, zones):
        yield from _validator(functools.partial(gpu.check_gpu_zone, platform, str(zone)))


# --- Hygiene -----------------------------------------------------------------------------------------

REQUIRED_LABELS = ("project", "stage", "component")


def labelled(resource_type: str) -> str | None:
    """``labels`` or ``tags`` if the provider resource takes them, else None."""
    import inspect

    from components.yc import PACKAGE, yandex

    if not resource_type.startswith(f"{PACKAGE}:"):
        return None
    args_class = getattr(yandex, resource_type.rpartition(":")[2] + "Args", None)
    if args_class is None:
        return None
    params = inspect.signature(args_class.__init__).parameters
    return next((name for name in ("labels", "tags") if name in params), None)


def labels_present(r: Resource, facts: StackFacts) -> Iterator[str]:
    field_name = labelled(r.type)
    if field_name is None:
        return
    labels = r.inputs.get(field_name) or {}
    if not isinstance(labels, Mapping):
        return  # a computed or secret value cannot be checked
    missing = [k for k in REQUIRED_LABELS if k not in labels]
    if missing:
        yield f"{r.kind} {r.name} lacks the {field_name} {', '.join(missing)}"


_SECRET_FIELDS = re.compile(r"(password|secret|token|privatekey|textvalue)$", re.I)
_SECRET_OUTPUT = re.compile(r"(password|secret|token|private_?key|kubeconfig)", re.I)


def _plain_secret_paths(value: Any, path: str = "") -> Iterator[str]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            here = f"{path}.{key}" if path else str(key)
            if _SECRET_FIELDS.search(str(key)) and isinstance(item, str) and item not in (SECRET_MARK, ""):
                yield here
            else:
                yield from _plain_secret_paths(item, here)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _plain_secret_paths(item, f"{path}[{index}]")


def no_plain_secrets(resources: Sequence[Resource], facts: StackFacts) -> Iterator[Finding]:
    for key in facts.plain_secret_keys:
        yield Finding("no-plain-secrets", None,
                      f"config key {key} holds a secret in plain text: set it with `pulumi config set --secret`")
    if not facts.secrets_marked:
        return
    for r in resources:
        for path in _plain_secret_paths(r.inputs):
            yield Finding("no-plain-secrets", r.urn, f"{r.name}.{path} is a secret passed in plain text: "
                          "make it a Pulumi secret (pulumi.Output.secret / Config.require_secret)")
    for name, value in facts.outputs.items():
        if _SECRET_OUTPUT.search(name) and value not in (SECRET_MARK, None, "[computed]"):
            yield Finding("no-plain-secrets", None, f"stack output {name} looks secret but is not marked secret")


_DIGEST_REF = re.compile(r"@sha256:[0-9a-f]{64}$")


def _service_images(r: Resource) -> Iterator[tuple[str, str]]:
    """(where, image reference) of the service images a resource runs."""
    if r.kind == "ServerlessContainer":
        yield "image.url", str(_get(r.inputs, "image.url", ""))
    elif r.kind == "ComputeInstance":
        compose = _get(r.inputs, "metadata.docker-compose")
        if isinstance(compose, str):
            for match in re.finditer(r"image:\s*['\"]?(cr\.yandex/[^\s'\"]+)", compose):
                yield "metadata.docker-compose", match.group(1)
    elif r.package == "kubernetes" and r.kind in ("Deployment", "StatefulSet", "DaemonSet"):
        for container in _get(r.inputs, "spec.template.spec.containers", []) or []:
            image = str(container.get("image", ""))
            if image.startswith("cr.yandex/"):
                yield f"container {container.get('name')}", image


def images_pinned_by_digest(r: Resource, facts: StackFacts) -> Iterator[str]:
    if facts.stage not in ("partner", "prod"):
        return
    for where, image in _service_images(r):
        if not _DIGEST_REF.search(image):
            yield f"{r.name} {where} runs {image!r} by tag: pin the service image by digest (@sha256:...)"


def within_budget(resources: Sequence[Resource], facts: StackFacts) -> Iterator[Finding]:
    if facts.budget is None or facts.monthly_cost is None:
        return
    if facts.monthly_cost > facts.budget:
        yield Finding("budget", None,
                      f"monthly cost {facts.monthly_cost:,.2f} {facts.currency} exceeds the budget "
                      f"{facts.budget:,.2f} {facts.currency} (aistack:budget): reduce the stack or raise the budget")


RULES: tuple[Rule, ...] = (
    Rule("bucket-not-public", "No Object Storage bucket or object is readable or listable anonymously.",
         resource=bucket_not_public),
    Rule("bucket-encrypted", "Every bucket is encrypted with a KMS key.", resource=bucket_encrypted),
    Rule("db-no-public-ip", "No managed database or ClickHouse host has a public IP.", resource=db_no_public_ip),
    Rule("prod-db-deletion-protection", "Databases in prod have deletion protection.",
         resource=prod_db_deletion_protection),
    Rule("ssh-not-open-to-world", "SSH is never open to 0.0.0.0/0.", resource=ssh_not_open_to_world),
    Rule("k8s-api-not-open-to-world", "The Kubernetes master API is reachable only from an allowlist.",
         stack=k8s_api_not_open_to_world),
    Rule("serverless-memory", "Serverless container memory is a multiple of 128 MB and at most 8 GB.",
         resource=serverless_memory),
    Rule("gpu-platform-zone-shape", "GPU hosts and node groups use a valid platform, zone and shape.",
         resource=gpu_platform_zone_shape),
    Rule("db-preset-valid", "Managed databases use a valid resource preset.", resource=db_preset_valid),
    Rule("no-managed-elasticsearch", "No Managed Elasticsearch (discontinued by Yandex Cloud).",
         resource=no_managed_elasticsearch),
    Rule("labels-present", "Every labellable resource carries project, stage and component labels.",
         resource=labels_present),
    Rule("no-plain-secrets", "No secret in plain config, inputs or outputs.", stack=no_plain_secrets),
    Rule("images-pinned-by-digest", "partner and prod run the service image by digest.",
         resource=images_pinned_by_digest),
    Rule("budget", "The monthly cost stays within the stack's budget.", stack=within_budget),
)


@dataclass(frozen=True)
class RuleResult:
    rule: Rule
    findings: tuple[Finding, ...]

    @property
    def passed(self) -> bool:
        return not self.findings


def evaluate(resources: Sequence[Resource], facts: StackFacts) -> list[RuleResult]:
    """Run every rule; one result per rule, in RULES order."""
    results = []
    for rule in RULES:
        findings: list[Finding] = []
        if rule.resource is not None:
            for r in resources:
                findings += [Finding(rule.name, r.urn, m) for m in rule.resource(r, facts)]
        if rule.stack is not None:
            findings += list(rule.stack(resources, facts))
        results.append(RuleResult(rule, tuple(findings)))
    return results


def to_json(results: Sequence[RuleResult]) -> list[dict[str, Any]]:
    return [{"rule": r.rule.name, "passed": r.passed,
             "findings": [{"urn": f.urn, "message": f.message} for f in r.findings]} for r in results]


def dumps(results: Sequence[RuleResult]) -> str:
    return json.dumps(to_json(results), indent=2)
