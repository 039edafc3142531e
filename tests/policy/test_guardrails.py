"""Every guardrail both ways: a resource (or stack) where it fires and one where it passes."""

from __future__ import annotations

from typing import Any

import pytest

from policy import guardrails as g

Y = "yandex:index/"
GOOD_SSE = {"rule": {"applyServerSideEncryptionByDefault": {"sseAlgorithm": "aws:kms", "kmsMasterKeyId": "k1"}}}
LABELS = {"project": "aistack", "stage": "mvp", "component": "storage"}


def res(kind: str, name: str = "r", package: str = Y, **inputs: Any) -> g.Resource:
    token = f"{package}{kind[0].lower()}{kind[1:]}:{kind}" if package == Y else f"{package}{kind}"
    return g.Resource(f"urn:pulumi:mvp::aistack::{token}::{name}", token, name, inputs)


def facts(**kw: Any) -> g.StackFacts:
    return g.StackFacts(**{"stack": "mvp", "stage": "mvp", **kw})


def findings(rule: str, resources: list[g.Resource], stack_facts: g.StackFacts | None = None) -> list[str]:
    result = next(r for r in g.evaluate(resources, stack_facts or facts()) if r.rule.name == rule)
    return [f.message for f in result.findings]


def bucket(**overrides: Any) -> g.Resource:
    inputs = {"anonymousAccessFlags": {"read": False, "list": False, "configRead": False},
              "serverSideEncryptionConfiguration": GOOD_SSE, "tags": LABELS, **overrides}
    return res("StorageBucket", "data", **inputs)


CASES: list[tuple[str, list[g.Resource], list[g.Resource], dict[str, Any], str]] = [
    # rule, passing resources, failing resources, facts overrides, expected message fragment
    ("bucket-not-public", [bucket()], [bucket(anonymousAccessFlags={"read": True})], {},
     "allows anonymous read"),
    ("bucket-not-public", [bucket()], [bucket(acl="public-read")], {}, "public ACL 'public-read'"),
    ("bucket-encrypted", [bucket()], [bucket(serverSideEncryptionConfiguration=None)], {},
     "not encrypted with a KMS key"),
    ("db-no-public-ip", [res("MdbPostgresqlCluster", hosts=[{"zone": "ru-central1-a", "assignPublicIp": False}])],
     [res("MdbClickhouseCluster", hosts=[{"zone": "ru-central1-a", "assignPublicIp": True}])], {},
     "has a host with a public IP"),
    ("prod-db-deletion-protection", [res("MdbPostgresqlCluster", deletionProtection=True)],
     [res("MdbPostgresqlCluster", deletionProtection=False)], {"stage": "prod"}, "in prod has no deletion protection"),
    ("ssh-not-open-to-world",
     [res("VpcSecurityGroup", ingresses=[{"protocol": "TCP", "port": 22, "v4CidrBlocks": ["203.0.113.0/24"]}])],
     [res("VpcSecurityGroup", ingresses=[{"protocol": "ANY", "fromPort": 0, "toPort": 65535,
                                          "v4CidrBlocks": ["0.0.0.0/0"]}])], {}, "opens SSH (22) to the world"),
    ("serverless-memory", [res("ServerlessContainer", memory=1024)], [res("ServerlessContainer", memory=1000)], {},
     "memory 1000 MB is invalid"),
    ("gpu-platform-zone-shape",
     [res("ComputeInstance", platformId="standard-v3-t4", zone="ru-central1-a",
          resources={"gpus": 1, "cores": 8, "memory": 32})],
     [res("ComputeInstance", platformId="standard-v3-t4", zone="ru-central1-a",
          resources={"gpus": 1, "cores": 8, "memory": 16})], {}, "does not offer 1 GPU / 8 vCPU / 16 GB"),
    ("gpu-platform-zone-shape",
     [res("ComputeInstance", platformId="standard-v3", zone="ru-central1-d", resources={"cores": 2, "memory": 4})],
     [res("ComputeInstance", platformId="standard-v3-t4i", zone="ru-central1-a",
          resources={"gpus": 1, "cores": 4, "memory": 16})], {}, "runs only in ru-central1-d"),
    ("gpu-platform-zone-shape", [],
     [res("KubernetesNodeGroup", instanceTemplate={"platformId": "standard-v3",
                                                   "resources": {"gpus": 1, "cores": 28, "memory": 119}})], {},
     "did you mean 'gpu-standard-v3'"),
    ("db-preset-valid", [res("MdbPostgresqlCluster", config={"resources": {"resourcePresetId": "s2.micro"}})],
     [res("MdbPostgresqlCluster", config={"resources": {"resourcePresetId": "s9.huge"}})], {}, "s9.huge"),
    ("db-preset-valid", [res("MdbClickhouseCluster", clickhouse={"resources": {"resourcePresetId": "s3-c2-m8"}})],
     [res("MdbClickhouseCluster", clickhouse={"resources": {"resourcePresetId": "s2.huge"}})], {},
     "resource preset 's2.huge' is not a Managed ClickHouse host class"),
    ("no-managed-elasticsearch", [res("MdbClickhouseCluster")], [res("MdbElasticsearchCluster")], {},
     "discontinued"),
    ("labels-present", [bucket()], [bucket(tags={"project": "aistack"})], {}, "lacks the tags stage, component"),
    ("images-pinned-by-digest",
     [res("ServerlessContainer", image={"url": "cr.yandex/r/inference@sha256:" + "a" * 64})],
     [res("ServerlessContainer", image={"url": "cr.yandex/r/inference:latest"})], {"stage": "partner"},
     "by tag: pin the service image by digest"),
]


