"""Deterministic YAML text for generated files: keys in the order given, multi-line strings as blocks."""

from __future__ import annotations

from typing import Any

import yaml


class _BlockDumper(yaml.SafeDumper):
    """A safe dumper that writes multi-line strings as literal blocks (``|``) and never uses aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_str)


def dump_yaml(document: Any) -> str:
    """YAML text of ``document``: same input, same bytes."""
    text: str = yaml.dump(document, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False, width=1000,
                          allow_unicode=True)
    return text
