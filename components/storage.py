"""Model and data store: a private, KMS-encrypted, versioned Object Storage bucket.

Holds the published model (keyed by its sha256, so a pin names exactly one file) and the
prediction log objects the service writes. Access is granted per workload service account
through bucket grants (additive, bucket-scoped); nothing is readable anonymously.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pulumi

from components.base import StageComponent, ValidationError
from components.yc import yandex

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
STORAGE_CLASSES = ("STANDARD", "COLD", "ICE")


def check_bucket_name(name: str) -> None:
    if not _BUCKET_NAME.match(name) or ".." in name:
        raise ValidationError(
            f"bucket name {name!r} is invalid: use 3-63 lowercase letters, digits, '-' or '.', "
            "starting and ending with a letter or digit"
        )


def check_sha256(value: str) -> None:
    if not _SHA256.match(value):
        raise ValidationError(f"{value!r} is not a sha256 digest: expected 64 lowercase hex characters")


def model_object_key(model_prefix: str, model_name: str, sha256: str, filename: str = "model.onnx") -> str:
    """The object key of a published model file: the sha256 is part of the key."""
    return f"{model_prefix}{model_name}/{sha256}/{filename}"


def _file_sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def verify_model_file(path: Path, sha256: str, strict: bool) -> None:
    """Refuse to publish a model file that is not the pinned one.

    A missing or different file is an error when deploying (``strict``) and a warning in a
    preview, so the offline plan works before the model is built and shows what a deploy would refuse.
    """
    if not path.is_file():
        message = (f"model file {path} does not exist: run `stagectl model build` "
                   "(or point model.dir at your model) before deploying")
        if strict:
            raise ValidationError(message)
        pulumi.log.warn(message)
        return
    actual = _file_sha256(path)
    if actual != sha256:
        message = (f"model file {path} has sha256 {actual} but the stack pins release.modelSha256 {sha256}: "
                   "pin the file you mean to ship (its card.json gives its sha256)")
        if strict:
            raise ValidationError(message)
        pulumi.log.warn(message)


#: The bucket's properties the provider replaces it for (a new, empty bucket), v0.136.0 ForceNew.
FORCE_NEW = ("bucket", "bucketPrefix", "folderId")


@dataclass(frozen=True)
class ModelStoreArgs:
    folder_id: str
    bucket_name: str
    model_name: str
    model_sha256: str
    #: Local directory holding ``model.onnx`` and ``card.json`` (what ``stagectl model build`` writes).
    model_dir: str
    model_prefix: str = "models/"
    log_prefix: str = "predictions/"
    log_retention_days: int = 365
    log_cold_after_days: int | None = 30
    noncurrent_version_days: int = 30
    max_size_gb: int | None = None
    force_destroy: bool = False
    kms_deletion_protection: bool = True
    #: Service accounts that read the bucket (models) and write prediction logs.
    readers: Sequence[pulumi.Input[str]] = field(default_factory=list)
    writers: Sequence[pulumi.Input[str]] = field(default_factory=list)
    #: Local TensorFlow SavedModel versions (``<dir>/<version>/saved_model.pb``, what TF Serving
    #: reads) to upload below the model's key as ``tf/<version>/...``; None: not served by TF.
    saved_model_dir: str | None = None

    def __post_init__(self) -> None:
        check_bucket_name(self.bucket_name)
        check_sha256(self.model_sha256)
        for name, prefix in (("model_prefix", self.model_prefix), ("log_prefix", self.log_prefix)):
            if not prefix.endswith("/") or prefix.startswith("/"):
                raise ValidationError(f"{name} {prefix!r} must end with '/' and not start with '/'")
        if self.model_prefix.startswith(self.log_prefix) or self.log_prefix.startswith(self.model_prefix):
            raise ValidationError("model_prefix and log_prefix must not contain one another")
        if self.log_cold_after_days is not None and self.log_cold_after_days >= self.log_retention_days:
            raise ValidationError(
                f"log_cold_after_days ({self.log_cold_after_days}) must be below "
                f"log_retention_days ({self.log_retention_days})"
            )
        for name, days in (
            ("log_retention_days", self.log_retention_days),
            ("noncurrent_version_days", self.noncurrent_version_days),
        ):
            if days < 1:
                raise ValidationError(f"{name} must be at least 1 day, got {days}")


class ModelStore(StageComponent):
    """Bucket + KMS key + the published model objects."""

    component = "storage"

    def __init__(self, name: str, args: ModelStoreArgs, labels: dict[str, str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("storage:ModelStore", name, labels, opts)

        self.kms_key = yandex.KmsSymmetricKey(
            self.child_name("kms"),
            yandex.KmsSymmetricKeyArgs(
                folder_id=args.folder_id,
                name=self.child_name("kms"),
                description="Server-side encryption of the model and prediction-log bucket",
                default_algorithm="AES_256",
                rotation_period="8760h",
                deletion_protection=args.kms_deletion_protection,
                labels=self.labels,
            ),
            opts=self.child(),
        )

        accounts = list(args.readers) + list(args.writers)
        for index, account in enumerate(accounts):
            yandex.KmsSymmetricKeyIamMember(
                self.child_name(f"kms-user-{index}"),
                yandex.KmsSymmetricKeyIamMemberArgs(
                    symmetric_key_id=self.kms_key.id,
                    role="kms.keys.encrypterDecrypter",
                    member=pulumi.Output.from_input(account).apply(lambda i: f"serviceAccount:{i}"),
                ),
                opts=self.child(),
            )

        grants = [
            yandex.StorageBucketGrantArgs(type="CanonicalUser", id=account, permissions=["READ"])
            for account in args.readers
        ] + [
            yandex.StorageBucketGrantArgs(type="CanonicalUser", id=account, permissions=["READ", "WRITE"])
            for account in args.writers
        ]

        lifecycle = [
            yandex.StorageBucketLifecycleRuleArgs(
                id="prediction-logs",
                enabled=True,
                filter=yandex.StorageBucketLifecycleRuleFilterArgs(prefix=args.log_prefix),
                transitions=(
                    [yandex.StorageBucketLifecycleRuleTransitionArgs(
                        days=args.log_cold_after_days, storage_class="COLD")]
                    if args.log_cold_after_days is not None else None
                ),
                expiration=yandex.StorageBucketLifecycleRuleExpirationArgs(days=args.log_retention_days),
            ),
            yandex.StorageBucketLifecycleRuleArgs(
                id="noncurrent-versions",
                enabled=True,
                noncurrent_version_expiration=yandex.StorageBucketLifecycleRuleNoncurrentVersionExpirationArgs(
                    days=args.noncurrent_version_days),
                abort_incomplete_multipart_upload_days=7,
            ),
        ]

        self.bucket = yandex.StorageBucket(
            self.child_name("bucket"),
            yandex.StorageBucketArgs(
                bucket=args.bucket_name,
                folder_id=args.folder_id,
                anonymous_access_flags=yandex.StorageBucketAnonymousAccessFlagsArgs(
                    read=False, list=False, config_read=False),
                grants=grants or None,
                versioning=yandex.StorageBucketVersioningArgs(enabled=True),
                server_side_encryption_configuration=yandex.StorageBucketServerSideEncryptionConfigurationArgs(
                    rule=yandex.StorageBucketServerSideEncryptionConfigurationRuleArgs(
                        apply_server_side_encryption_by_default=yandex.StorageBucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                            kms_master_key_id=self.kms_key.id,
                            sse_algorithm="aws:kms",
                        ),
                    ),
                ),
                lifecycle_rules=lifecycle,
                max_size=args.max_size_gb * 1024**3 if args.max_size_gb else None,
                force_destroy=args.force_destroy,
                tags=self.labels,
            ),
            opts=self.child(),
        )

        model_dir = Path(args.model_dir)
        verify_model_file(model_dir / "model.onnx", args.model_sha256, strict=not pulumi.runtime.is_dry_run())
        self.model_key = model_object_key(args.model_prefix, args.model_name, args.model_sha256)
        self.card_key = model_object_key(args.model_prefix, args.model_name, args.model_sha256, "card.json")
        self.model_object = yandex.StorageObject(
            self.child_name("model"),
            yandex.StorageObjectArgs(
                bucket=self.bucket.bucket,
                key=self.model_key,
                source=str(model_dir / "model.onnx"),
                source_hash=args.model_sha256,
                content_type="application/octet-stream",
                tags=self.labels,
            ),
            opts=self.child(),
        )
        self.card_object = yandex.StorageObject(
            self.child_name("model-card"),
            yandex.StorageObjectArgs(
                bucket=self.bucket.bucket,
                key=self.card_key,
                source=str(model_dir / "card.json"),
                source_hash=_file_sha256(model_dir / "card.json"),
                content_type="application/json",
                tags=self.labels,
            ),
            opts=self.child(),
        )

        self.saved_model_objects = self._saved_model(args) if args.saved_model_dir else []

        self.bucket_name: pulumi.Output[str] = self.bucket.bucket
        self.model_uri: pulumi.Output[str] = pulumi.Output.concat("s3://", self.bucket.bucket, "/", self.model_key)
        self.log_uri: pulumi.Output[str] = pulumi.Output.concat("s3://", self.bucket.bucket, "/", args.log_prefix)
        self.register_outputs({
            "bucket_name": self.bucket_name,
            "model_uri": self.model_uri,
            "log_uri": self.log_uri,
            "kms_key_id": self.kms_key.id,
        })

    def _saved_model(self, args: ModelStoreArgs) -> list[yandex.StorageObject]:
        """One object per file of every SavedModel version, keyed ``<model key>/tf/<version>/...``."""
        root = Path(str(args.saved_model_dir))
        versions = sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)) \
            if root.is_dir() else []
        versions = [v for v in versions if (v / "saved_model.pb").is_file()]
        if not versions:
            message = (f"no TensorFlow SavedModel under {root} (<version>/saved_model.pb): TF Serving would find no "
                       f"model; it is part of the release: `stagectl model export-tf --model-dir {root.parent}` "
                       "writes it from model.onnx")
            if not pulumi.runtime.is_dry_run():
                raise ValidationError(message)
            pulumi.log.warn(message)
            return []
        objects = []
        for version in versions:
            for path in sorted(p for p in version.rglob("*") if p.is_file()):
                relative = path.relative_to(root).as_posix()
                objects.append(yandex.StorageObject(
                    self.child_name(f"saved-model-{relative.replace('/', '-').replace('.', '-')}"),
                    yandex.StorageObjectArgs(
                        bucket=self.bucket.bucket,
                        key=model_object_key(args.model_prefix, args.model_name, args.model_sha256, f"tf/{relative}"),
                        source=str(path),
                        source_hash=_file_sha256(path),
                        content_type="application/octet-stream",
                        tags=self.labels,
                    ),
                    opts=self.child(),
                ))
        return objects
