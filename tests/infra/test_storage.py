"""ModelStore under the mock runtime: private, encrypted, versioned, model keyed by sha256."""

from __future__ import annotations

import re

import pytest

from components.base import ValidationError
from components.storage import ModelStore, ModelStoreArgs
from stagectl.plan import PlanError

LABELS = {"project": "aistack", "stage": "mvp"}


def make(model_dir: str, sha: str, **kw: object) -> ModelStore:
    args = ModelStoreArgs(folder_id="b1gfolder", bucket_name="aistack-mvp-test", model_name="digits",
                          model_sha256=sha, model_dir=model_dir, **kw)  # type: ignore[arg-type]
    return ModelStore("data", args, LABELS)


def test_bucket_is_private_encrypted_and_versioned(run_component, model_dir):
    directory, sha = model_dir
    rec = run_component(lambda: make(str(directory), sha, writers=["sa-1"]))
    bucket = rec.one("StorageBucket").inputs
    assert bucket["anonymousAccessFlags"] == {"read": False, "list": False, "configRead": False}
    assert "acl" not in bucket and "policy" not in bucket and "website" not in bucket
    assert bucket["grants"] == [{"type": "CanonicalUser", "id": "sa-1", "permissions": ["READ", "WRITE"]}]
    sse = bucket["serverSideEncryptionConfiguration"]["rule"]["applyServerSideEncryptionByDefault"]
    assert sse == {"sseAlgorithm": "aws:kms", "kmsMasterKeyId": "(data-kms.id)"}
    assert bucket["versioning"] == {"enabled": True}
    key = rec.one("KmsSymmetricKey").inputs
    assert key["rotationPeriod"] == "8760h" and key["deletionProtection"] is True
    member = rec.one("KmsSymmetricKeyIamMember").inputs
    assert member == {"symmetricKeyId": "(data-kms.id)", "role": "kms.keys.encrypterDecrypter",
                      "member": "serviceAccount:sa-1"}


def test_lifecycle_expires_prediction_logs_and_old_versions(run_component, model_dir):
    directory, sha = model_dir
    rec = run_component(lambda: make(str(directory), sha, log_retention_days=90, log_cold_after_days=7))
    rules = {r["id"]: r for r in rec.one("StorageBucket").inputs["lifecycleRules"]}
    logs = rules["prediction-logs"]
    assert logs["filter"] == {"prefix": "predictions/"}
    assert logs["expiration"] == {"days": 90}
    assert logs["transitions"] == [{"days": 7, "storageClass": "COLD"}]
    assert rules["noncurrent-versions"]["noncurrentVersionExpiration"] == {"days": 30}


def test_model_object_key_contains_sha256(run_component, model_dir):
    directory, sha = model_dir
    rec = run_component(lambda: make(str(directory), sha))
    objects = {r.name: r.inputs for r in rec.of_type("StorageObject")}
    assert objects["data-model"]["key"] == f"models/digits/{sha}/model.onnx"
    assert objects["data-model"]["sourceHash"] == sha
    assert objects["data-model-card"]["key"] == f"models/digits/{sha}/card.json"


def test_mismatching_model_file_is_refused_on_up_and_flagged_in_preview(run_component, model_dir):
    directory, _ = model_dir
    wrong = "a" * 64
    message = r"has sha256 [0-9a-f]{64} but the stack pins release.modelSha256 a{64}"
    with pytest.raises(PlanError, match=message):
        run_component(lambda: make(str(directory), wrong), preview=False)
    rec = run_component(lambda: make(str(directory), wrong))
    assert any(re.search(message, w) for w in rec.plan.warnings)


def test_matching_model_file_deploys_without_warning(run_component, model_dir):
    directory, sha = model_dir
    rec = run_component(lambda: make(str(directory), sha), preview=False)
    assert rec.plan.warnings == []


def test_missing_model_file_warns_in_preview_and_fails_on_up(run_component, tmp_path):
    rec = run_component(lambda: make(str(tmp_path), "b" * 64))
    assert any("does not exist: run `stagectl model build`" in w for w in rec.plan.warnings)
    with pytest.raises(PlanError, match="does not exist"):
        run_component(lambda: make(str(tmp_path), "b" * 64), preview=False)


@pytest.mark.parametrize(("kw", "message"), [
    ({"bucket_name": "Bad_Name"}, "bucket name 'Bad_Name' is invalid"),
    ({"model_sha256": "abc"}, "'abc' is not a sha256 digest"),
    ({"log_prefix": "/logs"}, "log_prefix '/logs' must end with '/'"),
    ({"log_prefix": "models/x/"}, "must not contain one another"),
    ({"log_retention_days": 10, "log_cold_after_days": 30}, "must be below log_retention_days"),
])
def test_invalid_arguments_are_refused_with_a_reason(kw, message):
    base = {"folder_id": "f", "bucket_name": "ok-bucket", "model_name": "digits", "model_sha256": "c" * 64,
            "model_dir": "."}
    with pytest.raises(ValidationError, match=message):
        ModelStoreArgs(**{**base, **kw})  # type: ignore[arg-type]
