"""Plan + cost + guardrails of one stack: what ``plan``, ``cost`` and ``diff`` report."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from policy.guardrails import Resource, RuleResult, StackFacts, evaluate
from stacks.config import PROJECT, SECRET_KEYS, StageConfig, load_stage_config
from stagectl.cost import CostReport, price_plan
from stagectl.plan import Plan, load_stack_config, project_root, run_plan
from stagectl.prices import PriceBook, load_price_book

_SECRETISH = re.compile(r"(password|secret|token|apikey|api_key|privatekey)", re.I)


@dataclass
class Assessment:
    plan: Plan
    config: StageConfig
    cost: CostReport
    guardrails: list[RuleResult]

    @property
    def failed(self) -> list[RuleResult]:
        return [r for r in self.guardrails if not r.passed]


def plain_secret_keys(config: Mapping[str, str], secret_keys: Sequence[str]) -> tuple[str, ...]:
    """Config keys that hold a secret (by declaration or by name) but are not stored encrypted."""
    found = []
    for key in config:
        namespace, _, name = key.partition(":")
        declared = namespace == PROJECT and name in SECRET_KEYS
        if (declared or _SECRETISH.search(name)) and key not in secret_keys:
            found.append(key)
    return tuple(sorted(found))


def resources_of(plan: Plan) -> list[Resource]:
    return [Resource(r.urn, r.type, r.name, r.inputs) for r in plan.resources if r.custom]


def assess(stack: str, root: Path | None = None, book: PriceBook | None = None,
           plan: Plan | None = None) -> Assessment:
    """Plan ``stack`` (unless given), price it and run every guardrail over it."""
    root = project_root(root)
    plan = plan or run_plan(stack, root)
    _, config, secret_keys = load_stack_config(root, stack)
    cfg = load_stage_config(stack, config, secret_keys)
    book = book or load_price_book()
    budget = cfg.budget
    cost = price_plan(plan, book, cfg.usage, budget.currency if budget else "USD",
                      budget=budget.monthly if budget else None)
    facts = StackFacts(
        stack=stack,
        stage=cfg.stage,
        monthly_cost=cost.monthly_total,
        budget=budget.monthly if budget else None,
        currency=cost.currency,
        plain_secret_keys=plain_secret_keys(config, secret_keys),
        outputs=plan.outputs,
        secrets_marked=True,
    )
    return Assessment(plan, cfg, cost, evaluate(resources_of(plan), facts))


def render_guardrails(results: Sequence[RuleResult]) -> str:
    failed = [r for r in results if not r.passed]
    lines = [f"guardrails: {len(results) - len(failed)}/{len(results)} passed"]
    for result in failed:
        for finding in result.findings:
            lines.append(f"  FAIL {result.rule.name}: {finding.message}")
    return "\n".join(lines)
