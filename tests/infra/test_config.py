"""Typed stage config: missing or invalid keys fail before any resource, naming key, file and rule."""

from __future__ import annotations

import json

import pytest

from stacks.config import STAGE_CONFIGS, STAGES, ConfigError, MvpConfig, load_stage_config
from stacks.stages import PROGRAMS
from tests.infra.conftest import stack_config


def test_repository_config_loads_with_defaults():
    cfg = load_stage_config("mvp", stack_config())
    assert isinstance(cfg, MvpConfig)
    assert cfg.folder_id == "b1gexamplefolder0mvp"
    assert cfg.serverless.memory_mb == 1024
    assert cfg.storage.log_prefix == "predictions/"  # default
    assert cfg.resource_labels() == {"team": "ml-platform", "project": "aistack", "stage": "mvp"}


def test_missing_required_key_names_key_and_file():
    config = stack_config(release={"modelSha256": "a" * 64})
    with pytest.raises(ConfigError) as info:
        load_stage_config("mvp", config)
    assert str(info.value) == ("Pulumi.mvp.yaml: invalid stack configuration:\n"
                               "  aistack:release.imageDigest: is required but not set")


def test_missing_provider_folder_is_named_in_its_namespace():
    config = stack_config()
    del config["yandex:folderId"]
    with pytest.raises(ConfigError, match=r"yandex:folderId: is required but not set"):
        load_stage_config("mvp", config)


def test_invalid_memory_names_the_rule_and_value():
    config = stack_config(serverless={"memoryMb": 1000})
    with pytest.raises(ConfigError) as info:
        load_stage_config("mvp", config)
    assert "aistack:serverless.memoryMb: memory 1000 MB is invalid: Serverless Containers take a multiple of " \
           "128 MB, at most 8192 MB (e.g. 512, 1024, 2048) (got 1000)" in str(info.value)
    assert str(info.value).startswith("Pulumi.mvp.yaml:")


def test_invalid_choice_lists_allowed_values():
    config = stack_config()
    config["yandex:zone"] = "ru-central1-c"
    with pytest.raises(ConfigError, match=r"yandex:zone: Input should be 'ru-central1-a', 'ru-central1-b' or "
                                          r"'ru-central1-d' \(got 'ru-central1-c'\)"):
        load_stage_config("mvp", config)


def test_misspelled_key_lists_known_keys():
    config = stack_config(serverless={"memoryMB": 1024})
    with pytest.raises(ConfigError) as info:
        load_stage_config("mvp", config)
    message = str(info.value)
    assert "aistack:serverless.memoryMB: is not a known setting (misspelled?)" in message
    assert "known keys here: concurrency, coreFraction, cores" in message
    assert "memoryMb" in message


def test_unknown_top_level_key():
    config = stack_config(serverles={"memoryMb": 1024})
    with pytest.raises(ConfigError, match=r"aistack:serverles: is not a known setting .* serverless"):
        load_stage_config("mvp", config)


def test_every_error_is_reported_at_once():
    config = stack_config(serverless={"memoryMb": 100, "concurrency": 99})
    with pytest.raises(ConfigError) as info:
        load_stage_config("mvp", config)
    assert "memoryMb" in str(info.value) and "concurrency: Input should be less than or equal to 16" in str(info.value)


def test_unknown_stage_lists_known_ones():
    with pytest.raises(ConfigError, match=r"aistack:stage is 'staging'; known stages: mvp, partner, prod"):
        load_stage_config("staging", {})


def test_stack_naming_an_unknown_stage_is_refused():
    config = stack_config("prod", stage="qa")
    with pytest.raises(ConfigError) as info:
        load_stage_config("prod-eu", config)
    assert str(info.value) == ("Pulumi.prod-eu.yaml: aistack:stage is 'qa'; known stages: mvp, partner, prod (set "
                               "aistack:stage or name the stack after its stage)")


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_is_built(stage):
    assert stage in STAGE_CONFIGS and stage in PROGRAMS
    assert isinstance(load_stage_config(stage, stack_config(stage)), STAGE_CONFIGS[stage])


# --- release.images: every stage's flavour of the image ---------------------------------------------------

FLAVOURS = {"mvp": "sha256:" + "1a" * 32, "partner": "sha256:" + "2b" * 32, "prod": "sha256:" + "3c" * 32}


def _release(stage: str, **changes: object) -> dict[str, object]:
    release = json.loads(stack_config(stage)["aistack:release"])
    return {**release, "imageDigest": FLAVOURS[stage], "images": FLAVOURS, **changes}


@pytest.mark.parametrize("stage", STAGES)
def test_a_release_with_every_flavour_runs_the_stages_own(stage):
    cfg = load_stage_config(stage, stack_config(stage, release=_release(stage)))
    assert cfg.release.image_digest == FLAVOURS[stage]
    assert cfg.release.images == FLAVOURS


def test_a_release_without_flavours_still_loads():
    release = json.loads(stack_config("partner")["aistack:release"])
    assert "images" not in release
    assert load_stage_config("partner", stack_config("partner")).release.images is None


@pytest.mark.parametrize("stage", STAGES)
def test_another_stages_flavour_is_refused(stage):
    other = "prod" if stage != "prod" else "mvp"
    with pytest.raises(ConfigError) as info:
        load_stage_config(stage, stack_config(stage, release=_release(stage, imageDigest=FLAVOURS[other])))
    assert (f"  aistack:release: release.imageDigest {FLAVOURS[other]} is not release.images.{stage} "
            f"{FLAVOURS[stage]}: the {stage} stack runs its own stage's flavour of the image") in str(info.value)
    assert str(info.value).startswith(f"Pulumi.{stage}.yaml: invalid stack configuration:\n")


def test_a_mapping_without_the_stages_flavour_is_refused():
    images = {k: v for k, v in FLAVOURS.items() if k != "partner"}
    with pytest.raises(ConfigError, match=r"aistack:release: release.images has no partner flavour \(it lists mvp, "
                                          r"prod\): record the digest the build job pushed as image-partner.digest"):
        load_stage_config("partner", stack_config("partner", release=_release("partner", images=images)))


def test_a_malformed_flavour_digest_names_its_key():
    images = {**FLAVOURS, "prod": "sha256:latest"}
    with pytest.raises(ConfigError) as info:
        load_stage_config("mvp", stack_config("mvp", release=_release("mvp", images=images)))
    assert ("  aistack:release.images.prod: image digest 'sha256:latest' is invalid: expected 'sha256:' followed by "
            "64 lowercase hex characters") in str(info.value)


def test_a_flavour_of_an_unknown_stage_is_refused():
    with pytest.raises(ConfigError, match=r"aistack:release.images: 'staging' is not a stage: the keys are the "
                                          r"stages \(mvp, partner, prod\)"):
        load_stage_config("mvp", stack_config("mvp", release=_release("mvp", images={**FLAVOURS,
                                                                                     "staging": FLAVOURS["mvp"]})))


def test_a_stack_named_otherwise_runs_its_stages_flavour():
    config = stack_config("prod", stage="prod", release=_release("prod"))
    assert load_stage_config("prod-eu", config).release.image_digest == FLAVOURS["prod"]
