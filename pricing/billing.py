"""Refreshing the price book from Yandex Cloud's Billing API.

:func:`refresh_price_book` re-reads prices from ``GET https://billing.api.cloud.yandex.net/billing/v1/skus``
(``Authorization: Bearer <IAM token>``) and updates every entry of the book whose ``sku`` equals an
SKU id or name in the response; everything else in the file is kept.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pricing.book import CURRENCIES, book_from_raw, dump_book, read_raw

BILLING_SKUS_URL = "https://billing.api.cloud.yandex.net/billing/v1/skus"
BILLING_SOURCE = "https://yandex.cloud/en/docs/billing/api-ref/Sku/list"
PAGE_SIZE = 1000
MAX_PAGES = 1000
HOURS_PER_MONTH = 720.0  # Yandex prices a month as 720 hours (30 days)


# --------------------------------------------------------------------------------------------
# Billing API: parsing `billing/v1/skus` list responses
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SkuPrice:
    """The current price of one SKU, as the Billing API's ``skus`` list returns it."""

    id: str
    name: str
    description: str
    service_id: str
    pricing_unit: str
    unit_price: float
    currency: str
    effective_time: str
    pricing_type: str = "STREET_PRICE"
    free_quantity: float = 0.0


def _parse_time(text: str) -> dt.datetime | None:
    """RFC 3339 (``2024-03-01T00:00:00Z``, with up to 9 fraction digits) to an aware datetime."""
    match = re.fullmatch(r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|z|[+-]\d{2}:\d{2})?", text.strip())
    if not match:
        return None
    day, clock, fraction, zone = match.groups()
    micro = (fraction or "0")[:6].ljust(6, "0")
    offset = "+00:00" if zone in (None, "Z", "z") else zone
    try:
        return dt.datetime.fromisoformat(f"{day}T{clock}.{micro}{offset}")
    except ValueError:
        return None


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _current_version(versions: Iterable[Any], now: dt.datetime) -> tuple[Mapping[str, Any], str] | None:
    """The pricing version in effect at ``now``: the latest ``effectiveTime`` not in the future.

    On equal times a ``CONTRACT_PRICE`` (a billing account's own price) wins over ``STREET_PRICE``.
    """
    best: tuple[dt.datetime, int, Mapping[str, Any], str] | None = None
    for version in versions:
        if not isinstance(version, Mapping):
            continue
        raw_time = str(version.get("effectiveTime", ""))
        when = _parse_time(raw_time) if raw_time else dt.datetime.min.replace(tzinfo=dt.UTC)
        if when is None or when > now:
            continue
        rank = 1 if version.get("type") == "CONTRACT_PRICE" else 0
        if best is None or (when, rank) > (best[0], best[1]):
            best = (when, rank, version, raw_time)
    return (best[2], best[3]) if best else None


def _pick_rate(version: Mapping[str, Any]) -> tuple[float, str, float] | None:
    """``(unit_price, currency, free_quantity)``: the first rate tier above the free quantity.

    Rates are ordered by ``startPricingQuantity``; leading tiers priced 0 are the free amount, and
    the first tier with a price above 0 is the one a bill beyond the free amount pays. When every
    tier is 0 the SKU is free.
    """
    rates: list[tuple[float, float, str]] = []
    for expression in version.get("pricingExpressions") or []:
        if not isinstance(expression, Mapping):
            continue
        for rate in expression.get("rates") or []:
            if not isinstance(rate, Mapping):
                continue
            price = _float(rate.get("unitPrice"))
            start = _float(rate.get("startPricingQuantity", 0)) or 0.0
            if price is None or price < 0:
                continue
            rates.append((start, price, str(rate.get("currency", ""))))
        if rates:
            break  # the first expression that carries rates
    if not rates:
        return None
    rates.sort(key=lambda r: r[0])
    for start, price, currency in rates:
        if price > 0:
            return price, currency, start
    return 0.0, rates[0][2], 0.0


