"""A stack's ``Pulumi.<stack>.yaml`` read as the engine passes it to the program, and the check
that its secrets are stored encrypted."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

#: What a value stored encrypted (``secure:``) reads as: it cannot be decrypted offline.
SECRET = "[secret]"

_SECRETISH = re.compile(r"(password|secret|token|apikey|api_key|privatekey)", re.I)


class StackConfigError(Exception):
    """The stack has no ``Pulumi.<stack>.yaml``."""


def known_stacks(root: Path) -> list[str]:
    return sorted(p.name[len("Pulumi."):-len(".yaml")] for p in root.glob("Pulumi.*.yaml"))


def load_stack_config(root: Path, stack: str) -> tuple[str, dict[str, str], list[str]]:
    """Project name, the flat config map as the engine passes it, and the secret keys."""
    project = yaml.safe_load((root / "Pulumi.yaml").read_text())["name"]
    stack_file = root / f"Pulumi.{stack}.yaml"
    if not stack_file.is_file():
        raise StackConfigError(f"unknown stack {stack!r}: no {stack_file.name}; known stacks: "
                               f"{', '.join(known_stacks(root)) or 'none'}")
    document = yaml.safe_load(stack_file.read_text()) or {}
    config: dict[str, str] = {}
    secret_keys: list[str] = []
    for key, value in (document.get("config") or {}).items():
        full = key if ":" in key else f"{project}:{key}"
        if isinstance(value, dict) and set(value) == {"secure"}:
            config[full] = SECRET
            secret_keys.append(full)
        elif isinstance(value, str):
            config[full] = value
        else:
            config[full] = json.dumps(value)
    return project, config, secret_keys


def plain_secret_keys(config: Mapping[str, str], secret_keys: Sequence[str]) -> tuple[str, ...]:
    """Config keys that hold a secret (by declaration or by name) but are not stored encrypted."""
    # Imported here: stacks.config loads every component and the provider SDK, which reading a
    # stack file (the loader above, run by every stagectl command) does not need.
    from stacks.config import PROJECT, SECRET_KEYS

    found = []
    for key in config:
        namespace, _, name = key.partition(":")
        declared = namespace == PROJECT and name in SECRET_KEYS
        if (declared or _SECRETISH.search(name)) and key not in secret_keys:
            found.append(key)
    return tuple(sorted(found))
