"""``make demo``: the main job on embedded defaults, with nothing but this checkout."""

from __future__ import annotations

from stagectl import render
from stagectl.plan import PlanError, run_plan

DEMO_STACK = "mvp"


def run() -> int:
    print(f"== offline plan of the {DEMO_STACK!r} stack (mock runtime: no cloud account, no credentials) ==")
    try:
        plan = run_plan(DEMO_STACK)
    except PlanError as exc:
        print(f"plan failed: {exc}")
        return 2
    print(render.tree(plan))
    return 0
