"""Keeps the documents' generated blocks equal to what the code produces.

A block sits between ``<!-- generated:NAME -->`` and ``<!-- /generated -->``; ``stagectl docs``
rewrites every block of the files in :data:`DOCUMENTS`. The names:

- ``plan-<stack>``: the stack's resource graph as a mermaid diagram (``docs/stages.md``);
- ``service-env``: the inference service's environment variables, one row per field of
  :class:`service.settings.Settings` with its default and ``Field(description=...)``
  (``service/README.md``).
"""

from __future__ import annotations

import re
from pathlib import Path

from stagectl import render
from stagectl.plan import run_plan

#: the files ``stagectl docs`` keeps current, relative to the project root
DOCUMENTS = ("docs/stages.md", "service/README.md")

_BLOCK = re.compile(r"(<!-- generated:(?P<name>[a-z][a-z0-9-]*) -->\n)(.*?)(<!-- /generated -->)", re.S)


def diagram_block(stack: str, root: Path | None = None) -> str:
    return f"```mermaid\n{render.mermaid(run_plan(stack, root))}\n```\n"


def _default_text(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    else:
        text = str(value)
    return f"`{text}`"


def env_table() -> str:
    """The service's environment variables as a Markdown table, from its settings model.

    Each variable is the upper-cased field name, as :func:`service.settings.settings_from_env` reads it.
    """
    from service.settings import Settings

    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if not field.description:
            raise ValueError(f"service.settings.Settings.{name} has no Field(description=...)")
        meaning = field.description.replace("|", "\\|")
        rows.append(f"| `{name.upper()}` | {_default_text(field.default)} | {meaning} |")
    return "\n".join(rows) + "\n"


def render_block(name: str, root: Path | None = None) -> str:
    """What the block called ``name`` should hold."""
    if name.startswith("plan-"):
        return diagram_block(name.removeprefix("plan-"), root)
    if name == "service-env":
        return env_table()
    raise ValueError(f"unknown generated block {name!r} (known: plan-<stack>, service-env)")


def refresh(document: Path, root: Path | None = None) -> bool:
    """Rewrite every generated block of ``document``; return whether anything changed.

    ``root`` is the project the stage programs are planned from (default: this one).
    """
    text = document.read_text()
    new = _BLOCK.sub(lambda m: m.group(1) + render_block(m.group("name"), root) + m.group(4), text)
    if new != text:
        document.write_text(new)
    return new != text


def blocks(document: Path) -> dict[str, str]:
    """The generated blocks currently in ``document``, by name."""
    return {m.group("name"): m.group(3) for m in _BLOCK.finditer(document.read_text())}
