"""Promotion copies the release's image into the target stage's own registry, by digest, so every
stage runs an image its workload may pull: a real copy between local OCI registries with skopeo,
and the stage programs' image references checked against their pull grants. A release is one
build in one flavour per stage (release.images): each stage gets, and runs, its own; a release
recorded before the flavours moves its one image, as it always did."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from stagectl.plan import PlannedResource, run_plan
from stagectl.promote import ImageCopy, PromotionRefused, promote, read_images, read_pins, release_tag
from tests.delivery.conftest import project_with_release
from tests.delivery.registries import LocalRegistry, push_small_image

REPOSITORY = "crp-stage/inference"


@pytest.fixture
def registries(tmp_path: Path) -> Iterator[dict[str, LocalRegistry]]:
    """One registry per stage, as each stage owns its Container Registry."""
    started = {stage: LocalRegistry(tmp_path / f"registry-{stage}") for stage in ("mvp", "partner", "prod")}
    yield started
    for registry in started.values():
        registry.stop()


@pytest.fixture
def released(registries: dict[str, LocalRegistry], tmp_path: Path, model_dir: Path) -> tuple[Path, str]:
    """The build job's image in mvp's registry, and a project whose mvp pins it."""
    digest = push_small_image(registries["mvp"], REPOSITORY, tmp_path / "build")
    return project_with_release(tmp_path / "project", model_dir, digest), digest


@pytest.fixture
def flavoured(registries: dict[str, LocalRegistry], tmp_path: Path, model_dir: Path) -> tuple[Path, dict[str, str]]:
    """The build job's three flavours in mvp's registry (<commit>-<stage>), and a project whose mvp
    release records them (mvp's as imageDigest)."""
    images = {stage: push_small_image(registries["mvp"], REPOSITORY, tmp_path / f"build-{stage}",
                                      f"release for {stage}\n".encode(), tag=f"c0ffee-{stage}")
              for stage in ("mvp", "partner", "prod")}
    assert len(set(images.values())) == 3
    return project_with_release(tmp_path / "project", model_dir, images["mvp"], images), images


def repo(registries: dict[str, LocalRegistry], stage: str) -> str:
    return f"{registries[stage].host}/{REPOSITORY}"


def promote_through_every_stage(project: Path, registries: dict[str, LocalRegistry], endpoint: str) -> None:
    for source, target in (("mvp", "partner"), ("partner", "prod")):
        promote(source, target, project, endpoint=endpoint,
                image=ImageCopy(repo(registries, source), repo(registries, target), tls_verify=False))


def test_promotion_copies_the_image_by_digest(released, registries, served):
    project, digest = released
    assert not registries["partner"].serves(REPOSITORY, digest)
    result = promote("mvp", "partner", project, endpoint=served.base,
                     image=ImageCopy(repo(registries, "mvp"), repo(registries, "partner"), tls_verify=False))
    assert registries["partner"].serves(REPOSITORY, digest)
    assert registries["partner"].tags(REPOSITORY) == [release_tag(digest)]
    assert f"image: {digest[:19]}... copied to {repo(registries, 'partner')} (tag {release_tag(digest)}), " \
           "digest unchanged" in result.gates
    assert read_pins(project, "partner")["imageDigest"] == digest
    assert read_images(project, "partner") is None
    assert result.notes == [f"the mvp release has no per-stage flavours (aistack:release.images): partner gets the "
                            f"same image as mvp, {digest[:19]}... (a release built before the build made one image "
                            "per stage)"]


def test_prod_promotion_names_prods_registry_in_the_overlay(released, registries, served):
    project, digest = released
    promote_through_every_stage(project, registries, served.base)
    (entry,) = yaml.safe_load((project / "deploy/overlays/prod/kustomization.yaml").read_text())["images"]
    assert entry == {"name": "inference", "newName": repo(registries, "prod"), "digest": digest}
    assert registries["prod"].serves(REPOSITORY, digest)


def test_a_failed_copy_writes_nothing(released, registries, served):
    project, _ = released
    registries["partner"].stop()
    before = (project / "Pulumi.partner.yaml").read_text()
    with pytest.raises(PromotionRefused, match=r"copying the image .* to .* failed"):
        promote("mvp", "partner", project, endpoint=served.base,
                image=ImageCopy(repo(registries, "mvp"), repo(registries, "partner"), tls_verify=False))
    assert (project / "Pulumi.partner.yaml").read_text() == before


def test_an_image_missing_from_the_source_is_refused(released, registries, served):
    project, digest = released
    mvp = project / "Pulumi.mvp.yaml"
    mvp.write_text(mvp.read_text().replace(digest, "sha256:" + "0" * 64))
    with pytest.raises(PromotionRefused, match="copying the image"):
        promote("mvp", "partner", project, endpoint=served.base,
                image=ImageCopy(repo(registries, "mvp"), repo(registries, "partner"), tls_verify=False))


def test_the_cli_copies_unless_told_not_to(released, registries, served):
    project, digest = released
    command = [sys.executable, "-m", "stagectl", "promote", "mvp", "partner", "--endpoint", served.base]
    without_repositories = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=300)
    assert without_repositories.returncode == 4
    assert "no image repository for mvp: it is the stack output image_repository" in without_repositories.stderr
    copied = subprocess.run([*command, "--image-from", repo(registries, "mvp"), "--image-to",
                             repo(registries, "partner"), "--registry-insecure"], cwd=project, capture_output=True,
                            text=True, timeout=300)
    assert copied.returncode == 0, copied.stderr
    assert f"ok  image: {digest[:19]}... copied to" in copied.stdout
    assert "note  the mvp release has no per-stage flavours (aistack:release.images): partner gets the same " \
           "image as mvp" in copied.stdout
    assert registries["partner"].serves(REPOSITORY, digest)


