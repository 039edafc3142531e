"""``stagectl promote``: pins copied exactly, files otherwise untouched, every gate refusing with its
message; the smoke test runs against a real local inference service."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from stagectl.promote import ImageCopy, PromotionRefused, promote, read_images, read_pins, set_release
from tests.delivery.conftest import DIGEST, FLAVOURS, project_with_release


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


# --- release.images: the build's flavour of the image for each stage -----------------------------------------

@pytest.fixture
def flavoured(tmp_path, model_dir):
    return project_with_release(tmp_path / "flavoured", model_dir, FLAVOURS["mvp"], FLAVOURS)


def test_the_target_gets_its_flavour_and_the_mapping(flavoured, served):
    before = (flavoured / "Pulumi.partner.yaml").read_text()
    result = promote("mvp", "partner", flavoured, endpoint=served.base)
    after = (flavoured / "Pulumi.partner.yaml").read_text()
    assert read_pins(flavoured, "partner") == {**read_pins(flavoured, "mvp"), "imageDigest": FLAVOURS["partner"]}
    assert read_images(flavoured, "partner") == FLAVOURS
    assert result.pins["imageDigest"] == FLAVOURS["partner"] and result.images == FLAVOURS
    # the pins change in place; the mapping is added below them, as `pulumi config set --path` adds it
    added = [line for line in after.splitlines() if line not in before.splitlines()]
    assert added == [f'    imageDigest: "{FLAVOURS["partner"]}"', f'    modelSha256: "{result.pins["modelSha256"]}"',
                     "    images:", *(f'      {stage}: "{digest}"' for stage, digest in FLAVOURS.items())]
    assert [g for g in result.gates if g.startswith("image:")] == [
        f"image: the partner flavour of the image {FLAVOURS['partner'][:19]}... not copied (--no-copy-image): "
        "partner's registry must already hold it",
        f"image: the prod flavour of the image {FLAVOURS['prod'][:19]}... not copied (--no-copy-image): partner's "
        "registry must already hold it, for the promotion to prod"]
    assert result.notes == []

    prod = promote("partner", "prod", flavoured, endpoint=served.base)
    assert read_pins(flavoured, "prod")["imageDigest"] == FLAVOURS["prod"]
    assert read_images(flavoured, "prod") == FLAVOURS
    overlay = yaml.safe_load((flavoured / "deploy" / "overlays" / "prod" / "kustomization.yaml").read_text())
    assert overlay["images"][0]["digest"] == FLAVOURS["prod"]
    assert prod.gates[1].endswith(", flavours mvp, partner, prod")


def test_a_release_without_flavours_moves_its_one_image_with_a_note(project, served):
    result = promote("mvp", "partner", project, endpoint=served.base)
    assert read_pins(project, "partner")["imageDigest"] == DIGEST
    assert result.images is None
    assert result.notes == [f"the mvp release has no per-stage flavours (aistack:release.images): partner gets the "
                            f"same image as mvp, {DIGEST[:19]}... (a release built before the build made one image "
                            "per stage)"]
    assert f"image: the image {DIGEST[:19]}... not copied (--no-copy-image)" in result.gates[-1]


def test_an_older_release_drops_the_targets_flavours(project, served):
    """A release without flavours over one with them (a rollback): the target's old mapping would
    contradict its new imageDigest, so it goes."""
    partner = project / "Pulumi.partner.yaml"
    partner.write_text(set_release(partner.read_text(), {"imageDigest": FLAVOURS["partner"]}, FLAVOURS))
    assert read_images(project, "partner") == FLAVOURS
    promote("mvp", "partner", project, endpoint=served.base)
    assert read_images(project, "partner") is None
    assert read_pins(project, "partner")["imageDigest"] == DIGEST


def test_the_cli_prints_the_note_and_the_flavours(project, flavoured, served):
    legacy = subprocess.run([sys.executable, "-m", "stagectl", "promote", "mvp", "partner", "--endpoint", served.base,
                             "--no-copy-image", "--dry-run"], cwd=project, capture_output=True, text=True, timeout=120)
    assert legacy.returncode == 0, legacy.stderr
    assert "note  the mvp release has no per-stage flavours" in legacy.stdout
    flavours = subprocess.run([sys.executable, "-m", "stagectl", "promote", "mvp", "partner", "--endpoint",
                               served.base, "--image-from", "registry.test/mvp/inference", "--image-to",
                               "registry.test/partner/inference", "--dry-run"], cwd=flavoured, capture_output=True,
                              text=True, timeout=120)
    assert flavours.returncode == 0, flavours.stderr
    assert (f"ok  image: would copy the partner flavour of the image registry.test/mvp/inference@"
            f"{FLAVOURS['partner'][:19]}... to registry.test/partner/inference (dry run)") in flavours.stdout
    assert "note" not in flavours.stdout
    assert f'+    imageDigest: "{FLAVOURS["partner"]}"' in flavours.stdout
    assert f'+      prod: "{FLAVOURS["prod"]}"' in flavours.stdout


def _edit_mvp_flavours(project, **changes):
    mvp = project / "Pulumi.mvp.yaml"
    text = mvp.read_text()
    for stage, digest in changes.items():
        line = f"      {stage}: {FLAVOURS[stage]}\n"
        assert line in text
        text = text.replace(line, "" if digest is None else f"      {stage}: {digest}\n")
    mvp.write_text(text)


@pytest.mark.parametrize(("changes", "message"), [
    ({"partner": None}, r"the mvp release has no partner flavour of the image \(aistack:release.images lists mvp, "
                        r"prod\): partner would run another stage's image"),
    ({"prod": "sha256:latest"}, r"the mvp release's prod flavour is not pinned by digest \('sha256:latest'\)"),
    ({"mvp": FLAVOURS["partner"]}, r"the mvp release is inconsistent: aistack:release.imageDigest sha256:5e5e5e5e5e5e"
                                   r"\.\.\. is not its mvp flavour"),
])
def test_a_release_with_bad_flavours_is_refused_before_anything_moves(flavoured, changes, message):
    _edit_mvp_flavours(flavoured, **changes)
    before = (flavoured / "Pulumi.partner.yaml").read_text()
    with pytest.raises(PromotionRefused, match=message):
        promote("mvp", "partner", flavoured, endpoint="http://unused",
                image=ImageCopy("registry.test/mvp/inference", "registry.test/partner/inference"))
    assert (flavoured / "Pulumi.partner.yaml").read_text() == before


def test_a_flavour_of_an_unknown_stage_is_refused(flavoured):
    mvp = flavoured / "Pulumi.mvp.yaml"
    mvp.write_text(mvp.read_text().replace("    images:\n", "    images:\n      staging: " + FLAVOURS["mvp"] + "\n"))
    with pytest.raises(PromotionRefused, match=r"aistack:release.images names staging, which is not a stage"):
        promote("mvp", "partner", flavoured, endpoint="http://unused")


def test_a_forced_skip_gives_prod_its_flavour(flavoured, served):
    result = promote("mvp", "prod", flavoured, endpoint=served.base, force=True)
    assert result.gates[0] == "order: mvp -> prod forced (--force)"
    assert read_pins(flavoured, "prod")["imageDigest"] == FLAVOURS["prod"]
    assert [g for g in result.gates if g.startswith("image:")] == [
        f"image: the prod flavour of the image {FLAVOURS['prod'][:19]}... not copied (--no-copy-image): prod's "
        "registry must already hold it"]
