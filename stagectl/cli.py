"""The ``stagectl`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from stagectl import model
from stagectl.plan import PlanError, run_plan


def _plan(args: argparse.Namespace) -> int:
    from stagectl import render

    try:
        plan = run_plan(args.stack)
    except PlanError as exc:
        print(f"stagectl plan {args.stack}: {exc}", file=sys.stderr)
        return 2
    if args.json or args.format == "json":
        print(plan.dumps())
    elif args.format == "mermaid":
        print(render.mermaid(plan))
    else:
        print(render.tree(plan))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from stagectl import demo

    return demo.run()


def _docs(args: argparse.Namespace) -> int:
    from stagectl import docs
    from stagectl.plan import project_root

    readme = project_root() / "README.md"
    changed = docs.refresh(readme)
    print(f"{readme.name}: {'updated' if changed else 'already current'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stagectl",
        description="Plan, price and promote the three stages (mvp, partner, prod) of the AI application.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    plan = sub.add_parser("plan", help="offline plan of a stack (no cloud account, credentials or Pulumi CLI)")
    plan.add_argument("stack", help="stack name: mvp, partner or prod")
    plan.add_argument("--json", action="store_true", help="print the plan as one JSON document")
    plan.add_argument("--format", choices=("tree", "json", "mermaid"), default="tree")
    plan.set_defaults(func=_plan)

    model.add_commands(sub)

    docs = sub.add_parser("docs", help="regenerate README's stage diagrams from the stage programs")
    docs.set_defaults(func=_docs)

    demo = sub.add_parser("demo", help="the main job on embedded defaults (what `make demo` runs)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
