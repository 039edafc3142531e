"""What every component shares: naming, labels and child options."""

from __future__ import annotations

import re
from collections.abc import Mapping

import pulumi

#: Resource type prefix of this project's components (``aistack:<module>:<Class>``).
TYPE_PREFIX = "aistack"

_LABEL_KEY = re.compile(r"^[a-z][-_./\\@0-9a-z]{0,62}$")
_LABEL_VALUE = re.compile(r"^[-_./\\@0-9a-z]{0,63}$")


class ValidationError(ValueError):
    """A setting violates a Yandex Cloud limit; the message says what to change."""


def check_labels(labels: Mapping[str, str], where: str) -> dict[str, str]:
    """Validate labels against Yandex Cloud's rules and return a plain copy."""
    if len(labels) > 64:
        raise ValidationError(f"{where}: at most 64 labels are allowed, got {len(labels)}")
    for key, value in labels.items():
        if not _LABEL_KEY.match(key):
            raise ValidationError(
                f"{where}: label key {key!r} is invalid: use 1-63 lowercase letters, digits or -_./\\@, "
                "starting with a letter"
            )
        if not _LABEL_VALUE.match(str(value)):
            raise ValidationError(
                f"{where}: label {key}={value!r} is invalid: values are up to 63 lowercase letters, "
                "digits or -_./\\@"
            )
    return dict(labels)


class StageComponent(pulumi.ComponentResource):
    """A component that labels its children with ``project``, ``stage`` and ``component``.

    ``labels`` passed in carry ``project`` and ``stage`` (and any user labels); the component
    adds its own ``component`` label.
    """

    component: str = "component"

    def __init__(
        self,
        type_name: str,
        name: str,
        labels: Mapping[str, str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(f"{TYPE_PREFIX}:{type_name}", name, None, opts)
        self.resource_name = name
        self.labels: dict[str, str] = check_labels({**labels, "component": self.component}, name)

    def child(self, **extra: object) -> pulumi.ResourceOptions:
        """Options for a child resource: parented to this component."""
        return pulumi.ResourceOptions(parent=self, **extra)  # type: ignore[arg-type]

    def child_name(self, suffix: str) -> str:
        return f"{self.resource_name}-{suffix}"