@pytest.mark.parametrize(("rule", "good", "bad", "extra", "message"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_rule_fires_and_passes(rule, good, bad, extra, message):
    assert findings(rule, good, facts(**extra)) == []
    found = findings(rule, bad, facts(**extra))
    assert found, f"{rule} did not fire"
    assert any(message in m for m in found), found


def test_labels_rule_ignores_resources_without_labels():
    account = res("IamServiceAccount", name="sa")  # the SDK's IamServiceAccount takes no labels
    assert findings("labels-present", [account]) == []


def test_images_rule_does_not_apply_to_mvp():
    tagged = res("ServerlessContainer", image={"url": "cr.yandex/r/inference:latest"})
    assert findings("images-pinned-by-digest", [tagged], facts(stage="mvp")) == []


def test_k8s_api_rule():
    sg_open = res("VpcSecurityGroup", "master-sg", ingresses=[{"protocol": "TCP", "port": 443,
                                                                "v4CidrBlocks": ["0.0.0.0/0"]}])
    sg_allow = res("VpcSecurityGroup", "master-sg", ingresses=[{"protocol": "TCP", "port": 443,
                                                                 "v4CidrBlocks": ["198.51.100.0/24"]}])
    cluster = res("KubernetesCluster", "k8s", master={"publicIp": True, "securityGroupIds": ["(master-sg.id)"]})
    assert findings("k8s-api-not-open-to-world", [sg_allow, cluster]) == []
    assert "opens the Kubernetes API of k8s to the world" in findings("k8s-api-not-open-to-world",
                                                                      [sg_open, cluster])[0]
    bare = res("KubernetesCluster", "k8s", master={"publicIp": True})
    assert "public master with no security group" in findings("k8s-api-not-open-to-world", [bare])[0]


def test_plain_secrets_rule():
    marked = res("LockboxSecretVersion", entries=[{"key": "K", "textValue": "[secret]"}])
    plain = res("LockboxSecretVersion", entries=[{"key": "K", "textValue": "hunter2"}])
    assert findings("no-plain-secrets", [marked], facts(secrets_marked=True)) == []
    assert "entries[0].textValue is a secret passed in plain text" in \
        findings("no-plain-secrets", [plain], facts(secrets_marked=True))[0]
    assert "config key aistack:apiKey holds a secret in plain text" in \
        findings("no-plain-secrets", [], facts(plain_secret_keys=("aistack:apiKey",)))[0]
    assert "stack output db_password looks secret" in \
        findings("no-plain-secrets", [], facts(secrets_marked=True, outputs={"db_password": "x"}))[0]
    assert findings("no-plain-secrets", [], facts(secrets_marked=True, outputs={"db_password": "[secret]"})) == []


def test_budget_rule():
    assert findings("budget", [], facts(monthly_cost=10.0, budget=20.0)) == []
    assert findings("budget", [], facts(monthly_cost=10.0)) == []
    message = findings("budget", [], facts(monthly_cost=25.5, budget=20.0))[0]
    assert message.startswith("monthly cost 25.50 USD exceeds the budget 20.00 USD")


def test_every_rule_has_a_test():
    tested = {c[0] for c in CASES} | {"k8s-api-not-open-to-world", "no-plain-secrets", "budget"}
    assert tested == {rule.name for rule in g.RULES}
