"""The facts the guardrails need about a stack, built the same way for the policy pack and for the
offline checks of ``stagectl plan|cost|diff``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policy.guardrails import Resource, StackFacts
from pricing.book import PriceBook, load_price_book
from pricing.cost import CostReport, price_resources
from stacks.config import StageConfig, load_stage_config
from stacks.stack_config import load_stack_config, plain_secret_keys


@dataclass(frozen=True)
class StackState:
    """A stack's typed config, its cost (when priced) and the facts the rules get."""

    config: StageConfig
    facts: StackFacts
    cost: CostReport | None = None


def stack_facts(stack: str, root: Path, resources: Sequence[Resource] | None = None, *,
                book: PriceBook | None = None, always_price: bool = True,
                outputs: Mapping[str, Any] | None = None, secrets_marked: bool = False) -> StackState:
    """The stage and plain-text secrets of ``stack`` from its ``Pulumi.<stack>.yaml`` under ``root``
    and, when its cloud ``resources`` are given, their monthly cost against the budget.

    ``always_price=False`` prices the resources only when the stack has a budget (the rules need
    the cost for the budget rule alone).
    """
    _, config, secret_keys = load_stack_config(root, stack)
    cfg = load_stage_config(stack, config, secret_keys)
    budget = cfg.budget
    cost = None
    if resources is not None and (always_price or budget is not None):
        cost = price_resources(stack, resources, book or load_price_book(), cfg.usage,
                               budget.currency if budget else "USD", budget.monthly if budget else None)
    facts = StackFacts(
        stack=stack,
        stage=cfg.stage,
        monthly_cost=cost.monthly_total if cost else None,
        budget=budget.monthly if cost and budget else None,
        currency=cost.currency if cost else "USD",
        plain_secret_keys=plain_secret_keys(config, secret_keys),
        outputs=outputs if outputs is not None else {},
        secrets_marked=secrets_marked,
    )
    return StackState(cfg, facts, cost)
