"""``make demo``: the main job on embedded defaults, with nothing but this checkout.

Plans, prices and checks every stage offline (no cloud account, no credentials, no Pulumi CLI),
shows the mvp plan in full, then runs the inference service locally on the demo model and sends
it a prediction.
"""

from __future__ import annotations

from pricing.book import load_price_book
from stacks.config import STAGES
from stagectl import render
from stagectl.checks import assess, render_guardrails
from stagectl.plan import PlanError, run_plan


def run() -> int:
    from pathlib import Path

    from stagectl.demo_service import DemoError, released_model, run_service_demo

    try:
        released_model(Path.cwd())  # the stacks upload it: it must be there before planning
    except DemoError as exc:
        print(f"demo: {exc}")
        return 2
    book = load_price_book()
    print("== offline plans (Pulumi mock runtime: no cloud account, credentials or Pulumi CLI) ==")
    failed = False
    for stack in STAGES:
        try:
            plan = run_plan(stack)
        except PlanError as exc:
            print(f"{stack}: plan failed: {exc}")
            return 2
        if stack == "mvp":
            print(render.tree(plan))
        assessment = assess(stack, plan=plan, book=book)
        cost, seed = assessment.cost, assessment.cost.seed
        cloud = sum(1 for r in plan.resources if r.custom)
        seed_text = f" (source document: ~${seed[0]:,.2f})" if seed else ""
        print(f"{stack}: {cloud} cloud resources; monthly cost ${cost.monthly_total:,.2f}{seed_text}; "
              + render_guardrails(assessment.guardrails).splitlines()[0])
        failed = failed or bool(assessment.failed)
    print("(details: stagectl plan|cost STACK; what a change does: stagectl diff --base REF)\n")
    print("== the inference service, locally on the demo model ==")
    return run_service_demo() or (3 if failed else 0)
