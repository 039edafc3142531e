"""Plan + cost + guardrails of one stack: what ``plan``, ``cost`` and ``diff`` report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from policy.facts import stack_facts
from policy.guardrails import Resource, RuleResult, evaluate
from pricing.book import PriceBook
from pricing.cost import CostReport
from stacks.config import StageConfig
from stagectl.plan import Plan, project_root, run_plan


@dataclass
class Assessment:
    plan: Plan
    config: StageConfig
    cost: CostReport
    guardrails: list[RuleResult]

    @property
    def failed(self) -> list[RuleResult]:
        return [r for r in self.guardrails if not r.passed]


def resources_of(plan: Plan) -> list[Resource]:
    return [Resource(r.urn, r.type, r.name, r.inputs) for r in plan.resources if r.custom]


def assess(stack: str, root: Path | None = None, book: PriceBook | None = None,
           plan: Plan | None = None) -> Assessment:
    """Plan ``stack`` (unless given), price it and run every guardrail over it."""
    root = project_root(root)
    plan = plan or run_plan(stack, root)
    resources = resources_of(plan)
    state = stack_facts(stack, root, resources, book=book, outputs=plan.outputs, secrets_marked=True)
    assert state.cost is not None  # resources given: always priced
    return Assessment(plan, state.config, state.cost, evaluate(resources, state.facts))


def render_guardrails(results: Sequence[RuleResult]) -> str:
    failed = [r for r in results if not r.passed]
    lines = [f"guardrails: {len(results) - len(failed)}/{len(results)} passed"]
    for result in failed:
        for finding in result.findings:
            lines.append(f"  FAIL {result.rule.name}: {finding.message}")
    return "\n".join(lines)
