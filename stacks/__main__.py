"""Pulumi entry point: runs the program of the selected stack's stage."""

import sys
from pathlib import Path

# The project's packages come from this checkout: `make venv` installs it in editable mode, and
# when Pulumi creates .venv by itself (toolchain pip: `pip install -r requirements.txt`, the lock)
# the project is not installed at all.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stacks.stages import main

main()
