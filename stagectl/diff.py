"""``stagectl diff --base REF``: what a change does to every stack, offline.

The stacks are planned at the git revision REF (in a temporary worktree, by that revision's own
code) and at the working tree; per stack the report lists the resources added, removed and
changed (property by property, secrets still redacted), the monthly cost before and after, and
the guardrail results of the new state.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.base import TYPE_PREFIX
from policy.guardrails import RuleResult
from pricing.book import PriceBook, load_price_book
from pricing.cost import CostReport, price_resources
from stacks.config import ConfigError, UsageAssumptions, load_stage_config
from stacks.stack_config import known_stacks
from stagectl.plan import Plan, PlanError, PlannedResource, load_stack_config, project_root

MARKER = "<!-- aistack:stagectl-diff -->"
PREVIEW_MARKER = "<!-- aistack:pulumi-preview -->"

#: Runs in the base worktree with that revision's code: plans every stack, prints JSON.
_BASE_DRIVER = """
import json, sys
from stagectl.plan import PlanError, run_plan
out = {}
for stack in sys.argv[1:]:
    try:
        out[stack] = {"plan": run_plan(stack).to_json()}
    except PlanError as exc:
        out[stack] = {"error": str(exc)}
print(json.dumps(out))
"""


class DiffError(Exception):
    pass


@dataclass(frozen=True)
class Change:
    path: str
    before: Any
    after: Any


def stateful_force_new() -> dict[str, tuple[str, ...]]:
    """Stateful resource types and the inputs whose change makes the provider replace them, losing
    what they hold (terraform-provider-yandex v0.136.0's ForceNew attributes, as the components list
    them)."""
    from components import clickhouse, kubernetes, postgres, storage
    from components.yc import PACKAGE

    return {
        f"{PACKAGE}:index/mdbClickhouseCluster:MdbClickhouseCluster": clickhouse.FORCE_NEW,
        f"{PACKAGE}:index/mdbPostgresqlCluster:MdbPostgresqlCluster": postgres.FORCE_NEW,
        f"{PACKAGE}:index/storageBucket:StorageBucket": storage.FORCE_NEW,
        f"{PACKAGE}:index/kubernetesCluster:KubernetesCluster": kubernetes.FORCE_NEW,
    }


def _forces_new(path: str, properties: Sequence[str]) -> bool:
    return any(path == p or path.startswith((f"{p}.", f"{p}[")) for p in properties)


def replacements(changed: Sequence[tuple[PlannedResource, list[Change]]]) -> list[tuple[PlannedResource, list[Change]]]:
    """The changed stateful resources the provider would replace, with the changes that force it."""
    table = stateful_force_new()
    out = []
    for resource, changes in changed:
        forcing = [c for c in changes if _forces_new(c.path, table.get(resource.type, ()))]
        if forcing:
            out.append((resource, forcing))
    return out


def replacement_message(resource: PlannedResource, changes: Sequence[Change]) -> str:
    what = ", ".join(f"{c.path} {_value(c.before)} -> {_value(c.after)}" for c in changes)
    return (f"{resource.name} ({resource.type.rpartition(':')[2]}) would be replaced, and what it holds lost: {what} "
            "forces a new resource. Revert the change, or create a new one beside it and move the data")


@dataclass
class StackDiff:
    stack: str
    added: list[PlannedResource] = field(default_factory=list)
    removed: list[PlannedResource] = field(default_factory=list)
    changed: list[tuple[PlannedResource, list[Change]]] = field(default_factory=list)
    cost_before: CostReport | None = None
    cost_after: CostReport | None = None
    guardrails: list[RuleResult] = field(default_factory=list)
    note: str = ""  # e.g. "not built at base"

    @property
    def counts(self) -> dict[str, int]:
        return {"create": _custom(self.added), "update": _custom(r for r, _ in self.changed),
                "delete": _custom(self.removed)}

    @property
    def monthly_before(self) -> float:
        return self.cost_before.monthly_total if self.cost_before else 0.0

    @property
    def monthly_after(self) -> float:
        return self.cost_after.monthly_total if self.cost_after else 0.0

    @property
    def failed_guardrails(self) -> list[RuleResult]:
        return [g for g in self.guardrails if not g.passed]

    @property
    def replaced(self) -> list[tuple[PlannedResource, list[Change]]]:
        """Stateful resources the change would replace (refused, like a failed guardrail)."""
        return replacements(self.changed)

    @property
    def refused(self) -> bool:
        return bool(self.failed_guardrails or self.replaced)


def _custom(resources: Any) -> int:
    return sum(1 for r in resources if r.custom)


def plan_from_json(document: Mapping[str, Any]) -> Plan:
    resources = [PlannedResource(r["urn"], r["type"], r["name"], r["parent"], r["inputs"],
                                 custom=not r["type"].startswith(f"{TYPE_PREFIX}:"))
                 for r in document["resources"]]
    return Plan(document["stack"], document["project"], resources, dict(document.get("outputs") or {}))


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested inputs as ``a.b[0].c`` -> leaf value (empty containers kept as leaves)."""
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value:
        out = {}
        for index, item in enumerate(value):
            out.update(flatten(item, f"{prefix}[{index}]"))
        return out
    return {prefix: value}


