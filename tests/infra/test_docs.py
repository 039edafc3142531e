"""README's stage diagrams are generated from the programs, not drawn by hand."""

from __future__ import annotations

from stagectl import docs
from tests.infra.conftest import ROOT


def test_readme_diagrams_match_the_programs():
    blocks = docs.blocks(ROOT / "README.md")
    assert set(blocks) == {"mvp", "partner", "prod"}
    for stack, block in blocks.items():
        assert block == docs.diagram_block(stack, ROOT), f"run `stagectl docs` to refresh the {stack} diagram"


def test_refresh_rewrites_a_stale_block(tmp_path):
    readme = tmp_path / "README.md"
    (tmp_path / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    (tmp_path / "Pulumi.mvp.yaml").write_text((ROOT / "Pulumi.mvp.yaml").read_text())
    readme.write_text("intro\n<!-- generated:plan-mvp -->\nstale\n<!-- /generated -->\nend\n")
    assert docs.refresh(readme) is True
    assert docs.blocks(readme)["mvp"].startswith("```mermaid\nflowchart LR\n")
    assert docs.refresh(readme) is False
    assert readme.read_text().endswith("<!-- /generated -->\nend\n")
