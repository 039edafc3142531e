"""``stagectl cost``: a stack's cost report (:mod:`pricing.cost`) as a table."""

from __future__ import annotations

from collections.abc import Sequence

from pricing.cost import CostReport, kind_of


def render_table(report: CostReport, markdown: bool = False) -> str:
    """Infracost-style breakdown: one block per resource, its lines, then the total."""
    cur = report.currency
    rows: list[tuple[str, str, str, str]] = []
    for item in report.items:
        if item.status == "free":
            continue
        if item.status == "unpriced":
            rows.append((f"{item.name} ({kind_of(item.type)})", "", "", f"not priced: {item.note}"))
            continue
        rows.append((f"{item.name} ({kind_of(item.type)})", "", "", _money(item.monthly, cur)))
        for line in item.lines:
            mark = " *" if line.estimate else ""
            rows.append((f"  {line.what}{mark}", f"{line.quantity:,.4g} {line.unit}",
                         f"{_money(line.unit_price, cur, precise=True)}", _money(line.monthly, cur)))
    free = sum(1 for i in report.items if i.status == "free")
    seed = report.seed
    footer = [f"Monthly total: {_money(report.monthly_total, cur)} (prices as of {report.prices_as_of})"]
    if seed:
        footer.append(f"Source document's estimate: ${seed[0]:,.2f} ({seed[1]})")
    if report.budget is not None:
        state = "over" if report.monthly_total > report.budget else "within"
        footer.append(f"Budget: {_money(report.budget, cur)} ({state})")
    footer.append(f"{free} free resources (IAM, networks, objects priced with their bucket) not listed")
    if report.unpriced:
        footer.append(f"{len(report.unpriced)} resources could not be priced (listed above)")
    if any(i.estimate for i in report.items):
        footer.append("* price is an estimate (see pricing/yandex-cloud.yaml)")
    footer.append("Assumptions: " + ", ".join(f"{k}={v}" for k, v in report.assumptions.items()))
    if markdown:
        out = [f"#### `{report.stack}`: {_money(report.monthly_total, cur)} / month", "",
               "| resource / line | quantity | unit price | monthly |", "|---|---:|---:|---:|"]
        out += [f"| {a.replace('  ', '&nbsp;&nbsp;')} | {b} | {c} | {d} |" for a, b, c, d in rows]
        return "\n".join(out + [""] + [f"- {f}" for f in footer])
    width = max([len(r[0]) for r in rows] + [20])
    out = [f"{'Resource / line':<{width}}  {'Quantity':>22}  {'Unit price':>14}  {'Monthly':>12}"]
    out += [f"{a:<{width}}  {b:>22}  {c:>14}  {d:>12}" for a, b, c, d in rows]
    return "\n".join([*out, "", *footer])


def _money(value: float, currency: str, precise: bool = False) -> str:
    symbol = "$" if currency == "USD" else "₽"
    return f"{symbol}{value:,.6g}" if precise else f"{symbol}{value:,.2f}"


def compare_seed(reports: Sequence[CostReport]) -> str:
    """A Markdown table: computed monthly total beside the source document's figure."""
    lines = ["| stage | computed | source document | difference |", "|---|---:|---:|---:|"]
    for report in reports:
        seed = report.seed
        if seed is None:
            continue
        diff = report.monthly_total - seed[0]
        lines.append(f"| {report.stack} | ${report.monthly_total:,.2f} | ~${seed[0]:,.2f} | {diff:+,.2f} |")
    return "\n".join(lines)