def parse_billing_skus(pages: Iterable[Mapping[str, Any]], now: dt.datetime | None = None) -> dict[str, SkuPrice]:
    """Parse Billing API ``billing/v1/skus`` list responses into current prices, keyed by SKU id.

    Each page is a response body as documented: ``{"skus": [{"id", "name", "description",
    "serviceId", "pricingUnit", "pricingVersions": [{"type", "effectiveTime",
    "pricingExpressions": [{"rates": [{"startPricingQuantity", "unitPrice", "currency"}]}]}]}],
    "nextPageToken"}``. For each SKU the current pricing version (latest ``effectiveTime`` not in
    the future) is taken, and in it the first rate tier above the free quantity. SKUs without a
    usable version or rate are left out.
    """
    moment = now or dt.datetime.now(dt.UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    result: dict[str, SkuPrice] = {}
    for page in pages:
        if not isinstance(page, Mapping):
            continue
        for sku in page.get("skus") or []:
            if not isinstance(sku, Mapping) or not sku.get("id"):
                continue
            picked = _current_version(sku.get("pricingVersions") or [], moment)
            if picked is None:
                continue
            version, effective = picked
            rate = _pick_rate(version)
            if rate is None:
                continue
            unit_price, currency, free = rate
            sku_id = str(sku["id"])
            result[sku_id] = SkuPrice(
                id=sku_id,
                name=str(sku.get("name", "")),
                description=str(sku.get("description", "")),
                service_id=str(sku.get("serviceId", "")),
                pricing_unit=str(sku.get("pricingUnit", "")),
                unit_price=unit_price,
                currency=currency.upper(),
                effective_time=effective,
                pricing_type=str(version.get("type", "STREET_PRICE") or "STREET_PRICE"),
                free_quantity=free,
            )
    return result


# --------------------------------------------------------------------------------------------
# Units: converting a Billing API pricing unit to a book unit
# --------------------------------------------------------------------------------------------

_TIME_HOURS = {
    "second": 1 / 3600,
    "sec": 1 / 3600,
    "s": 1 / 3600,
    "minute": 1 / 60,
    "min": 1 / 60,
    "hour": 1.0,
    "h": 1.0,
    "hr": 1.0,
    "day": 24.0,
    "month": HOURS_PER_MONTH,
}
_SIZE_GB = {
    "byte": 1 / 1024**3,
    "kbyte": 1 / 1024**2,
    "kb": 1 / 1024**2,
    "mbyte": 1 / 1024,
    "mb": 1 / 1024,
    "gbyte": 1.0,
    "gb": 1.0,
    "gib": 1.0,
    "tbyte": 1024.0,
    "tb": 1024.0,
}
_SCALE = {"k": 1e3, "thousand": 1e3, "m": 1e6, "mln": 1e6, "million": 1e6, "millions": 1e6}


@dataclass(frozen=True)
class _Unit:
    count: float  # how many base quantities one unit holds (1M invocations -> 1e6)
    gb: bool  # the base quantity is a size (priced per GB)
    hours: float | None  # the time the price covers (None: not time-based)


def _parse_unit(text: str) -> _Unit | None:
    """Parse book units ("GB-month", "vCPU-hour", "1M invocations", "10K operations", "hour", "GB")
    and Billing API units ("core*hour", "gbyte*hour", "mbyte*second", "1000*request", "request")."""
    count, gb, hours = 1.0, False, None
    tokens = [t for t in re.split(r"[\s*/\-\u00d7]+", text.strip().lower()) if t]
    if not tokens:
        return None
    for token in tokens:
        number = re.fullmatch(r"(\d+(?:\.\d+)?)([a-z]*)", token)
        if number:
            count *= float(number.group(1))
            suffix = number.group(2)
            if suffix:
                if suffix in _SCALE:
                    count *= _SCALE[suffix]
                elif suffix in _SIZE_GB:
                    gb = True
                    count *= _SIZE_GB[suffix]
                else:
                    return None
        elif token in _SCALE:
            count *= _SCALE[token]
        elif token in _TIME_HOURS:
            hours = (hours or 1.0) * _TIME_HOURS[token]
        elif token in _SIZE_GB:
            gb = True
            count *= _SIZE_GB[token]
        # anything else (core, vcpu, gpu, request, operation, invocation, version, ip, ...) is the
        # counted thing itself; its kind is not checked beyond size vs. non-size.
    return _Unit(count=count, gb=gb, hours=hours)


def unit_factor(book_unit: str, api_unit: str) -> float | None:
    """How many API pricing units make one book unit; ``None`` when they do not convert.

    ``unit_factor("GB-month", "gbyte*hour") == 720``; ``unit_factor("1M invocations", "invocation")
    == 1_000_000``.
    """
    book, api = _parse_unit(book_unit), _parse_unit(api_unit)
    if book is None or api is None or book.gb != api.gb:
        return None
    if (book.hours is None) != (api.hours is None):
        return None
    factor = book.count / api.count
    if book.hours is not None and api.hours is not None:
        factor *= book.hours / api.hours
    return factor


# --------------------------------------------------------------------------------------------
# Refresh
# --------------------------------------------------------------------------------------------

Fetch = Callable[[str, Mapping[str, str]], Mapping[str, Any]]


def urllib_fetch(url: str, headers: Mapping[str, str]) -> Mapping[str, Any]:
    """HTTP GET ``url`` and parse the JSON body (the default ``fetch`` of :func:`refresh_price_book`)."""
    request = urllib.request.Request(url, headers=dict(headers), method="GET")
    with urllib.request.urlopen(request, timeout=60) as response:
        body = response.read().decode("utf-8")
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError(f"{url}: expected a JSON object, got {type(data).__name__}")
    return data


def fetch_sku_pages(token: str, currency: str, fetch: Fetch | None = None) -> list[Mapping[str, Any]]:
    """Every page of ``GET billing/v1/skus?currency=...``, following ``nextPageToken``."""
    get = fetch or urllib_fetch
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    pages: list[Mapping[str, Any]] = []
    page_token = ""
    seen: set[str] = set()
    for _ in range(MAX_PAGES):
        query = {"currency": currency, "pageSize": str(PAGE_SIZE)}
        if page_token:
            query["pageToken"] = page_token
        page = get(f"{BILLING_SKUS_URL}?{urllib.parse.urlencode(query)}", headers)
        pages.append(page)
        page_token = str(page.get("nextPageToken") or "")
        if not page_token or page_token in seen:
            break
        seen.add(page_token)
    return pages


@dataclass
class RefreshReport:
    """What a refresh changed: entry keys updated, entries with no matching SKU, entries skipped."""

    currency: str
    skus: int = 0
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.skus} SKUs read in {self.currency}: {len(self.updated)} entries updated, "
            f"{len(self.unchanged)} unchanged, {len(self.unmatched)} without a matching SKU, "
            f"{len(self.skipped)} skipped"
        )