def property_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[Change]:
    old, new = flatten(before), flatten(after)
    return [Change(path, old.get(path), new.get(path)) for path in sorted(old.keys() | new.keys())
            if old.get(path) != new.get(path)]


def diff_plans(stack: str, base: Plan | None, head: Plan | None) -> StackDiff:
    result = StackDiff(stack)
    old = {r.urn: r for r in base.resources} if base else {}
    new = {r.urn: r for r in head.resources} if head else {}
    result.added = [r for urn, r in new.items() if urn not in old]
    result.removed = [r for urn, r in old.items() if urn not in new]
    for urn, resource in new.items():
        if urn in old and old[urn].inputs != resource.inputs:
            result.changed.append((resource, property_changes(old[urn].inputs, resource.inputs)))
    return result


def _usage(root: Path, stack: str) -> tuple[UsageAssumptions, str, float | None]:
    """Usage assumptions, currency and budget of ``stack`` as configured under ``root``."""
    try:
        _, config, secret_keys = load_stack_config(root, stack)
        cfg = load_stage_config(stack, config, secret_keys)
    except (PlanError, ConfigError):
        return UsageAssumptions(), "USD", None
    budget = cfg.budget
    return cfg.usage, budget.currency if budget else "USD", budget.monthly if budget else None


@contextlib.contextmanager
def worktree(root: Path, ref: str) -> Iterator[Path]:
    """A detached temporary worktree of ``ref``; local build outputs (the model) are shared."""
    check = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd=root,
                           capture_output=True, text=True)
    if check.returncode != 0:
        raise DiffError(f"unknown git revision {ref!r}: give a commit, branch or tag of this repository")
    with tempfile.TemporaryDirectory(prefix="stagectl-diff-") as tmp:
        path = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(path), ref], cwd=root, check=True,
                       capture_output=True)
        try:
            models = root / "models"
            if models.is_dir() and not (path / "models").exists():
                (path / "models").symlink_to(models, target_is_directory=True)
            yield path
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=root, capture_output=True)


