"""Adapters from pulumi-policy's arguments to the guardrail rules (kept apart from ``__main__``
so tests can call a policy's ``validate`` without starting a PolicyPack server)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from policy.facts import stack_facts
from policy.guardrails import RULES, Resource, Rule, StackFacts

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def stack_of(urn: str) -> str:
    """``urn:pulumi:<stack>::<project>::...`` -> ``<stack>``."""
    return urn.split("::", 1)[0].removeprefix("urn:pulumi:")


def facts_for(stack: str, resources: list[Resource] | None = None, root: Path = PROJECT_ROOT) -> StackFacts:
    """What the rules need to know about ``stack``, from its config (and cost, for stack rules)."""
    return stack_facts(stack, root, resources, always_price=False).facts


@functools.lru_cache(maxsize=8)
def _config_facts(stack: str) -> StackFacts:
    """Facts from the stack's config only (resource rules run once per resource)."""
    return facts_for(stack)


def _resource_validator(rule: Rule) -> Callable[[ResourceValidationArgs, ReportViolation], None]:
    assert rule.resource is not None
    check = rule.resource

    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        if args.resource_type.startswith("aistack:"):
            return  # components have no inputs of their own
        resource = Resource(args.urn, args.resource_type, args.name, _plain(args.props))
        for message in check(resource, _config_facts(stack_of(args.urn))):
            report_violation(message, args.urn)

    return validate


def _stack_validator(rule: Rule) -> Callable[[StackValidationArgs, ReportViolation], None]:
    assert rule.stack is not None
    check = rule.stack

    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        resources = [Resource(r.urn, r.resource_type, r.name, _plain(r.props)) for r in args.resources
                     if not r.resource_type.startswith(("aistack:", "pulumi:"))]
        if not resources:
            return
        facts = facts_for(stack_of(resources[0].urn), resources)
        for finding in check(resources, facts):
            report_violation(finding.message, finding.urn)

    return validate


def _plain(value: Any) -> Any:
    """pulumi-policy hands props through proxies; rules want plain dicts and lists."""
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple) or type(value).__name__ == "_ListSecretsProxy":
        return [_plain(v) for v in value]
    return value


def policies() -> list[Policy]:
    built: list[Policy] = []
    for rule in RULES:
        if rule.resource is not None:
            built.append(ResourceValidationPolicy(name=rule.name, description=rule.description,
                                                  validate=_resource_validator(rule),
                                                  enforcement_level=EnforcementLevel.MANDATORY))
        if rule.stack is not None:
            built.append(StackValidationPolicy(name=rule.name, description=rule.description,
                                               validate=_stack_validator(rule),
                                               enforcement_level=EnforcementLevel.MANDATORY))
    return built