# --- a release in one flavour per stage --------------------------------------------------------------------

def test_each_stage_gets_its_own_flavour(flavoured, registries, served):
    project, images = flavoured
    partner = promote("mvp", "partner", project, endpoint=served.base,
                      image=ImageCopy(repo(registries, "mvp"), repo(registries, "partner"), tls_verify=False))
    target = repo(registries, "partner")
    assert partner.gates[1] == (f"pinned: image {images['mvp'][:19]}..., model {partner.pins['modelSha256'][:12]}, "
                                "flavours mvp, partner, prod")
    assert [g for g in partner.gates if g.startswith("image:")] == [
        f"image: partner flavour {images['partner'][:19]}... copied to {target} "
        f"(tag {release_tag(images['partner'])}), digest unchanged",
        f"image: prod flavour {images['prod'][:19]}... copied to {target} (tag {release_tag(images['prod'])}), "
        "digest unchanged, for the promotion to prod"]
    assert partner.notes == []
    # partner's registry: partner's flavour, and prod's for the next promotion; never mvp's
    assert registries["partner"].serves(REPOSITORY, images["partner"])
    assert registries["partner"].serves(REPOSITORY, images["prod"])
    assert not registries["partner"].serves(REPOSITORY, images["mvp"])
    assert registries["partner"].tags(REPOSITORY) == sorted([release_tag(images["partner"]),
                                                             release_tag(images["prod"])])
    assert read_pins(project, "partner")["imageDigest"] == images["partner"]
    assert read_images(project, "partner") == images

    prod = promote("partner", "prod", project, endpoint=served.base,
                   image=ImageCopy(repo(registries, "partner"), repo(registries, "prod"), tls_verify=False))
    assert [g for g in prod.gates if g.startswith("image:")] == [
        f"image: prod flavour {images['prod'][:19]}... copied to {repo(registries, 'prod')} "
        f"(tag {release_tag(images['prod'])}), digest unchanged"]
    assert registries["prod"].tags(REPOSITORY) == [release_tag(images["prod"])]
    assert read_pins(project, "prod")["imageDigest"] == images["prod"]
    assert read_images(project, "prod") == images
    (entry,) = yaml.safe_load((project / "deploy/overlays/prod/kustomization.yaml").read_text())["images"]
    assert entry == {"name": "inference", "newName": repo(registries, "prod"), "digest": images["prod"]}


