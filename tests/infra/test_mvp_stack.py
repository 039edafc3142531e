"""The mvp program as a whole: labels, least privilege, secrets, outputs."""

from __future__ import annotations

import inspect
import json

import pytest

from components.yc import yandex
from stagectl.plan import PlanError
from tests.infra.conftest import stack_config

REQUIRED_LABELS = {"project", "stage", "component"}


def labelled_field(resource_type: str) -> str | None:
    """``labels`` or ``tags`` if the provider resource takes them, else None."""
    args_class = getattr(yandex, resource_type.rpartition(":")[2] + "Args")
    params = inspect.signature(args_class.__init__).parameters
    return next((name for name in ("labels", "tags") if name in params), None)


def test_every_labellable_resource_is_labelled(run_stack):
    rec = run_stack("mvp", stack_config())
    checked = 0
    for resource in rec.plan.resources:
        if not resource.custom:
            continue
        field = labelled_field(resource.type)
        if field is None:
            continue
        labels = resource.inputs.get(field)
        assert labels is not None, f"{resource.name} has no {field}"
        assert set(labels) >= REQUIRED_LABELS, f"{resource.name}: {labels}"
        assert labels["project"] == "aistack" and labels["stage"] == "mvp"
        assert labels["team"] == "ml-platform"
        checked += 1
    assert checked >= 7


def test_workload_roles_are_minimal(run_stack):
    rec = run_stack("mvp", stack_config())
    folder_roles = [r.inputs["role"] for r in rec.of_type("ResourcemanagerFolderIamMember")]
    assert folder_roles == ["logging.writer"]
    scoped = sorted(r.inputs["role"] for kind in ("KmsSymmetricKeyIamMember", "LockboxSecretIamMember",
                                                   "ContainerRegistryIamBinding") for r in rec.of_type(kind))
    assert scoped == ["container-registry.images.puller", "kms.keys.encrypterDecrypter", "lockbox.payloadViewer"]


def test_container_reads_the_pinned_model_and_writes_the_log_prefix(run_stack):
    config = stack_config()
    rec = run_stack("mvp", config)
    pins = json.loads(config["aistack:release"])
    env = rec.one("ServerlessContainer").inputs["image"]["environment"]
    bucket = rec.one("StorageBucket").inputs["bucket"]
    assert env["MODEL_URI"] == f"s3://{bucket}/models/digits/{pins['modelSha256']}/model.onnx"
    assert env["MODEL_SHA256"] == pins["modelSha256"]
    assert env["STORE"] == "s3" and env["STORE_S3_URI"] == f"s3://{bucket}/predictions/"
    assert env["S3_ENDPOINT_URL"] == "https://storage.yandexcloud.net" and env["AWS_REGION"] == "ru-central1"
    secrets = {s["environmentVariable"] for s in rec.one("ServerlessContainer").inputs["secrets"]}
    assert secrets == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert set(rec.plan.outputs) == {"invoke_url", "bucket_name", "registry_id", "image_repository", "model_uri"}


def _grants_a_revision_needs(rec) -> dict[str, str]:
    """The IAM bindings of the container's account: image pull, each Lockbox secret's payloadViewer,
    the folder's logging.writer (what Yandex checks when it deploys a revision)."""
    account = rec.one("IamServiceAccount").name
    member = f"serviceAccount:({account}.id)"
    wanted = {}
    for resource in rec.plan.resources:
        inputs = resource.inputs
        binding = resource.type.endswith(":ContainerRegistryIamBinding") and member in inputs.get("members", [])
        grant = resource.type.endswith((":LockboxSecretIamMember", ":ResourcemanagerFolderIamMember")) \
            and inputs.get("member") == member
        if binding or grant:
            wanted[resource.urn] = inputs["role"]
    return wanted


@pytest.mark.parametrize("require_api_key", [False, True])
def test_the_container_waits_for_every_grant_its_revision_needs(run_stack, require_api_key):
    """The provider turns a revision that fails for want of a grant into a warning only: the container
    must be created after the pull, payloadViewer and logging.writer bindings exist."""
    config = stack_config(serverless={"requireApiKey": require_api_key})
    secret_keys = []
    if require_api_key:
        config["aistack:apiKey"] = "k3y-value"
        secret_keys = ["aistack:apiKey"]
    rec = run_stack("mvp", config, secret_keys=secret_keys)
    grants = _grants_a_revision_needs(rec)
    roles = sorted(grants.values())
    assert roles == sorted(["container-registry.images.puller", "logging.writer", "lockbox.payloadViewer"]
                           + (["lockbox.payloadViewer"] if require_api_key else []))
    container = rec.one("ServerlessContainer")
    missing = {urn: role for urn, role in grants.items() if urn not in container.dependencies}
    assert not missing, f"the container does not wait for {missing}"


def test_private_stage_has_no_public_invoker(run_stack):
    rec = run_stack("mvp", stack_config(serverless={"public": False}))
    assert rec.of_type("ServerlessContainerIamBinding") == []


def test_api_key_secret_is_redacted_everywhere(run_stack):
    plaintext = "s3cr3t-api-key-value"
    config = stack_config(serverless={"requireApiKey": True})
    config["aistack:apiKey"] = plaintext
    rec = run_stack("mvp", config, secret_keys=["aistack:apiKey"])
    version = rec.one("LockboxSecretVersion").inputs
    # Pulumi marks the whole entries list secret once one value in it is.
    assert version["entries"] == "[secret]"
    assert plaintext not in rec.json()
    env_secrets = {s["environmentVariable"] for s in rec.one("ServerlessContainer").inputs["secrets"]}
    assert "API_KEY" in env_secrets


def test_api_key_required_but_unset_is_a_clear_error(run_stack):
    with pytest.raises(PlanError, match=r"requireApiKey is true but aistack:apiKey is not set: run `pulumi "
                                        r"config set --secret apiKey"):
        run_stack("mvp", stack_config(serverless={"requireApiKey": True}))


def test_invalid_memory_fails_before_any_resource(run_stack):
    with pytest.raises(PlanError, match="memoryMb: memory 1000 MB is invalid"):
        run_stack("mvp", stack_config(serverless={"memoryMb": 1000}))


def test_secret_key_in_plain_text_is_refused(run_stack):
    config = stack_config(serverless={"requireApiKey": True})
    config["aistack:apiKey"] = "plain"
    with pytest.raises(PlanError, match=r"aistack:apiKey holds a secret but is stored in plain text: remove it and "
                                        r"run `pulumi config set --secret apiKey <value> --stack mvp`"):
        run_stack("mvp", config)
