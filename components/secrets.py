"""Application secrets kept in Lockbox: values come from Pulumi secrets, readers are named."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi

from components.base import StageComponent, ValidationError
from components.yc import yandex


@dataclass(frozen=True)
class SecretStoreArgs:
    folder_id: str
    description: str
    #: Entry key -> value. Values must be Pulumi secrets (``Config.require_secret``, ``random``).
    entries: Mapping[str, pulumi.Input[str]]
    #: Service account ids that may read the payload.
    readers: Sequence[pulumi.Input[str]] = field(default_factory=list)
    deletion_protection: bool = False

    def __post_init__(self) -> None:
        if not self.entries:
            raise ValidationError("a Lockbox secret needs at least one entry")


class SecretStore(StageComponent):
    component = "secrets"

    def __init__(self, name: str, args: SecretStoreArgs, labels: dict[str, str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("secrets:SecretStore", name, labels, opts)
        self.secret = yandex.LockboxSecret(
            self.child_name("secret"),
            yandex.LockboxSecretArgs(folder_id=args.folder_id, name=name, description=args.description,
                                     deletion_protection=args.deletion_protection, labels=self.labels),
            opts=self.child(),
        )
        self.version = yandex.LockboxSecretVersion(
            self.child_name("version"),
            yandex.LockboxSecretVersionArgs(
                secret_id=self.secret.id,
                entries=[
                    yandex.LockboxSecretVersionEntryArgs(key=key, text_value=pulumi.Output.secret(value))
                    for key, value in args.entries.items()
                ],
            ),
            opts=self.child(),
        )
        #: The readers' payloadViewer bindings (a workload reading the secret waits for them).
        self.grants: list[pulumi.Resource] = []
        for index, reader in enumerate(args.readers):
            self.grants.append(yandex.LockboxSecretIamMember(
                self.child_name(f"reader-{index}"),
                yandex.LockboxSecretIamMemberArgs(
                    secret_id=self.secret.id, role="lockbox.payloadViewer",
                    member=pulumi.Output.from_input(reader).apply(lambda i: f"serviceAccount:{i}")),
                opts=self.child(),
            ))
        self.secret_id: pulumi.Output[str] = self.secret.id
        self.version_id: pulumi.Output[str] = self.version.id
        self.register_outputs({"secret_id": self.secret_id, "version_id": self.version_id})
