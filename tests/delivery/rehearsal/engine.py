"""What the rehearsal runs instead of ``pulumi up`` and ``pulumi preview`` (which need the
Yandex provider and the cloud), from the job's own checkout and virtualenv.

``up --stack S``: plans S offline with the job's code and config (``stagectl``'s planner), fails
as a mandatory policy pack would when a guardrail fails, records the planned resources as the
stack's "cloud" (``$REHEARSAL_CLOUD/<S>.json``), and gives the stack the outputs a real deployment
would have (``$REHEARSAL_CLOUD/<S>.outputs.json``: the local registry and service the rehearsal
runs) through the real CLI (``pulumi stack import``), so ``pulumi stack output`` is the real CLI.

``preview --json --stack S [--show-sames]``: the engine's preview digest (``steps``,
``changeSummary``) between that recorded "cloud" and the job's plan, with the engine's own rule:
unchanged resources are listed only with ``--show-sames`` (the root stack always), while the
summary counts them all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stagectl.checks import assess
from stagectl.diff import plan_from_json
from stagectl.plan import Plan, PlanError, PlannedResource, run_plan

PROJECT = "aistack"


def _cloud() -> Path:
    return Path(os.environ["REHEARSAL_CLOUD"])


def _option(args: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _state(r: PlannedResource) -> dict[str, Any]:
    return {"urn": r.urn, "custom": r.custom, "type": r.type, "inputs": r.inputs,
            **({"parent": r.parent} if r.parent else {})}


def _root_urn(stack: str) -> str:
    return f"urn:pulumi:{stack}::{PROJECT}::pulumi:pulumi:Stack::{PROJECT}-{stack}"


def preview_digest(stack: str, deployed: Plan | None, planned: Plan, show_sames: bool) -> dict[str, Any]:
    old = {r.urn: r for r in (deployed.resources if deployed else [])}
    new = {r.urn: r for r in planned.resources}
    root = {"type": "pulumi:pulumi:Stack", "urn": _root_urn(stack), "custom": False}
    steps: list[dict[str, Any]] = [{"op": "same" if deployed else "create", "urn": root["urn"],
                                    **({"oldState": root} if deployed else {}), "newState": root}]
    summary = {"same" if deployed else "create": 1}
    for urn, resource in new.items():
        before = old.get(urn)
        if before is None:
            op, step = "create", {"newState": _state(resource)}
        elif before.inputs == resource.inputs:
            op, step = "same", {"oldState": _state(before), "newState": _state(resource)}
        else:
            changed = sorted(k for k in set(before.inputs) | set(resource.inputs)
                             if before.inputs.get(k) != resource.inputs.get(k))
            op, step = "update", {"oldState": _state(before), "newState": _state(resource), "diffReasons": changed}
        summary[op] = summary.get(op, 0) + 1
        if op != "same" or show_sames:
            steps.append({"op": op, "urn": urn, **step})
    for urn, resource in old.items():
        if urn not in new:
            summary["delete"] = summary.get("delete", 0) + 1
            steps.append({"op": "delete", "urn": urn, "oldState": _state(resource)})
    return {"steps": steps, "changeSummary": summary}


def _deployed(stack: str) -> Plan | None:
    path = _cloud() / f"{stack}.json"
    return plan_from_json(json.loads(path.read_text())) if path.is_file() else None


def _set_outputs(stack: str) -> None:
    path = _cloud() / f"{stack}.outputs.json"
    outputs = json.loads(path.read_text()) if path.is_file() else {}
    deployment = {"version": 3, "deployment": {
        "manifest": {"time": "2026-01-01T00:00:00Z", "magic": "", "version": ""},
        "resources": [{"urn": _root_urn(stack), "custom": False, "type": "pulumi:pulumi:Stack", "outputs": outputs}]}}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(deployment, handle)
    try:
        subprocess.run([os.environ["REHEARSAL_PULUMI"], "stack", "import", "--file", handle.name, "--stack", stack],
                       check=True, stdout=sys.stderr)
    finally:
        os.unlink(handle.name)


def main(argv: Sequence[str]) -> int:
    command, args = argv[0], list(argv[1:])
    stack = _option(args, "--stack")
    if not stack:
        print("error: no stack selected: pass --stack", file=sys.stderr)
        return 255
    try:
        planned = run_plan(stack, preview=command == "preview")
    except PlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 255
    assessment = assess(stack, plan=planned)
    failed = [f"[mandatory] {r.rule.name}: {f.message}" for r in assessment.failed for f in r.findings]
    if command == "preview":
        digest = preview_digest(stack, _deployed(stack), planned, "--show-sames" in args)
        if "--json" in args:
            print(json.dumps(digest, indent=2))
        else:
            print(json.dumps(digest["changeSummary"]))
        if failed:
            print("Policy Violations:\n  " + "\n  ".join(failed), file=sys.stderr)
            return 255
        return 0
    if failed:
        print("error: preview failed: policy violations:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 255
    digest = preview_digest(stack, _deployed(stack), planned, False)
    _cloud().mkdir(parents=True, exist_ok=True)
    (_cloud() / f"{stack}.json").write_text(planned.dumps())
    _set_outputs(stack)
    print(f"Resources: {json.dumps(digest['changeSummary'])} (rehearsal: recorded, nothing created)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
