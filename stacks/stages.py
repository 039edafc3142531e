"""Which program builds which stage."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pulumi

from stacks import mvp, partner, prod
from stacks.config import STAGES, ConfigError, StageConfig, load_stage_config

PROJECT_ROOT = Path(__file__).resolve().parents[1]

#: Stage name -> program. A stage listed in STAGES but absent here is not built yet.
PROGRAMS: dict[str, Callable[[Any, Path], None]] = {
    "mvp": mvp.program, "partner": partner.program, "prod": prod.program}


def current_config_map() -> dict[str, Any]:
    """The whole config map the engine (or the mock runtime) gave this program."""
    from pulumi.runtime import config as runtime_config

    return {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}


def run(stack: str, config: Mapping[str, Any] | None = None, root: Path | None = None) -> StageConfig:
    """Load the stack's typed config and run its stage program.

    ``root`` is the project directory (where ``Pulumi.yaml`` is); relative paths in the config
    (the model directory) are resolved against it.
    """
    if not stack:
        raise ConfigError("no stack selected: use `pulumi stack select mvp|partner|prod`")
    from pulumi.runtime.config import is_config_secret

    config = current_config_map() if config is None else config
    cfg = load_stage_config(stack, config, secret_keys=[k for k in config if is_config_secret(k)])
    program = PROGRAMS.get(cfg.stage)
    if program is None:  # pragma: no cover - every configured stage has a program
        raise ConfigError(f"stage {cfg.stage!r} has no program; known: {', '.join(STAGES)}")
    program(cfg, root or PROJECT_ROOT)
    return cfg


def main() -> None:
    run(pulumi.get_stack())
