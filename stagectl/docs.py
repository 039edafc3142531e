"""Keeps README's generated sections (the stage diagrams) equal to what the code produces."""

from __future__ import annotations

import re
from pathlib import Path

from stagectl import render
from stagectl.plan import run_plan

_BLOCK = re.compile(r"(<!-- generated:plan-(?P<stack>[a-z]+) -->\n)(.*?)(<!-- /generated -->)", re.S)


def diagram_block(stack: str, root: Path | None = None) -> str:
    return f"```mermaid\n{render.mermaid(run_plan(stack, root))}\n```\n"


def refresh(readme: Path) -> bool:
    """Rewrite every generated block of ``readme``; return whether anything changed."""
    text = readme.read_text()
    new = _BLOCK.sub(lambda m: m.group(1) + diagram_block(m.group("stack"), readme.parent) + m.group(4), text)
    if new != text:
        readme.write_text(new)
    return new != text


def blocks(readme: Path) -> dict[str, str]:
    """The generated blocks currently in ``readme``, by stack."""
    return {m.group("stack"): m.group(3) for m in _BLOCK.finditer(readme.read_text())}
