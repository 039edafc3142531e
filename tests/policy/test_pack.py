"""The pulumi-policy pack runs the same rules (validate called directly; no PolicyPack server)."""

from __future__ import annotations

from pulumi_policy import PolicyCustomTimeouts, PolicyResourceOptions, ResourceValidationArgs, ResourceValidationPolicy

from policy.guardrails import RULES
from policy.pack import policies, stack_of

URN = "urn:pulumi:mvp::aistack::aistack:storage:ModelStore$yandex:index/storageBucket:StorageBucket::mvp-data-bucket"


def args(props: dict) -> ResourceValidationArgs:
    opts = PolicyResourceOptions(protect=False, ignore_changes=[], delete_before_replace=False, aliases=[],
                                 custom_timeouts=PolicyCustomTimeouts(0, 0, 0), additional_secret_outputs=[])
    return ResourceValidationArgs("yandex:index/storageBucket:StorageBucket", props, URN, "mvp-data-bucket",
                                  opts, None)


def policy(name: str) -> ResourceValidationPolicy:
    found = [p for p in policies() if p.name == name and isinstance(p, ResourceValidationPolicy)]
    assert len(found) == 1
    return found[0]


def test_every_rule_is_in_the_pack():
    assert {p.name for p in policies()} == {rule.name for rule in RULES}


def test_stack_is_read_from_the_urn():
    assert stack_of(URN) == "mvp"


def test_public_bucket_is_reported_through_the_pack():
    reported: list[tuple[str, str | None]] = []
    public = {"anonymousAccessFlags": {"read": True, "list": False, "configRead": False}}
    policy("bucket-not-public").validate(args(public), lambda message, urn=None: reported.append((message, urn)))
    assert reported == [("bucket mvp-data-bucket allows anonymous read: set anonymousAccessFlags.read to false", URN)]

    reported.clear()
    private = {"anonymousAccessFlags": {"read": False, "list": False, "configRead": False}}
    policy("bucket-not-public").validate(args(private), lambda message, urn=None: reported.append((message, urn)))
    assert reported == []
