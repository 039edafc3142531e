"""``stagectl plan``: JSON shape, determinism, redaction, formats and refusals, through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from stagectl.plan import run_plan
from tests.infra.conftest import ROOT


def stagectl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stagectl", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def plan_json() -> dict:
    result = stagectl("plan", "mvp", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_plan_json_shape(plan_json):
    assert plan_json["stack"] == "mvp" and plan_json["project"] == "aistack"
    assert set(plan_json) == {"stack", "project", "resources", "outputs"}
    urns = set()
    every = {r["urn"] for r in plan_json["resources"]}
    for resource in plan_json["resources"]:
        assert set(resource) == {"urn", "type", "name", "parent", "dependencies", "inputs"}
        assert resource["urn"].startswith("urn:pulumi:mvp::aistack::")
        assert resource["parent"] is None or resource["parent"] in urns, "parents are registered first"
        assert set(resource["dependencies"]) <= every and resource["dependencies"] == sorted(resource["dependencies"])
        urns.add(resource["urn"])
    types = [r["type"] for r in plan_json["resources"]]
    assert "yandex:index/storageBucket:StorageBucket" in types
    assert "yandex:index/serverlessContainer:ServerlessContainer" in types
    assert types[0] == "aistack:identity:WorkloadIdentity"
    bucket = next(r for r in plan_json["resources"] if r["type"].endswith(":StorageBucket"))
    assert "anonymousAccessFlags" in bucket["inputs"], "inputs are camelCase as registered"
    assert plan_json["outputs"]["invoke_url"] == "[computed]"


def test_plan_is_deterministic():
    first = run_plan("mvp", ROOT).dumps()
    second = run_plan("mvp", ROOT).dumps()
    assert first == second


def test_tree_and_mermaid_formats():
    tree = stagectl("plan", "mvp")
    assert tree.returncode == 0
    assert "yandex:ServerlessContainer  mvp-inference-container  [memory=1024" in tree.stdout
    diagram = stagectl("plan", "mvp", "--format", "mermaid")
    assert diagram.stdout.startswith("flowchart LR\n")
    assert 'subgraph r0["WorkloadIdentity<br/>mvp-inference"]' in diagram.stdout
    assert diagram.stdout.count("subgraph") == diagram.stdout.count("\n  end") + diagram.stdout.count("\n    end")


def test_stack_of_an_unknown_stage_fails_plainly(tmp_path):
    (tmp_path / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    (tmp_path / "Pulumi.qa.yaml").write_text((ROOT / "Pulumi.mvp.yaml").read_text() + "  aistack:stage: qa\n")
    result = subprocess.run([sys.executable, "-m", "stagectl", "plan", "qa"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == ("stagectl plan qa: Pulumi.qa.yaml: aistack:stage is 'qa'; known stages: mvp, "
                                     "partner, prod (set aistack:stage or name the stack after its stage)")
    assert result.stdout == ""


def test_unknown_stack_lists_known_ones():
    result = stagectl("plan", "staging")
    assert result.returncode == 2
    assert "unknown stack 'staging': no Pulumi.staging.yaml; known stacks: mvp, partner, prod" in result.stderr
