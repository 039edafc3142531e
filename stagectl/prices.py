"""``stagectl prices show|refresh``: the price book (:mod:`pricing.book`) on the command line.

``stagectl prices show`` prints the book as a table; ``stagectl prices refresh`` updates it from
Yandex Cloud's Billing API (:mod:`pricing.billing`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pricing.billing import refresh_price_book
from pricing.book import CURRENCIES, PriceBook, PriceBookError, default_book_path, load_price_book


def format_table(book: PriceBook) -> str:
    """The book as a plain-text table, one entry per line."""
    header = ("key", "unit", "USD", "RUB", "free", "est", "sku")
    rows = [header]
    for key in sorted(book.entries):
        p = book.entries[key]
        rows.append(
            (
                key,
                p.unit,
                f"{p.usd:g}",
                f"{p.rub:g}",
                f"{p.free_units:g}" if p.free_units else "",
                "yes" if p.estimate else "",
                p.sku,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    numeric = {2, 3, 4}
    lines = []
    for index, row in enumerate(rows):
        cells = [c.rjust(widths[i]) if i in numeric and index else c.ljust(widths[i]) for i, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    estimates = sum(1 for p in book.entries.values() if p.estimate)
    lines.append("")
    lines.append(
        f"{len(book.entries)} prices ({estimates} estimates), {len(book.presets)} presets; "
        f"region {book.region}, as of {book.as_of}. USD without VAT, RUB with VAT."
    )
    return "\n".join(lines)


def _cmd_show(args: argparse.Namespace) -> int:
    try:
        book = load_price_book(Path(args.file) if args.file else None)
    except PriceBookError as exc:
        print(f"stagectl prices show: {exc}", file=sys.stderr)
        return 2
    if args.json:
        data = {
            "as_of": book.as_of,
            "region": book.region,
            "entries": {
                k: {
                    "unit": p.unit,
                    "usd": p.usd,
                    "rub": p.rub,
                    "sku": p.sku,
                    "source": p.source,
                    "estimate": p.estimate,
                    "note": p.note,
                    "free_units": p.free_units,
                }
                for k, p in sorted(book.entries.items())
            },
            "presets": {
                k: {
                    "platform": s.platform,
                    "cores": s.cores,
                    "memory_gb": s.memory_gb,
                    "core_fraction": s.core_fraction,
                    "source": s.source,
                }
                for k, s in sorted(book.presets.items())
            },
        }
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        print(format_table(book))
    return 0


def _token_from(args: argparse.Namespace) -> str:
    for value in (args.token, os.environ.get("YC_TOKEN"), os.environ.get("YC_IAM_TOKEN"), os.environ.get("IAM_TOKEN")):
        if value and value.strip():
            return value.strip()
    return ""


def _cmd_refresh(args: argparse.Namespace) -> int:
    token = _token_from(args)
    if not token:
        print(
            "stagectl prices refresh: no IAM token: pass --token or set YC_TOKEN "
            "(e.g. YC_TOKEN=$(yc iam create-token))",
            file=sys.stderr,
        )
        return 2
    path = Path(args.file) if args.file else default_book_path()
    try:
        report = refresh_price_book(path, token, currency=args.currency)
    except PriceBookError as exc:
        print(f"stagectl prices refresh: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"stagectl prices refresh: Billing API request failed: {exc}", file=sys.stderr)
        return 1
    print(f"{path}: {report.summary()}")
    for key in report.updated:
        print(f"  updated    {key}")
    for key, reason in report.skipped:
        print(f"  skipped    {key}: {reason}")
    for key in report.unmatched:
        print(f"  unmatched  {key}")
    return 0


def _cmd_usage(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def usage(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return usage


def add_commands(subparsers: Any) -> None:
    """Register ``stagectl prices show`` and ``stagectl prices refresh`` on the top-level sub-parsers."""
    prices = subparsers.add_parser(
        "prices",
        help="the Yandex Cloud price book: show it or refresh it from the Billing API",
        description="The price book (pricing/yandex-cloud.yaml) that `stagectl cost` reads.",
    )
    prices.set_defaults(func=_cmd_usage(prices))
    actions = prices.add_subparsers(dest="prices_action", metavar="ACTION")

    show = actions.add_parser("show", help="print the price book as a table")
    show.add_argument("--file", metavar="PATH", help="price book to read (default: pricing/yandex-cloud.yaml)")
    show.add_argument("--json", action="store_true", help="print the book as JSON instead of a table")
    show.set_defaults(func=_cmd_show)

    refresh = actions.add_parser(
        "refresh",
        help="update prices from Yandex Cloud's Billing API (needs an IAM token)",
        description="Read every SKU from GET billing/v1/skus and update the entries whose sku matches "
        "an SKU id or name; everything else in the file is kept. The token comes from --token or the "
        "YC_TOKEN (or YC_IAM_TOKEN) environment variable.",
    )
    refresh.add_argument("--token", help="IAM token (default: $YC_TOKEN or $YC_IAM_TOKEN)")
    refresh.add_argument(
        "--currency",
        type=str.upper,
        choices=CURRENCIES,
        default="RUB",
        help="currency to read prices in (default: RUB); run once per currency",
    )
    refresh.add_argument("--file", metavar="PATH", help="price book to update (default: pricing/yandex-cloud.yaml)")
    refresh.set_defaults(func=_cmd_refresh)
