"""Workload identity: one service account per workload, only the roles it needs.

Scoped grants (a bucket, a registry, a KMS key, a Lockbox secret) are made by the component
that owns the resource; this component grants folder-level roles only for what has no narrower
scope (e.g. ``logging.writer``) and keeps the static access key in Lockbox, never in outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pulumi

from components.base import StageComponent, ValidationError
from components.yc import yandex

#: Folder roles a workload may hold. Anything broader (editor, admin, *.admin) is refused.
ALLOWED_FOLDER_ROLES = frozenset({
    "logging.writer",
    "monitoring.editor",
    "storage.viewer",
    "storage.uploader",
    "container-registry.images.puller",
    "lockbox.payloadViewer",
    "kms.keys.encrypterDecrypter",
    "k8s.clusters.agent",
    "vpc.publicAdmin",
    "load-balancer.admin",
    "k8s.tunnelClusters.agent",
    "compute.viewer",
})

#: Lockbox entry keys holding the static access key, named as the AWS SDKs read them.
ACCESS_KEY_ENTRY = "AWS_ACCESS_KEY_ID"
SECRET_KEY_ENTRY = "AWS_SECRET_ACCESS_KEY"


@dataclass(frozen=True)
class WorkloadIdentityArgs:
    folder_id: str
    description: str
    folder_roles: Sequence[str] = field(default_factory=list)
    #: Create an Object Storage static access key and keep it in a Lockbox secret.
    static_key: bool = False
    lockbox_deletion_protection: bool = False

    def __post_init__(self) -> None:
        for role in self.folder_roles:
            if role not in ALLOWED_FOLDER_ROLES:
                raise ValidationError(
                    f"folder role {role!r} is not allowed for a workload service account; "
                    f"allowed: {', '.join(sorted(ALLOWED_FOLDER_ROLES))}. Grant access on the resource instead."
                )


class WorkloadIdentity(StageComponent):
    """A service account, its folder roles and (optionally) its static key in Lockbox."""

    component = "identity"

    def __init__(self, name: str, args: WorkloadIdentityArgs, labels: dict[str, str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("identity:WorkloadIdentity", name, labels, opts)

        self.account = yandex.IamServiceAccount(
            self.child_name("sa"),
            yandex.IamServiceAccountArgs(
                folder_id=args.folder_id, name=self.child_name("sa"), description=args.description),
            opts=self.child(),
        )
        self.service_account_id: pulumi.Output[str] = self.account.id
        self.member: pulumi.Output[str] = self.account.id.apply(lambda i: f"serviceAccount:{i}")
        #: The account's role bindings (folder roles, its own secret's reader): what a workload
        #: that runs as it must wait for (``depends_on``), since a grant takes effect only once made.
        self.grants: list[pulumi.Resource] = []

        for role in args.folder_roles:
            self.grants.append(yandex.ResourcemanagerFolderIamMember(
                self.child_name(role.replace(".", "-")),
                yandex.ResourcemanagerFolderIamMemberArgs(folder_id=args.folder_id, role=role, member=self.member),
                opts=self.child(),
            ))

        self.secret_id: pulumi.Output[str] | None = None
        self.secret_version_id: pulumi.Output[str] | None = None
        if args.static_key:
            secret = yandex.LockboxSecret(
                self.child_name("s3-key"),
                yandex.LockboxSecretArgs(
                    folder_id=args.folder_id,
                    name=self.child_name("s3-key"),
                    description=f"Object Storage static access key of {self.child_name('sa')}",
                    deletion_protection=args.lockbox_deletion_protection,
                    labels=self.labels,
                ),
                opts=self.child(),
            )
            self.grants.append(yandex.LockboxSecretIamMember(
                self.child_name("s3-key-reader"),
                yandex.LockboxSecretIamMemberArgs(
                    secret_id=secret.id, role="lockbox.payloadViewer", member=self.member),
                opts=self.child(),
            ))
            key = yandex.IamServiceAccountStaticAccessKey(
                self.child_name("s3-key"),
                yandex.IamServiceAccountStaticAccessKeyArgs(
                    service_account_id=self.account.id,
                    description="Object Storage access of the workload; the secret part lives only in Lockbox",
                    output_to_lockbox=yandex.IamServiceAccountStaticAccessKeyOutputToLockboxArgs(
                        secret_id=secret.id,
                        entry_for_access_key=ACCESS_KEY_ENTRY,
                        entry_for_secret_key=SECRET_KEY_ENTRY,
                    ),
                ),
                opts=self.child(additional_secret_outputs=["secretKey", "accessKey", "encryptedSecretKey"]),
            )
            self.secret_id = secret.id
            self.secret_version_id = key.output_to_lockbox_version_id

        self.register_outputs({
            "service_account_id": self.service_account_id,
            "secret_id": self.secret_id,
        })