def test_the_dry_run_names_the_flavours_it_would_copy(flavoured, registries, served):
    project, images = flavoured
    result = subprocess.run([sys.executable, "-m", "stagectl", "promote", "mvp", "partner", "--endpoint", served.base,
                             "--image-from", repo(registries, "mvp"), "--image-to", repo(registries, "partner"),
                             "--registry-insecure", "--dry-run"], cwd=project, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    source, target = repo(registries, "mvp"), repo(registries, "partner")
    assert (f"ok  image: would copy the partner flavour of the image {source}@{images['partner'][:19]}... to {target} "
            "(dry run)") in result.stdout
    assert (f"ok  image: would copy the prod flavour of the image {source}@{images['prod'][:19]}... to {target}, "
            "for the promotion to prod (dry run)") in result.stdout
    assert f'+    imageDigest: "{images["partner"]}"' in result.stdout
    assert "note" not in result.stdout
    assert not registries["partner"].serves(REPOSITORY, images["partner"])
    assert read_images(project, "partner") is None


def test_a_flavour_missing_from_the_source_registry_writes_nothing(flavoured, registries, served):
    project, images = flavoured
    mvp = project / "Pulumi.mvp.yaml"
    mvp.write_text(mvp.read_text().replace(f"prod: {images['prod']}", "prod: sha256:" + "0" * 64))
    before = (project / "Pulumi.partner.yaml").read_text()
    with pytest.raises(PromotionRefused, match=r"copying the prod flavour of the image .*@sha256:0{64} to .* failed"):
        promote("mvp", "partner", project, endpoint=served.base,
                image=ImageCopy(repo(registries, "mvp"), repo(registries, "partner"), tls_verify=False))
    assert (project / "Pulumi.partner.yaml").read_text() == before


def test_every_stage_runs_its_own_flavour(flavoured, registries, served):
    project, images = flavoured
    promote_through_every_stage(project, registries, served.base)
    mvp = run_plan("mvp", project).resources
    container = next(r for r in mvp if r.type.endswith(":ServerlessContainer")).inputs
    assert container["image"]["url"] == f"{_repository_of(mvp)}@{images['mvp']}"
    partner = run_plan("partner", project).resources
    vm = next(r for r in partner if r.type.endswith(":ComputeInstance")).inputs
    compose = yaml.safe_load(vm["metadata"]["docker-compose"])
    assert compose["services"]["inference"]["image"] == f"{_repository_of(partner)}@{images['partner']}"
    prod = run_plan("prod", project).resources
    tf = next(r for r in prod if r.name == "prod-tf-serving-deployment").inputs
    (fetch,) = tf["spec"]["template"]["spec"]["initContainers"]
    assert fetch["image"] == f"{_repository_of(prod)}@{images['prod']}"
    for stage in ("partner", "prod"):
        assert registries[stage].serves(REPOSITORY, images[stage])


# --- what each stage runs, and who may pull it ------------------------------------------------------------

def _pullers(plan_resources: list[PlannedResource]) -> dict[str, list[str]]:
    """Registry id placeholder -> the members of its puller binding."""
    return {r.inputs["registryId"]: r.inputs["members"] for r in plan_resources
            if r.type.endswith(":ContainerRegistryIamBinding")
            and r.inputs["role"] == "container-registry.images.puller"}


def _repository_of(plan_resources: list[PlannedResource]) -> str:
    (registry,) = [r for r in plan_resources if r.type.endswith(":ContainerRegistry")]
    return f"cr.yandex/({registry.name}.id)/inference"


def test_every_stage_runs_an_image_from_a_registry_its_workload_may_pull(released, registries, served):
    project, digest = released
    promote_through_every_stage(project, registries, served.base)

    mvp = run_plan("mvp", project).resources
    container = next(r for r in mvp if r.type.endswith(":ServerlessContainer")).inputs
    assert container["image"]["url"] == f"{_repository_of(mvp)}@{digest}"
    members = _pullers(mvp)["(mvp-images-registry.id)"]
    assert f"serviceAccount:{container['serviceAccountId']}" in members

    partner = run_plan("partner", project).resources
    vm = next(r for r in partner if r.type.endswith(":ComputeInstance")).inputs
    compose = yaml.safe_load(vm["metadata"]["docker-compose"])
    assert compose["services"]["inference"]["image"] == f"{_repository_of(partner)}@{digest}"
    assert f"serviceAccount:{vm['serviceAccountId']}" in _pullers(partner)["(partner-images-registry.id)"]

    prod = run_plan("prod", project).resources
    (entry,) = yaml.safe_load((project / "deploy/overlays/prod/kustomization.yaml").read_text())["images"]
    assert (entry["newName"], entry["digest"]) == (repo(registries, "prod"), digest)
    cluster = next(r for r in prod if r.type.endswith(":KubernetesCluster")).inputs
    assert f"serviceAccount:{cluster['nodeServiceAccountId']}" in _pullers(prod)["(prod-images-registry.id)"]
    tf = next(r for r in prod if r.name == "prod-tf-serving-deployment").inputs
    (fetch,) = tf["spec"]["template"]["spec"]["initContainers"]
    assert fetch["image"] == f"{_repository_of(prod)}@{digest}"
    assert read_pins(project, "prod")["imageDigest"] == digest
