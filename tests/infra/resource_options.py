"""The resource options a program registers that the offline plan does not record.

``stagectl plan`` keeps each resource's inputs, dependencies and ``protect``; the engine also gets
``replaceOnChanges`` and ``deleteBeforeReplace`` in the same ``RegisterResource`` request. This
wraps the planner's recording monitor to keep them too, by resource name.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from stagectl import plan as plan_module


@dataclass(frozen=True)
class Registered:
    replace_on_changes: tuple[str, ...]
    delete_before_replace: bool


def record_options(monkeypatch: pytest.MonkeyPatch) -> dict[str, Registered]:
    """Start recording; the returned dict fills as resources register (resource name -> options)."""
    seen: dict[str, Registered] = {}
    original = plan_module._RecordingMonitor.RegisterResource

    def register(self: Any, request: Any) -> Any:
        seen[request.name] = Registered(tuple(request.replaceOnChanges), bool(request.deleteBeforeReplace))
        return original(self, request)

    monkeypatch.setattr(plan_module._RecordingMonitor, "RegisterResource", register)
    return seen


_STEP = re.compile(r'\.?([A-Za-z_][A-Za-z0-9_]*)|\["((?:[^"\\]|\\.)*)"\]|\[(\d+)\]')


def property_path(path: str) -> Iterator[str | int]:
    """The keys of a Pulumi property path (``root.nested``, ``root["key-with-dash"]``, ``root.list[0]``), as
    https://www.pulumi.com/docs/reference/property-paths/ defines them; an unparsable path fails."""
    position = 0
    while position < len(path):
        match = _STEP.match(path, position)
        assert match and (position > 0 or not path.startswith(".")), f"not a property path: {path!r} at {position}"
        name, quoted, index = match.groups()
        if index is not None:
            yield int(index)
        else:
            yield name if name is not None else re.sub(r"\\(.)", r"\1", quoted)
        position = match.end()


def lookup(inputs: dict[str, Any], path: str) -> Any:
    value: Any = inputs
    for key in property_path(path):
        assert isinstance(value, dict | list), f"{path}: {key!r} is inside a {type(value).__name__}"
        value = value[key]
    return value