def _start_base_plans(base_root: Path, stacks: Sequence[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(base_root)}
    return subprocess.Popen([sys.executable, "-c", _BASE_DRIVER, *stacks], cwd=base_root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _head_plan(stack: str, root: Path) -> Plan | None:
    from stagectl.plan import run_plan

    try:
        return run_plan(stack, root)
    except PlanError as exc:
        if "is not built yet" in str(exc):
            return None
        raise


def run_diff(base_ref: str, root: Path | None = None, book: PriceBook | None = None,
             stacks: Sequence[str] | None = None) -> list[StackDiff]:
    """Diff every stack between ``base_ref`` and the working tree."""
    from stagectl.checks import assess, resources_of

    root = project_root(root)
    book = book or load_price_book()
    with worktree(root, base_ref) as base_root:
        names = list(stacks or sorted(set(known_stacks(root)) | set(known_stacks(base_root))))
        process = _start_base_plans(base_root, names)
        heads = {stack: _head_plan(stack, root) if (root / f"Pulumi.{stack}.yaml").exists() else None
                 for stack in names}
        out, err = process.communicate(timeout=600)
        if process.returncode != 0:
            raise DiffError(f"planning {base_ref} failed:\n{err.strip()[-2000:]}")
        base_results = json.loads(out)
        diffs = []
        for stack in names:
            entry = base_results.get(stack, {})
            base = plan_from_json(entry["plan"]) if "plan" in entry else None
            head = heads[stack]
            result = diff_plans(stack, base, head)
            if base is None:
                result.note = "not planned at base: " + entry.get("error", "no stack file").splitlines()[0]
            if base is not None:
                usage, currency, budget = _usage(base_root, stack)
                result.cost_before = price_resources(stack, resources_of(base), book, usage, currency, budget)
            if head is not None:
                assessment = assess(stack, root, book, plan=head)
                result.cost_after = assessment.cost
                result.guardrails = assessment.guardrails
            elif base is not None:
                result.note = "not built in the working tree"
            diffs.append(result)
    return diffs


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= 80 else text[:77] + "..."


def _money(value: float, currency: str) -> str:
    return f"{'$' if currency == 'USD' else '₽'}{value:,.2f}"


def _currency(d: StackDiff) -> str:
    report = d.cost_after or d.cost_before
    return report.currency if report else "USD"


def _delta(d: StackDiff) -> str:
    delta = d.monthly_after - d.monthly_before
    return f"{'+' if delta >= 0 else '-'}{_money(abs(delta), _currency(d))}"


def to_json(diffs: Sequence[StackDiff]) -> dict[str, Any]:
    from policy.guardrails import to_json as guardrails_json

    return {"stacks": [{
        "stack": d.stack,
        "note": d.note,
        "counts": d.counts,
        "added": [{"urn": r.urn, "type": r.type} for r in d.added],
        "removed": [{"urn": r.urn, "type": r.type} for r in d.removed],
        "changed": [{"urn": r.urn, "type": r.type,
                     "changes": [{"path": c.path, "before": c.before, "after": c.after} for c in changes]}
                    for r, changes in d.changed],
        "monthly_before": round(d.monthly_before, 2),
        "monthly_after": round(d.monthly_after, 2),
        "monthly_delta": round(d.monthly_after - d.monthly_before, 2),
        "currency": _currency(d),
        "guardrails": guardrails_json(d.guardrails),
        "replaced": [{"urn": r.urn, "type": r.type, "message": replacement_message(r, changes)}
                     for r, changes in d.replaced],
    } for d in diffs]}


def render_text(diffs: Sequence[StackDiff], base_ref: str) -> str:
    lines = [f"stagectl diff: {base_ref} -> working tree"]
    for d in diffs:
        c = d.counts
        lines.append(f"\n== {d.stack}: {c['create']} to create, {c['update']} to update, {c['delete']} to delete; "
                     f"monthly {_money(d.monthly_before, _currency(d))} -> {_money(d.monthly_after, _currency(d))} "
                     f"({_delta(d)})" + (f"  [{d.note}]" if d.note else ""))
        lines += [f"  + {r.type}  {r.name}" for r in d.added]
        lines += [f"  - {r.type}  {r.name}" for r in d.removed]
        for resource, changes in d.changed:
            lines.append(f"  ~ {resource.type}  {resource.name}")
            lines += [f"      {ch.path}: {_value(ch.before)} -> {_value(ch.after)}" for ch in changes]
        failed = d.failed_guardrails
        lines.append(f"  guardrails: {len(d.guardrails) - len(failed)}/{len(d.guardrails)} passed")
        lines += [f"    FAIL {g.rule.name}: {f.message}" for g in failed for f in g.findings]
        lines += [f"  REFUSED replace: {replacement_message(r, changes)}" for r, changes in d.replaced]
    return "\n".join(lines)


def _short(ref: str) -> str:
    return ref[:12] if len(ref) == 40 and all(c in "0123456789abcdef" for c in ref) else ref


def render_markdown(diffs: Sequence[StackDiff], base_ref: str, preview: bool = False) -> str:
    """One merge-request comment for all stacks (the marker lets CI update it in place)."""
    if preview:
        head = [PREVIEW_MARKER, "### `pulumi preview` by stack", "",
                f"Previewed with credentials against {base_ref}.", ""]
    else:
        head = [MARKER, "### Infrastructure change by stack", "",
                f"Planned offline at `{_short(base_ref)}` and at this merge request; no cloud credentials used.", ""]
    out = [*head,
           "| stack | create | update | delete | monthly before | monthly after | delta | guardrails |",
           "|---|---:|---:|---:|---:|---:|---:|---|"]
    for d in diffs:
        c, failed, cur = d.counts, d.failed_guardrails, _currency(d)
        state = "n/a" if not d.guardrails else (f"{len(failed)} failed" if failed else "all passed")
        if d.replaced:
            state += f"; {len(d.replaced)} replace refused"
        out.append(f"| `{d.stack}` | {c['create']} | {c['update']} | {c['delete']} | "
                   f"{_money(d.monthly_before, cur)} | {_money(d.monthly_after, cur)} | {_delta(d)} | {state} |")
    for d in diffs:
        if not (d.added or d.removed or d.changed or d.failed_guardrails or d.note):
            continue
        replaced = {r.urn for r, _ in d.replaced}
        out += ["", f"<details><summary><b>{d.stack}</b>"
                    + (f": {d.note}" if d.note else "") + "</summary>", ""]
        out += [f"- create `{r.type}` **{r.name}**" for r in d.added]
        out += [f"- delete `{r.type}` **{r.name}**" for r in d.removed]
        for resource, changes in d.changed:
            verb = "**replace** (stateful: data lost)" if resource.urn in replaced else "update"
            out.append(f"- {verb} `{resource.type}` **{resource.name}**")
            out += [f"  - `{ch.path}`: `{_value(ch.before)}` -> `{_value(ch.after)}`" for ch in changes]
        for g in d.failed_guardrails:
            out += [f"- guardrail failed: **{g.rule.name}**: {f.message}" for f in g.findings]
        out += [f"- :warning: **refused**: {replacement_message(r, changes)}" for r, changes in d.replaced]
        out += ["", "</details>"]
    return "\n".join(out) + "\n"


def write_gitlab_report(diffs: Sequence[StackDiff], path: Path) -> Path:
    """GitLab's Terraform report (``artifacts:reports:terraform``) for the merge-request widget:
    ``{"create", "update", "delete"}`` summed over the stacks, because GitLab takes one such
    report per job. A replacement counts as an update, as GitLab's widget has no fourth number."""
    total = {"create": 0, "update": 0, "delete": 0}
    for d in diffs:
        for key, value in d.counts.items():
            total[key] += value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(total) + "\n")
    return path


def preview_to_diff(stack: str, document: Mapping[str, Any], book: PriceBook | None = None,
                    root: Path | None = None) -> StackDiff:
    """The same report from ``pulumi preview --json`` output (for CI jobs that have credentials).

    The document is Pulumi's preview digest: ``steps`` with ``op``, ``urn``, ``oldState`` and
    ``newState`` (each with ``type`` and ``inputs``; secrets already written as ``[secret]``), and
    ``changeSummary`` (a count per op). The engine lists unchanged resources only with
    ``--show-sames``; without them the costs and the budget would cover a fraction of the stack, so
    a digest whose summary counts more unchanged resources than it lists is refused (DiffError).
    """
    from policy.guardrails import StackFacts, evaluate
    from stagectl.checks import resources_of

    steps = document.get("steps") or []
    listed = sum(1 for step in steps if step.get("op", "same") == "same")
    summarised = int((document.get("changeSummary") or {}).get("same") or 0)
    if summarised > listed:
        raise DiffError(f"the {stack} preview lists {listed} of its {summarised} unchanged resources: run "
                        "`pulumi preview --json --show-sames` so that costs and the budget cover the whole stack")

    def resource(state: Mapping[str, Any], urn: str) -> PlannedResource:
        kind = str(state.get("type", urn.split("::")[-2] if "::" in urn else ""))
        return PlannedResource(urn, kind, urn.rsplit("::", 1)[-1], state.get("parent"),
                               dict(state.get("inputs") or {}), custom=bool(state.get("custom", True)))

    old: list[PlannedResource] = []
    new: list[PlannedResource] = []
    for step in steps:
        op, urn = step.get("op", "same"), step.get("urn", "")
        if step.get("oldState") and op not in ("create", "create-replacement"):
            old.append(resource(step["oldState"], urn))
        if step.get("newState") and op not in ("delete", "delete-replaced", "discard"):
            new.append(resource(step["newState"], urn))
    project = project_root(root)
    base, head = Plan(stack, "aistack", old), Plan(stack, "aistack", new)
    result = diff_plans(stack, base, head)
    book = book or load_price_book()
    usage, currency, budget = _usage(project, stack)
    result.cost_before = price_resources(stack, resources_of(base), book, usage, currency, budget)
    result.cost_after = price_resources(stack, resources_of(head), book, usage, currency, budget)
    try:
        _, config, secret_keys = load_stack_config(project, stack)
        stage: str = load_stage_config(stack, config, secret_keys).stage
    except (PlanError, ConfigError):
        stage = stack
    facts = StackFacts(stack=stack, stage=stage, monthly_cost=result.cost_after.monthly_total, budget=budget,
                       currency=currency, secrets_marked=True)
    result.guardrails = evaluate(resources_of(head), facts)
    errors = [d.get("message", "") for d in document.get("diagnostics") or [] if d.get("severity") == "error"]
    if errors:
        result.note = "preview reported errors: " + "; ".join(e.strip() for e in errors)[:300]
    return result
