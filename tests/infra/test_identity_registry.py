"""Workload identity and registry: minimal roles, the static key only in Lockbox."""

from __future__ import annotations

import pytest

from components.base import ValidationError
from components.identity import WorkloadIdentity, WorkloadIdentityArgs
from components.registry import ImageRegistry, ImageRegistryArgs

LABELS = {"project": "aistack", "stage": "mvp"}


def test_static_key_goes_to_lockbox_and_never_to_outputs(run_component):
    def program() -> None:
        WorkloadIdentity("w", WorkloadIdentityArgs(folder_id="f", description="d",
                                                   folder_roles=["logging.writer"], static_key=True), LABELS)

    rec = run_component(program)
    key = rec.one("IamServiceAccountStaticAccessKey").inputs
    assert key["outputToLockbox"] == {"secretId": "(w-s3-key.id)", "entryForAccessKey": "AWS_ACCESS_KEY_ID",
                                      "entryForSecretKey": "AWS_SECRET_ACCESS_KEY"}
    assert "pgpKey" not in key
    roles = [r.inputs["role"] for r in rec.of_type("ResourcemanagerFolderIamMember")]
    assert roles == ["logging.writer"]
    reader = rec.one("LockboxSecretIamMember").inputs
    assert reader == {"secretId": "(w-s3-key.id)", "role": "lockbox.payloadViewer",
                      "member": "serviceAccount:(w-sa.id)"}
    component = next(r for r in rec.plan.resources if r.type == "aistack:identity:WorkloadIdentity")
    assert not component.custom


@pytest.mark.parametrize("role", ["editor", "admin", "storage.admin", "resource-manager.clouds.owner"])
def test_broad_folder_roles_are_refused(role):
    with pytest.raises(ValidationError, match=f"folder role '{role}' is not allowed .* Grant access on the resource"):
        WorkloadIdentityArgs(folder_id="f", description="d", folder_roles=[role])


def test_registry_grants_pull_only_to_the_workloads(run_component):
    rec = run_component(lambda: ImageRegistry("img", ImageRegistryArgs(folder_id="f", pullers=["sa-1", "sa-2"]),
                                              LABELS))
    binding = rec.one("ContainerRegistryIamBinding").inputs
    assert binding["role"] == "container-registry.images.puller"
    assert binding["members"] == ["serviceAccount:sa-1", "serviceAccount:sa-2"]
    assert rec.one("ContainerRegistry").inputs["labels"]["component"] == "registry"
