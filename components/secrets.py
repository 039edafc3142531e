"""Application secrets kept in Lockbox: values come from Pulumi secrets, readers are named.

A generated secret (:class:`GeneratedSecret`) is a password made by ``pulumi_random``
(:func:`random_password`: a Pulumi secret in state, never in outputs or the plan) kept under one
entry: the database users' and Grafana's admin passwords.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_random

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


def random_password(name: str, opts: pulumi.ResourceOptions, length: int = 32) -> pulumi_random.RandomPassword:
    """A generated password of letters and digits (nothing to quote in a DSN or a shell), two of each kind
    at least. ``opts`` parent it to the component that owns it: its name and parent make its URN, and a
    new URN would generate (rotate) the password."""
    return pulumi_random.RandomPassword(
        name,
        pulumi_random.RandomPasswordArgs(length=length, special=False, min_lower=2, min_upper=2, min_numeric=2),
        opts=opts,
    )


@dataclass(frozen=True)
class GeneratedSecretArgs:
    folder_id: str
    description: str
    #: The entry key the password is kept under (the variable its readers set from it).
    entry: str
    #: Service account ids that may read the password.
    readers: Sequence[pulumi.Input[str]] = field(default_factory=list)
    deletion_protection: bool = False


class GeneratedSecret(SecretStore):
    """A :func:`random_password` kept in Lockbox under ``args.entry``.

    The owner makes the password (``random_password(name, owner.child())``) before what uses it, a
    user or a cluster, and hands it in here. This is a ``SecretStore`` (same type, child names and
    parents), so its URNs are a plain store's.
    """

    def __init__(self, name: str, password: pulumi_random.RandomPassword, args: GeneratedSecretArgs,
                 labels: dict[str, str], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(name, SecretStoreArgs(folder_id=args.folder_id, description=args.description,
                                               entries={args.entry: password.result}, readers=list(args.readers),
                                               deletion_protection=args.deletion_protection),
                         labels, opts)
        self.password = password
