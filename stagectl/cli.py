"""The ``stagectl`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from stagectl import migrate, model, prices
from stagectl.plan import PlanError, run_plan


def _plan(args: argparse.Namespace) -> int:
    from stagectl import render
    from stagectl.checks import assess, render_guardrails

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
    if args.no_checks:
        return 0
    assessment = assess(args.stack, plan=plan)
    report = render_guardrails(assessment.guardrails)
    print(report, file=sys.stderr if args.json or args.format != "tree" else sys.stdout)
    return 3 if assessment.failed else 0


def _cost(args: argparse.Namespace) -> int:
    from stagectl.checks import assess
    from stagectl.cost import render_table

    try:
        assessment = assess(args.stack)
    except PlanError as exc:
        print(f"stagectl cost {args.stack}: {exc}", file=sys.stderr)
        return 2
    report = assessment.cost
    if args.format == "json":
        print(report.dumps())
    else:
        print(render_table(report, markdown=args.format == "markdown"))
    over = report.budget is not None and report.monthly_total > report.budget
    return 3 if over else 0


def _diff(args: argparse.Namespace) -> int:
    import json as _json
    from pathlib import Path

    from stagectl import diff

    try:
        diffs = diff.run_diff(args.base, stacks=args.stack or None)
    except (diff.DiffError, PlanError) as exc:
        print(f"stagectl diff: {exc}", file=sys.stderr)
        return 2
    if args.gitlab_report:
        diff.write_gitlab_report(diffs, Path(args.gitlab_report))
    if args.format == "json":
        print(_json.dumps(diff.to_json(diffs), indent=2))
    elif args.format == "markdown":
        print(diff.render_markdown(diffs, args.base))
    else:
        print(diff.render_text(diffs, args.base))
    return 3 if any(d.refused for d in diffs) else 0


def _preview_comment(args: argparse.Namespace) -> int:
    import json as _json

    from stagectl import diff

    diffs = []
    for item in args.preview:
        stack, sep, path = item.partition("=")
        if not sep:
            print(f"stagectl preview-comment: expected STACK=FILE, got {item!r}", file=sys.stderr)
            return 2
        try:
            with open(path) as handle:
                document = _json.load(handle)
        except (OSError, ValueError) as exc:
            print(f"stagectl preview-comment: cannot read {path}: {exc}", file=sys.stderr)
            return 2
        try:
            diffs.append(diff.preview_to_diff(stack, document))
        except diff.DiffError as exc:
            print(f"stagectl preview-comment: {exc}", file=sys.stderr)
            return 2
    print(diff.render_markdown(diffs, args.base or "the deployed state", preview=True))
    return 3 if any(d.refused for d in diffs) else 0


def _demo(args: argparse.Namespace) -> int:
    from stagectl import demo

    return demo.run()


def _docs(args: argparse.Namespace) -> int:
    from stagectl import docs
    from stagectl.plan import project_root

    root = project_root()
    for name in docs.DOCUMENTS:
        changed = docs.refresh(root / name, root)
        print(f"{name}: {'updated' if changed else 'already current'}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    from pathlib import Path

    from stagectl.plan import project_root
    from stagectl.promote import ImageCopy, PromotionRefused, promote

    root = project_root()
    image = None if args.no_copy_image else ImageCopy(args.image_from, args.image_to,
                                                       tls_verify=not args.registry_insecure)
    try:
        promotion = promote(args.source, args.target, root, endpoint=args.endpoint,
                            golden=Path(args.golden) if args.golden else None, force=args.force,
                            dry_run=args.dry_run, image=image)
    except PromotionRefused as exc:
        print(f"stagectl promote {args.source} {args.target}: refused: {exc}", file=sys.stderr)
        return 4
    for gate in promotion.gates:
        print(f"ok  {gate}")
    for note in promotion.notes:
        print(f"note  {note}")
    diff_text = promotion.diff(root)
    print(diff_text or "the target already pins this release: nothing to change")
    if args.dry_run:
        print("dry run: no file was changed")
    return 0


def _mr_note(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from stagectl.gitlab import TOKEN_VARIABLE, GitLabError, MergeRequest

    source, target = os.environ.get("CI_MERGE_REQUEST_SOURCE_PROJECT_ID"), os.environ.get("CI_MERGE_REQUEST_PROJECT_ID")
    if not os.environ.get(TOKEN_VARIABLE) and source and target and source != target:
        # a fork's merge-request pipeline runs in the fork: the target project's token is not there
        print(f"stagectl mr-note: not posted: a merge request from a fork (project {source}) gets no "
              f"{TOKEN_VARIABLE}; the comment is in this job's log and artifacts")
        return 0
    try:
        action, note = MergeRequest.from_env().upsert_note(Path(args.file).read_text())
    except (GitLabError, OSError) as exc:
        print(f"stagectl mr-note: {exc}", file=sys.stderr)
        return 2
    print(f"merge-request note {note} {action}")
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
    plan.add_argument("--no-checks", action="store_true", help="skip the guardrails (exit 3 when one fails)")
    plan.set_defaults(func=_plan)

    cost = sub.add_parser("cost", help="monthly cost of a stack from its plan, the price book and usage assumptions")
    cost.add_argument("stack")
    cost.add_argument("--format", choices=("table", "json", "markdown"), default="table")
    cost.set_defaults(func=_cost)

    diff = sub.add_parser("diff", help="what the working tree changes in every stack against a git revision")
    diff.add_argument("--base", required=True, help="git revision to compare with (e.g. the merge base)")
    diff.add_argument("--stack", action="append", help="limit to these stacks (repeatable)")
    diff.add_argument("--format", choices=("text", "json", "markdown"), default="text")
    diff.add_argument("--gitlab-report", metavar="FILE",
                      help="write GitLab's Terraform report (artifacts:reports:terraform): the stacks' counts summed")
    diff.set_defaults(func=_diff)

    preview = sub.add_parser("preview-comment",
                             help="render `pulumi preview --json` outputs as the merge-request comment")
    preview.add_argument("preview", nargs="+", metavar="STACK=FILE", help="a stack and its preview JSON")
    preview.add_argument("--base", help="what the preview compares with (shown in the comment)")
    preview.set_defaults(func=_preview_comment)

    prom = sub.add_parser("promote", help="copy a release's pins from one stage to the next, behind gates")
    prom.add_argument("source", metavar="FROM", help="stage whose release is promoted (mvp or partner)")
    prom.add_argument("target", metavar="TO", help="the next stage (partner or prod)")
    prom.add_argument("--endpoint", help="the source stage's service URL (default: its stack output)")
    prom.add_argument("--golden", help="golden input JSON {instances, labels} (default: beside the model)")
    prom.add_argument("--dry-run", action="store_true", help="run every gate and show the diff; change nothing")
    prom.add_argument("--force", action="store_true", help="allow promoting backwards or skipping a stage")
    prom.add_argument("--image-from", metavar="REPO", help="the source stage's image repository "
                      "(default: its image_repository output)")
    prom.add_argument("--image-to", metavar="REPO", help="the target stage's image repository "
                      "(default: its image_repository output)")
    prom.add_argument("--no-copy-image", action="store_true",
                      help="do not copy the release's image (its flavours) to the target's registry (it must hold "
                      "them already)")
    prom.add_argument("--registry-insecure", action="store_true",
                      default=os.environ.get("REGISTRY_TLS_VERIFY", "true").lower() == "false",
                      help="reach the registries over plain HTTP, without TLS (local test registries only; "
                      "default: on when REGISTRY_TLS_VERIFY=false, as for the build job)")
    prom.set_defaults(func=_promote)

    note = sub.add_parser("mr-note", help="post FILE as the merge-request comment, updating it in place (CI)")
    note.add_argument("file", help="Markdown whose first line is the comment's marker")
    note.set_defaults(func=_mr_note)

    migrate.add_commands(sub)
    prices.add_commands(sub)

    model.add_commands(sub)

    docs = sub.add_parser("docs", help="regenerate the docs' generated blocks (stage diagrams, service environment)")
    docs.set_defaults(func=_docs)

    demo = sub.add_parser("demo", help="the main job on embedded defaults (what `make demo` runs)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
