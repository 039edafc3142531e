"""Helpers for mock-runtime tests of components and stage programs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stacks import stages
from stagectl.plan import MockOutputs, Plan, PlannedResource, load_stack_config, record

ROOT = Path(__file__).resolve().parents[2]


class Recorded:
    """What a program registered, with lookups by type and name."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def of_type(self, kind: str) -> list[PlannedResource]:
        return [r for r in self.plan.resources if r.type.rpartition(":")[2] == kind]

    def one(self, kind: str) -> PlannedResource:
        found = self.of_type(kind)
        assert len(found) == 1, f"expected one {kind}, found {[r.name for r in found]}"
        return found[0]

    def json(self) -> str:
        return json.dumps(self.plan.to_json())


@pytest.fixture
def run_component() -> Callable[..., Recorded]:
    """Run a function creating components under fresh mocks; returns what it registered."""

    def run(program: Callable[[], object], preview: bool = True, config: dict[str, str] | None = None,
            secret_keys: list[str] | None = None, outputs: MockOutputs | None = None) -> Recorded:
        plan = record("aistack", "test", config or {}, secret_keys or [], program, root=ROOT, preview=preview,
                      outputs=outputs)
        return Recorded(plan)

    return run


def stack_config(stack: str = "mvp", **overrides: Any) -> dict[str, str]:
    """The repository's config of ``stack`` with top-level ``aistack:`` keys replaced."""
    _, config, _ = load_stack_config(ROOT, stack)
    for key, value in overrides.items():
        full = key if ":" in key else f"aistack:{key}"
        if value is None:
            config.pop(full, None)
        else:
            config[full] = value if isinstance(value, str) else json.dumps(value)
    return config


@pytest.fixture
def run_stack() -> Callable[..., Recorded]:
    """Run a stage program with the given flat config map."""

    def run(stack: str, config: dict[str, str], secret_keys: list[str] | None = None,
            preview: bool = True) -> Recorded:
        plan = record("aistack", stack, config, secret_keys or [],
                      lambda: stages.run(stack, config, root=ROOT), root=ROOT, preview=preview)
        return Recorded(plan)

    return run


@pytest.fixture
def model_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory with a small model file and card; yields (dir, sha256)."""
    import hashlib

    payload = b"not really onnx, but bytes with a known digest"
    (tmp_path / "model.onnx").write_bytes(payload)
    (tmp_path / "card.json").write_text('{"name": "digits"}')
    yield tmp_path, hashlib.sha256(payload).hexdigest()


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, str, dict[str, Any]]:
    """A partner-stage model directory (model file and card) and its sha256."""
    payload = b"a model file for the partner stage"
    sha = hashlib.sha256(payload).hexdigest()
    card = {"name": "digits-mlp", "sha256": sha,
            "inputs": [{"name": "float_input", "shape": [-1, 64], "dtype": "float32"}],
            "outputs": [{"name": "probabilities", "shape": [-1, 10], "dtype": "float32"}]}
    (tmp_path / "model.onnx").write_bytes(payload)
    (tmp_path / "card.json").write_text(json.dumps(card))
    return tmp_path, sha, card
