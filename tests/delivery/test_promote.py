"""``stagectl promote``: pins copied exactly, files otherwise untouched, every gate refusing with its
message; the smoke test runs against a real local inference service."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from stagectl.promote import PromotionRefused, promote, read_pins
from tests.delivery.conftest import DIGEST


def changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    a, b = before.splitlines(), after.splitlines()
    assert len(a) == len(b), "promotion must not add or remove lines"
    return [(x, y) for x, y in zip(a, b, strict=True) if x != y]


def test_promotion_copies_pins_and_keeps_the_rest(project, served):
    before = (project / "Pulumi.partner.yaml").read_text()
    result = promote("mvp", "partner", project, endpoint=served.base)
    after = (project / "Pulumi.partner.yaml").read_text()
    pins = read_pins(project, "mvp")
    assert read_pins(project, "partner") == pins
    changes = changed_lines(before, after)
    assert [new.strip() for _, new in changes] == [f'imageDigest: "{pins["imageDigest"]}"',
                                                   f'modelSha256: "{pins["modelSha256"]}"']
    assert any(line.lstrip().startswith("#") for line in after.splitlines()), "comments kept"
    assert result.gates[0] == "order: mvp -> partner is the next stage"
    assert result.gates[2].startswith(f"smoke test: {served.base} labelled 8 golden inputs as expected")
    assert result.gates[3].startswith("target: partner passes 14 guardrails")
    assert "+    imageDigest: \"" + DIGEST in result.diff(project)


def test_dry_run_changes_nothing(project, served):
    before = {p.name: p.read_text() for p in project.glob("Pulumi.*.yaml")}
    result = promote("mvp", "partner", project, endpoint=served.base, dry_run=True)
    assert result.changes, "the dry run still computes the change"
    assert {p.name: p.read_text() for p in project.glob("Pulumi.*.yaml")} == before


def test_prod_promotion_updates_the_overlay(project, served):
    partner = project / "Pulumi.partner.yaml"
    promote("mvp", "partner", project, endpoint=served.base)
    overlay = project / "deploy" / "overlays" / "prod" / "kustomization.yaml"
    before = overlay.read_text()
    promote("partner", "prod", project, endpoint=served.base)
    assert yaml.safe_load(overlay.read_text())["images"][0]["digest"] == DIGEST
    assert len(changed_lines(before, overlay.read_text())) == 1
    assert read_pins(project, "prod") == read_pins(project, "partner") == read_pins(project, "mvp")
    assert partner.exists()


def test_wrong_answer_is_refused(project, served, tmp_path):
    golden = json.loads((project / "models" / "digits" / "golden.json").read_text())
    golden["labels"] = [(label + 1) % 10 for label in golden["labels"]]
    wrong = tmp_path / "wrong-golden.json"
    wrong.write_text(json.dumps(golden))
    with pytest.raises(PromotionRefused, match=r"smoke test of mvp failed: .* labelled the golden input \["):
        promote("mvp", "partner", project, endpoint=served.base, golden=wrong)


def test_service_running_another_model_is_refused(project, served):
    mvp = project / "Pulumi.mvp.yaml"
    sha = read_pins(project, "mvp")["modelSha256"]
    mvp.write_text(mvp.read_text().replace(sha, "ab" * 32))
    with pytest.raises(PromotionRefused, match=r"serves model version [0-9a-f]{12}, but mvp pins abababababab"):
        promote("mvp", "partner", project, endpoint=served.base)


def test_unreachable_endpoint_is_refused(project):
    with pytest.raises(PromotionRefused, match=r"smoke test of mvp failed: cannot reach http://127\.0\.0\.1:9"):
        promote("mvp", "partner", project, endpoint="http://127.0.0.1:9")


def test_no_endpoint_is_refused(project):
    with pytest.raises(PromotionRefused, match="no endpoint to smoke-test mvp: pass --endpoint URL"):
        promote("mvp", "partner", project, output_runner=lambda cmd: "")


@pytest.mark.parametrize(("source", "target", "message"), [
    ("partner", "mvp", r"refusing to promote backwards or in place \(partner -> mvp\)"),
    ("mvp", "prod", r"refusing to skip partner \(mvp -> prod\)"),
    ("mvp", "staging", r"unknown stage 'staging'"),
])
def test_order_gate(project, source, target, message):
    with pytest.raises(PromotionRefused, match=message):
        promote(source, target, project, endpoint="http://unused")


def test_image_must_be_pinned_by_digest(project):
    mvp = project / "Pulumi.mvp.yaml"
    mvp.write_text(mvp.read_text().replace(DIGEST, "latest"))
    with pytest.raises(PromotionRefused, match=r"the mvp image is not pinned by digest \('latest'\)"):
        promote("mvp", "partner", project, endpoint="http://unused")


def test_target_over_budget_is_refused(project, served):
    partner = project / "Pulumi.partner.yaml"
    partner.write_text(partner.read_text().replace("    monthly: 600\n", "    monthly: 10\n"))
    before = partner.read_text()
    with pytest.raises(PromotionRefused, match=r"the partner stack fails its guardrails with the new pins:\n  "
                                               r"budget: monthly cost"):
        promote("mvp", "partner", project, endpoint=served.base)
    assert partner.read_text() == before


def test_cli_reports_refusal_with_exit_code(project):
    result = subprocess.run([sys.executable, "-m", "stagectl", "promote", "partner", "mvp"], cwd=project,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 4
    assert "stagectl promote partner mvp: refused: refusing to promote backwards" in result.stderr


def test_the_registry_comes_from_the_state_after_a_targeted_first_deploy():
    """`pulumi up --target <registry>` leaves the stack without outputs; promotion reads the registry
    from `pulumi stack export` (the shape the CLI prints: version 3, deployment.resources)."""
    from stagectl.promote import _repository, registry_in_state

    export = json.dumps({"version": 3, "deployment": {"manifest": {"version": "v3.260.0"}, "resources": [
        {"urn": "urn:pulumi:partner::aistack::pulumi:pulumi:Stack::aistack-partner", "type": "pulumi:pulumi:Stack",
         "custom": False},
        {"urn": "urn:pulumi:partner::aistack::aistack:registry:ImageRegistry$yandex:index/containerRegistry:"
                "ContainerRegistry::partner-images-registry",
         "type": "yandex:index/containerRegistry:ContainerRegistry", "custom": True, "id": "crp0partner0registry"}]}})

    def runner(cmd):
        if cmd[:3] == ["pulumi", "stack", "output"]:
            raise subprocess.CalledProcessError(255, cmd, "", "current stack does not have output property")
        assert cmd == ["pulumi", "stack", "export", "--stack", "partner"]
        return export

    assert registry_in_state("partner", runner) == "cr.yandex/crp0partner0registry/inference"
    assert _repository("partner", None, runner) == "cr.yandex/crp0partner0registry/inference"
    assert registry_in_state("partner", lambda cmd: json.dumps({"version": 3, "deployment": {}})) is None