def _factor_text(factor: float) -> str:
    return f"{factor:.0f}" if float(factor).is_integer() else f"{factor:g}"


def _round(value: float) -> float:
    return float(f"{value:.6g}") if value else 0.0


def refresh_price_book(book_path: Path, token: str, currency: str = "RUB", fetch: Fetch | None = None) -> RefreshReport:
    """Update the book's ``currency`` prices from the Billing API and write the file back.

    An entry is updated when its ``sku`` equals an SKU id or SKU name in the response and the SKU's
    pricing unit converts to the entry's unit (``gbyte*hour`` -> ``GB-month`` multiplies by 720);
    its source becomes the Billing API and its note records the SKU and the pricing version. Entries
    without a matching SKU keep their prices and are reported as unmatched. An entry stops being an
    estimate once both its currencies have come from the Billing API.
    """
    code = currency.strip().upper()
    if code not in CURRENCIES:
        raise ValueError(f"unknown currency {currency!r}: use one of {', '.join(CURRENCIES)}")
    path = Path(book_path)
    raw = read_raw(path)
    book_from_raw(raw, path)  # validate before touching anything
    skus = parse_billing_skus(fetch_sku_pages(token, code, fetch))
    by_name: dict[str, SkuPrice] = {}
    for listed in skus.values():
        if listed.name:
            by_name.setdefault(listed.name, listed)
    report = RefreshReport(currency=code, skus=len(skus))
    field_name = code.lower()
    other = "rub" if field_name == "usd" else "usd"
    today = dt.date.today().isoformat()
    entries: dict[str, Any] = raw["entries"]
    for key, entry in entries.items():
        wanted = str(entry.get("sku") or "").strip()
        sku: SkuPrice | None = (skus.get(wanted) or by_name.get(wanted)) if wanted else None
        if sku is None:
            report.unmatched.append(key)
            continue
        if sku.currency and sku.currency != code:
            report.skipped.append((key, f"SKU {sku.id} priced in {sku.currency}, not {code}"))
            continue
        factor = unit_factor(str(entry["unit"]), sku.pricing_unit)
        if factor is None:
            reason = f"SKU {sku.id} unit {sku.pricing_unit!r} does not convert to {entry['unit']!r}"
            report.skipped.append((key, reason))
            continue
        new_price = _round(sku.unit_price * factor)
        marker = f"{code} from Billing API"
        old_notes = [n for n in str(entry.get("note") or "").split(" | ") if n]
        had_marker = any(n.startswith(marker) for n in old_notes)
        notes = [n for n in old_notes if not n.startswith(marker)]
        notes.insert(
            0,
            f"{marker}: SKU {sku.id} ({sku.name}), {sku.pricing_unit} x {_factor_text(factor)}, "
            f"version effective {sku.effective_time or 'n/a'}, read {today}",
        )
        if had_marker and float(entry.get(field_name, -1)) == new_price:
            report.unchanged.append(key)
        else:
            report.updated.append(key)
        entry[field_name] = new_price
        previous = str(entry.get("source") or "")
        if previous and previous != BILLING_SOURCE and not any(n.startswith("earlier source: ") for n in notes):
            notes.append(f"earlier source: {previous}")
        entry["source"] = BILLING_SOURCE
        if sku.free_quantity and factor:
            entry["free_units"] = _round(sku.free_quantity / factor)
        other_marker = f"{other.upper()} from Billing API"
        if any(n.startswith(other_marker) for n in notes):
            entry["estimate"] = False
        entry["note"] = " | ".join(notes)
    raw["refreshed"] = {
        "date": today,
        "currency": code,
        "updated": len(report.updated),
        "unmatched": len(report.unmatched),
    }
    path.write_text(dump_book(raw), encoding="utf-8")
    book_from_raw(read_raw(path), path)  # the written file must load
    return report
