"""The documents' generated blocks come from the code, and their links lead somewhere.

The stage diagrams (``docs/stages.md``) are generated from the stage programs, the service's
environment table (``service/README.md``) from its settings model; ``stagectl docs`` refreshes both.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stagectl import docs
from tests.infra.conftest import ROOT


def test_stage_diagrams_match_the_programs():
    blocks = docs.blocks(ROOT / "docs" / "stages.md")
    assert set(blocks) == {"plan-mvp", "plan-partner", "plan-prod"}
    for name, block in blocks.items():
        stack = name.removeprefix("plan-")
        assert block == docs.diagram_block(stack, ROOT), f"run `stagectl docs` to refresh the {stack} diagram"


def test_service_environment_table_matches_the_settings():
    blocks = docs.blocks(ROOT / "service" / "README.md")
    assert set(blocks) == {"service-env"}
    assert blocks["service-env"] == docs.env_table(), "run `stagectl docs` to refresh service/README.md"


def test_every_setting_is_a_row_of_the_environment_table():
    from service.settings import Settings

    table = docs.env_table()
    for name, field in Settings.model_fields.items():
        assert field.description, f"Settings.{name} needs a Field(description=...)"
        assert f"| `{name.upper()}` |" in table
    assert "| `PORT` | `8080` | listening port" in table
    assert "| `STORE_PATH` | `var/predictions` |" in table
    assert "| `MODEL_SHA256` | unset |" in table
    assert "| `S3_CONNECT_TIMEOUT` | `3` |" in table


def test_stagectl_docs_keeps_every_document_with_blocks():
    for name in docs.DOCUMENTS:
        assert docs.blocks(ROOT / name), f"{name} has no generated block"
    assert docs.blocks(ROOT / "README.md") == {}, "README stays hand-written; generated blocks live in docs/"


def test_refresh_rewrites_a_stale_block(tmp_path):
    page = tmp_path / "stages.md"
    (tmp_path / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    (tmp_path / "Pulumi.mvp.yaml").write_text((ROOT / "Pulumi.mvp.yaml").read_text())
    page.write_text(
        "intro\n<!-- generated:plan-mvp -->\nstale\n<!-- /generated -->\n"
        "<!-- generated:service-env -->\n<!-- /generated -->\nend\n"
    )
    assert docs.refresh(page, tmp_path) is True
    blocks = docs.blocks(page)
    assert blocks["plan-mvp"].startswith("```mermaid\nflowchart LR\n")
    assert blocks["service-env"].startswith("| variable | default | meaning |\n")
    assert docs.refresh(page, tmp_path) is False
    assert page.read_text().endswith("<!-- /generated -->\nend\n")


def test_an_unknown_block_is_refused(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("<!-- generated:nothing -->\n<!-- /generated -->\n")
    with pytest.raises(ValueError, match="unknown generated block 'nothing'"):
        docs.refresh(page, tmp_path)


_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _documents() -> list[Path]:
    pages = [ROOT / "README.md", ROOT / "service" / "README.md", ROOT / "deploy" / "README.md"]
    return pages + sorted((ROOT / "docs").glob("*.md"))


@pytest.mark.parametrize("document", _documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(document: Path):
    broken = []
    for target in _LINK.findall(document.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        if not (document.parent / target.split("#", 1)[0]).exists():
            broken.append(target)
    assert broken == [], f"{document.relative_to(ROOT)}: links to missing files"


def test_readme_links_every_doc_and_stays_short():
    readme = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"](docs/{page.name})" in readme, f"README's 'Where to read next' misses docs/{page.name}"
    assert len(readme.splitlines()) <= 250, "README is the first read: details belong in docs/"
