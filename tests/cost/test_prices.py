"""The price book (pricing/yandex-cloud.yaml), its loader, the Billing API parser and `stagectl prices`."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from pricing import billing
from pricing.billing import BILLING_SKUS_URL, parse_billing_skus, refresh_price_book, unit_factor
from pricing.book import Price, PriceBook, PriceBookError, default_book_path, dump_book, load_price_book
from stagectl.prices import add_commands

FIXTURES = Path(__file__).parent / "fixtures"
NOW = dt.datetime(2026, 11, 26, tzinfo=dt.UTC)

# The keys the cost engine relies on (issue 6, item 1).
CONTRACT_KEYS = [
    "serverless.invocations",
    "serverless.memory",
    "serverless.vcpu",
    "serverless.provisioned.memory",
    "serverless.provisioned.vcpu",
    "storage.standard.gb_month",
    "storage.cold.gb_month",
    "storage.ice.gb_month",
    "storage.put_ops",
    "storage.get_ops",
    "registry.gb_month",
    "compute.standard-v3.vcpu.100",
    "compute.standard-v3.vcpu.50",
    "compute.standard-v3.vcpu.20",
    "compute.standard-v3.ram",
    "compute.standard-v3.preemptible.vcpu.100",
    "compute.standard-v3.preemptible.vcpu.50",
    "compute.standard-v3.preemptible.vcpu.20",
    "compute.standard-v3.preemptible.ram",
    "compute.standard-v3-t4.vcpu",
    "compute.standard-v3-t4.ram",
    "compute.standard-v3-t4.gpu",
    "compute.standard-v3-t4.preemptible.vcpu",
    "compute.standard-v3-t4.preemptible.ram",
    "compute.standard-v3-t4.preemptible.gpu",
    "compute.gpu-standard-v3.vcpu",
    "compute.gpu-standard-v3.ram",
    "compute.gpu-standard-v3.gpu",
    "compute.gpu-standard-v3.preemptible.vcpu",
    "compute.gpu-standard-v3.preemptible.ram",
    "compute.gpu-standard-v3.preemptible.gpu",
    "disk.network-hdd.gb_month",
    "disk.network-ssd.gb_month",
    "disk.network-ssd-nonreplicated.gb_month",
    "k8s.master.zonal",
    "k8s.master.regional",
    "vpc.public_ip",
    "vpc.public_ip.reserved_idle",
    "vpc.nat_gateway",
    "vpc.nat_gateway.traffic",
    "vpc.egress_traffic",
    "nlb.balancer",
    "logging.ingest",
    "logging.storage",
    "lockbox.secret_version",
    "lockbox.operations",
    "kms.key_version",
    "kms.operations",
    "monitoring.metrics_write",
] + [
    f"mdb.{db}.{suffix}"
    for db in ("postgresql", "clickhouse")
    for suffix in (
        "standard-v3.vcpu.100",
        "standard-v3.ram",
        "standard-v3.vcpu.50",
        "standard-v3.vcpu.20",
        "standard-v2.vcpu.100",
        "standard-v2.ram",
        "standard-v2.vcpu.50",
        "storage.network-ssd.gb_month",
        "storage.network-hdd.gb_month",
        "storage.local-ssd.gb_month",
        "storage.network-ssd-nonreplicated.gb_month",
        "backup.gb_month",
    )
]

PRESETS = {
    # name: (platform, cores, memory_gb, core_fraction), as the MDB host-class pages list them
    "s2.micro": ("standard-v2", 2, 8, 100),
    "s2.small": ("standard-v2", 4, 16, 100),
    "s2.medium": ("standard-v2", 8, 32, 100),
    "s2.large": ("standard-v2", 12, 48, 100),
    "b2.medium": ("standard-v2", 2, 4, 50),
    "s3-c2-m8": ("standard-v3", 2, 8, 100),
    "s3-c4-m16": ("standard-v3", 4, 16, 100),
    "s3-c8-m32": ("standard-v3", 8, 32, 100),
    "b3-c1-m4": ("standard-v3", 2, 4, 50),
    "m3-c2-m16": ("standard-v3", 2, 16, 100),
}


def fixture_pages() -> list[dict[str, Any]]:
    return [json.loads((FIXTURES / name).read_text()) for name in ("skus-page-1.json", "skus-page-2.json")]


class FakeFetch:
    """Serves the fixture pages like the Billing API: page 2 only for ``pageToken=page-2``."""

    def __init__(self, pages: list[dict[str, Any]] | None = None) -> None:
        self.pages = pages if pages is not None else fixture_pages()
        self.calls: list[tuple[str, dict[str, str]]] = []

    def __call__(self, url: str, headers: Mapping[str, str]) -> Mapping[str, Any]:
        self.calls.append((url, dict(headers)))
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        token = query.get("pageToken", [""])[0]
        index = 0 if not token else int(token.rsplit("-", 1)[1]) - 1
        return self.pages[index]


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return load_price_book()


@pytest.fixture
def book_copy(tmp_path: Path) -> Path:
    target = tmp_path / "yandex-cloud.yaml"
    shutil.copyfile(default_book_path(), target)
    return target


# ---------------------------------------------------------------------------- the book itself


def test_default_path_is_the_project_book() -> None:
    path = default_book_path()
    assert path.name == "yandex-cloud.yaml"
    assert path.parent.name == "pricing"
    assert (path.parent.parent / "Pulumi.yaml").is_file()


def test_book_loads_and_validates(book: PriceBook) -> None:
    assert book.region == "ru-central1"
    dt.date.fromisoformat(book.as_of)
    assert len(book.entries) >= len(CONTRACT_KEYS)
    for key, price in book.entries.items():
        assert price.key == key
        assert price.unit
        assert price.usd >= 0 and price.rub >= 0
        assert price.source.startswith("https://"), key
        if price.estimate:
            assert price.note, f"{key} is an estimate without a note"


@pytest.mark.parametrize("key", CONTRACT_KEYS)
def test_contract_key_present(book: PriceBook, key: str) -> None:
    price = book.price(key)
    assert isinstance(price, Price)


def test_units_of_contract_keys(book: PriceBook) -> None:
    assert book.price("serverless.invocations").unit == "1M invocations"
    assert book.price("serverless.memory").unit == "GB-hour"
    assert book.price("serverless.vcpu").unit == "vCPU-hour"
    assert book.price("compute.standard-v3-t4.gpu").unit == "GPU-hour"
    assert book.price("k8s.master.regional").unit == "hour"
    assert book.price("lockbox.operations").unit == "10K operations"
    for key in CONTRACT_KEYS:
        if key.endswith(".gb_month"):
            assert book.price(key).unit == "GB-month", key


def test_free_tiers(book: PriceBook) -> None:
    assert book.price("serverless.invocations").free_units == 1
    assert book.price("serverless.memory").free_units == 10
    assert book.price("serverless.vcpu").free_units == 5
    assert book.price("storage.standard.gb_month").free_units == 1
    assert book.price("logging.ingest").free_units > 0
    assert book.price("vpc.egress_traffic").free_units == 100
    assert book.price("compute.standard-v3.vcpu.100").free_units == 0


def test_serverless_prices_are_the_published_formula(book: PriceBook) -> None:
    assert book.price("serverless.memory").usd == pytest.approx(0.0256)
    assert book.price("serverless.vcpu").usd == pytest.approx(0.0384)
    assert book.price("serverless.invocations").usd == pytest.approx(0.128)
    assert "core_fraction" in book.price("serverless.vcpu").note


def test_prices_are_consistent(book: PriceBook) -> None:
    def usd(key: str) -> float:
        return book.price(key).usd

    assert usd("compute.standard-v3.preemptible.vcpu.100") < usd("compute.standard-v3.vcpu.100")
    assert usd("compute.standard-v3-t4.preemptible.gpu") < usd("compute.standard-v3-t4.gpu")
    assert usd("compute.gpu-standard-v3.gpu") > usd("compute.standard-v3-t4.gpu")
    assert usd("compute.standard-v3.vcpu.20") < usd("compute.standard-v3.vcpu.50") < usd("compute.standard-v3.vcpu.100")
    assert usd("storage.ice.gb_month") < usd("storage.cold.gb_month") < usd("storage.standard.gb_month")
    assert usd("k8s.master.zonal") < usd("k8s.master.regional")
    # both currencies describe the same price: RUB with VAT / USD without VAT stays near the stated rates
    for key, price in book.entries.items():
        if price.usd and price.rub:
            assert 100 <= price.rub / price.usd <= 130, key


def test_every_estimate_is_flagged_and_explained(book: PriceBook) -> None:
    estimates = [p for p in book.entries.values() if p.estimate]
    assert estimates, "a book built from stored pages has estimates"
    assert all(len(p.note) > 20 for p in estimates)
    sourced = [p for p in book.entries.values() if not p.estimate]
    assert sourced, "some entries are read from Yandex pages in both currencies"


def test_amount(book: PriceBook) -> None:
    price = book.price("compute.standard-v3.vcpu.100")
    assert price.amount("USD") == price.usd
    assert price.amount("rub") == price.rub
    with pytest.raises(ValueError, match="unknown currency"):
        price.amount("EUR")


def test_missing_key_names_close_keys(book: PriceBook) -> None:
    with pytest.raises(KeyError) as info:
        book.price("compute.standard-v3.vcpu.10")
    message = str(info.value)
    assert "compute.standard-v3.vcpu.100" in message
    with pytest.raises(KeyError, match=r"s2\.micro"):
        book.preset("s2.mikro")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets(book: PriceBook, name: str) -> None:
    preset = book.preset(name)
    platform, cores, memory, fraction = PRESETS[name]
    got = (preset.platform, preset.cores, preset.memory_gb, preset.core_fraction)
    assert got == (platform, cores, memory, fraction)
    assert preset.source.startswith("https://yandex.cloud/")


def test_presets_price_through_platform_keys(book: PriceBook) -> None:
    """Every preset's platform and fraction has a per-vCPU price for both databases."""
    for preset in book.presets.values():
        if preset.platform == "standard-v1":
            continue
        for db in ("postgresql", "clickhouse"):
            book.price(f"mdb.{db}.{preset.platform}.vcpu.{preset.core_fraction}")
            book.price(f"mdb.{db}.{preset.platform}.ram")


def test_file_is_in_canonical_layout() -> None:
    """The writer reproduces the file byte for byte, so a refresh changes only prices and notes."""
    text = default_book_path().read_text(encoding="utf-8")
    assert dump_book(yaml.safe_load(text)) == text


# ---------------------------------------------------------------------------- validation


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "book.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def _minimal() -> dict[str, Any]:
    return {
        "as_of": "2025-09-02",
        "region": "ru-central1",
        "entries": {
            "a.b": {
                "unit": "hour",
                "usd": 1.0,
                "rub": 125.0,
                "sku": "x",
                "source": "https://example.org/p",
                "estimate": False,
            },
        },
        "presets": {},
    }


def test_minimal_book_loads(tmp_path: Path) -> None:
    book = load_price_book(_write(tmp_path, _minimal()))
    assert book.price("a.b").rub == 125.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e.pop("unit"), "missing 'unit'"),
        (lambda e: e.update(usd=-1), "usd: must be a finite number >= 0"),
        (lambda e: e.update(rub="1.0"), "rub: must be a number"),
        (lambda e: e.update(source="http://example.org"), "must be a URL starting with https://"),
        (lambda e: e.update(estimate=True), "an estimate needs a 'note'"),
        (lambda e: e.update(colour="red"), "unknown field(s) colour"),
    ],
)
def test_invalid_entries_are_reported(tmp_path: Path, change: Any, message: str) -> None:
    data = _minimal()
    change(data["entries"]["a.b"])
    with pytest.raises(PriceBookError) as info:
        load_price_book(_write(tmp_path, data))
    assert message in str(info.value)
    assert "entries.a.b" in str(info.value)


def test_invalid_preset_and_top_level(tmp_path: Path) -> None:
    data = _minimal()
    data["presets"] = {
        "x1": {
            "platform": "standard-v3",
            "cores": 2,
            "memory_gb": 8,
            "core_fraction": 30,
            "source": "https://example.org",
        }
    }
    data["entrees"] = {}
    with pytest.raises(PriceBookError) as info:
        load_price_book(_write(tmp_path, data))
    assert "presets.x1.core_fraction" in str(info.value)
    assert "unknown top-level key(s) entrees" in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PriceBookError, match="cannot read the price book"):
        load_price_book(tmp_path / "nope.yaml")


# ---------------------------------------------------------------------------- Billing API parser


def test_parse_billing_skus_fixture() -> None:
    skus = parse_billing_skus(fixture_pages(), now=NOW)
    assert set(skus) == {
        "dn2k3vqlk9snp1jv351u",
        "dn2ilq72mjc3bej6j74p",
        "dn27ajm6m8mnfcshbi61",
        "dn2fixtureinvocation01",
        "dn229q5mnmp58t58tfel",
        "dn2fixtureloggingwrite",
        "dn2in5tir8ghu37ik2al",
    }  # the SKU without pricing versions is left out
    cpu = skus["dn2k3vqlk9snp1jv351u"]
    assert cpu.name == "compute.vm.cpu.c100.v3"
    assert cpu.pricing_unit == "core*hour"
    assert cpu.unit_price == pytest.approx(1.24)  # latest version not in the future (2099 is ignored)
    assert cpu.effective_time == "2026-04-30T21:00:00Z"
    assert cpu.currency == "RUB"
    assert skus["dn2ilq72mjc3bej6j74p"].unit_price == pytest.approx(0.33)  # 9-digit fraction parses


def test_parser_skips_free_tier_and_prefers_contract_price() -> None:
    skus = parse_billing_skus(fixture_pages(), now=NOW)
    invocations = skus["dn2fixtureinvocation01"]
    assert invocations.unit_price == pytest.approx(0.000016)
    assert invocations.free_quantity == 1_000_000
    logging_write = skus["dn2fixtureloggingwrite"]
    assert logging_write.pricing_type == "CONTRACT_PRICE"
    assert logging_write.unit_price == pytest.approx(20.0)
    assert logging_write.free_quantity == 5


def test_parser_uses_older_version_before_a_price_change() -> None:
    skus = parse_billing_skus(fixture_pages(), now=dt.datetime(2026, 1, 15, tzinfo=dt.UTC))
    assert skus["dn2k3vqlk9snp1jv351u"].unit_price == pytest.approx(1.12)
    assert "dn2ilq72mjc3bej6j74p" not in skus  # its only version is still in the future


def test_parser_free_sku_and_junk() -> None:
    pages = [
        {
            "skus": [
                {
                    "id": "free",
                    "name": "n",
                    "pricingUnit": "gbyte",
                    "pricingVersions": [
                        {
                            "type": "STREET_PRICE",
                            "effectiveTime": "2025-01-01T00:00:00Z",
                            "pricingExpressions": [
                                {"rates": [{"startPricingQuantity": "0", "unitPrice": "0", "currency": "RUB"}]}
                            ],
                        }
                    ],
                },
                {"id": "bad", "pricingVersions": [{"effectiveTime": "not a date"}]},
                "not a mapping",
                {"name": "no id"},
            ]
        },
        {"skus": None},
    ]
    skus = parse_billing_skus(pages, now=NOW)
    assert list(skus) == ["free"]
    assert skus["free"].unit_price == 0.0


@pytest.mark.parametrize(
    ("book_unit", "api_unit", "factor"),
    [
        ("vCPU-hour", "core*hour", 1.0),
        ("GB-hour", "gbyte*hour", 1.0),
        ("GB-month", "gbyte*hour", 720.0),
        ("GB-month", "mbyte*second", 1024 * 720 * 3600),
        ("1M invocations", "invocation", 1_000_000.0),
        ("10K operations", "request", 10_000.0),
        ("10K operations", "1000*request", 10.0),
        ("hour", "hour", 1.0),
        ("GB", "gbyte", 1.0),
        ("version-month", "version*hour", 720.0),
    ],
)
def test_unit_factor(book_unit: str, api_unit: str, factor: float) -> None:
    assert unit_factor(book_unit, api_unit) == pytest.approx(factor)


@pytest.mark.parametrize(
    ("book_unit", "api_unit"), [("GB-month", "core*hour"), ("hour", "gbyte"), ("GB", "gbyte*hour")]
)
def test_unit_factor_refuses_mismatches(book_unit: str, api_unit: str) -> None:
    assert unit_factor(book_unit, api_unit) is None


# ---------------------------------------------------------------------------- refresh


def test_refresh_updates_matching_entries(book_copy: Path) -> None:
    before = load_price_book(book_copy)
    fetch = FakeFetch()
    report = refresh_price_book(book_copy, "t0ken", currency="RUB", fetch=fetch)

    # paging: first page without a token, then the page the first one named
    assert len(fetch.calls) == 2
    first, second = (urllib.parse.parse_qs(urllib.parse.urlsplit(url).query) for url, _ in fetch.calls)
    assert fetch.calls[0][0].startswith(BILLING_SKUS_URL + "?")
    assert first["currency"] == ["RUB"] and "pageToken" not in first
    assert second["pageToken"] == ["page-2"]
    assert all(headers["Authorization"] == "Bearer t0ken" for _, headers in fetch.calls)

    expected = {
        "compute.standard-v3.vcpu.100",
        "compute.standard-v3-t4.vcpu",  # compute.vm.cpu.c100.v3
        "compute.standard-v3.ram",
        "compute.standard-v3-t4.ram",  # compute.vm.ram.v3
        "disk.network-ssd.gb_month",  # nbs.network-nvme.allocated, gbyte*hour -> GB-month
        "serverless.invocations",  # per invocation -> per 1M, free tier
        "vpc.public_ip",
        "logging.ingest",  # contract price
    }
    assert set(report.updated) == expected
    assert report.skipped == []
    assert len(report.unmatched) == len(before.entries) - len(expected)
    assert report.skus == 7
    assert "8 entries updated" in report.summary()

    after = load_price_book(book_copy)
    assert after.price("disk.network-ssd.gb_month").rub == pytest.approx(0.0199 * 720)
    assert after.price("serverless.invocations").rub == pytest.approx(16.0)
    assert after.price("serverless.invocations").free_units == pytest.approx(1.0)
    assert after.price("logging.ingest").rub == pytest.approx(20.0)
    for key in expected:
        price, old = after.price(key), before.price(key)
        assert price.usd == old.usd  # the other currency is kept
        assert price.source == billing.BILLING_SOURCE
        assert "RUB from Billing API" in price.note
        assert f"earlier source: {old.source}" in price.note  # the USD price keeps its provenance
        assert price.estimate == old.estimate  # USD still unconfirmed
    for key in report.unmatched:
        assert after.price(key) == before.price(key)
    assert after.presets == before.presets
    assert yaml.safe_load(book_copy.read_text())["refreshed"]["updated"] == len(expected)


def test_refresh_in_both_currencies_clears_the_estimate_flag(book_copy: Path) -> None:
    refresh_price_book(book_copy, "t", currency="RUB", fetch=FakeFetch())
    usd_page = {
        "skus": [
            {
                "id": "dn229q5mnmp58t58tfel",
                "name": "network.public_fips",
                "pricingUnit": "hour",
                "pricingVersions": [
                    {
                        "type": "STREET_PRICE",
                        "effectiveTime": "2025-12-31T21:00:00Z",
                        "pricingExpressions": [
                            {"rates": [{"startPricingQuantity": "0", "unitPrice": "0.00216", "currency": "USD"}]}
                        ],
                    }
                ],
            }
        ]
    }
    report = refresh_price_book(book_copy, "t", currency="USD", fetch=FakeFetch([usd_page]))
    assert report.updated == ["vpc.public_ip"]
    price = load_price_book(book_copy).price("vpc.public_ip")
    assert price.usd == pytest.approx(0.00216)
    assert price.rub == pytest.approx(0.26352)
    assert price.estimate is False
    assert "USD from Billing API" in price.note and "RUB from Billing API" in price.note


def test_refresh_matches_by_id_and_skips_units_that_do_not_convert(book_copy: Path) -> None:
    raw = yaml.safe_load(book_copy.read_text())
    raw["entries"]["k8s.master.regional"]["sku"] = "dn2in5tir8ghu37ik2al"  # an SKU id, priced per zone-hour
    raw["entries"]["nlb.balancer"]["sku"] = "dns.zones.v1"
    raw["entries"]["nlb.balancer"]["unit"] = "GB"  # a GB price cannot come from a per-hour SKU
    book_copy.write_text(dump_book(raw), encoding="utf-8")
    report = refresh_price_book(book_copy, "t", fetch=FakeFetch())
    assert "k8s.master.regional" in report.updated
    assert load_price_book(book_copy).price("k8s.master.regional").rub == pytest.approx(0.054)
    assert [key for key, _ in report.skipped] == ["nlb.balancer"]
    assert "does not convert" in report.skipped[0][1]


def test_refresh_rejects_unknown_currency(book_copy: Path) -> None:
    with pytest.raises(ValueError, match="unknown currency"):
        refresh_price_book(book_copy, "t", currency="EUR", fetch=FakeFetch())


# ---------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stagectl")
    sub = parser.add_subparsers(dest="command", required=True)
    add_commands(sub)
    return parser


def test_cli_prices_show(capsys: pytest.CaptureFixture[str], book: PriceBook) -> None:
    args = _parser().parse_args(["prices", "show"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:4] == ["key", "unit", "USD", "RUB"]
    for key in ("compute.standard-v3-t4.gpu", "serverless.invocations", "k8s.master.zonal"):
        assert key in out
    assert f"{len(book.entries)} prices" in out
    assert "as of " + book.as_of in out


def test_cli_prices_show_json(capsys: pytest.CaptureFixture[str], book_copy: Path) -> None:
    args = _parser().parse_args(["prices", "show", "--json", "--file", str(book_copy)])
    assert args.func(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["entries"]["serverless.memory"]["usd"] == pytest.approx(0.0256)
    assert data["presets"]["s3-c2-m8"]["cores"] == 2


def test_cli_show_reports_a_broken_book(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("as_of: yesterday\nentries: {}\n", encoding="utf-8")
    args = _parser().parse_args(["prices", "show", "--file", str(broken)])
    assert args.func(args) == 2
    assert "as_of" in capsys.readouterr().err


def test_cli_prices_without_action_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["prices"])
    assert args.func(args) == 2
    assert "show" in capsys.readouterr().err


def test_cli_refresh_needs_a_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, book_copy: Path
) -> None:
    for name in ("YC_TOKEN", "YC_IAM_TOKEN", "IAM_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    args = _parser().parse_args(["prices", "refresh", "--file", str(book_copy)])
    assert args.func(args) == 2
    assert "YC_TOKEN" in capsys.readouterr().err


def test_cli_refresh_with_env_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, book_copy: Path
) -> None:
    fetch = FakeFetch()
    monkeypatch.setattr(billing, "urllib_fetch", fetch)
    monkeypatch.setenv("YC_TOKEN", "env-token")
    args = _parser().parse_args(["prices", "refresh", "--currency", "rub", "--file", str(book_copy)])
    assert args.currency == "RUB"
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "8 entries updated" in out
    assert "updated    vpc.public_ip" in out
    assert fetch.calls[0][1]["Authorization"] == "Bearer env-token"


def test_cli_refresh_reports_api_failure(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, book_copy: Path
) -> None:
    def failing(url: str, headers: Mapping[str, str]) -> Mapping[str, Any]:
        raise OSError("connection refused")

    monkeypatch.setattr(billing, "urllib_fetch", failing)
    original = book_copy.read_text()
    args = _parser().parse_args(["prices", "refresh", "--token", "t", "--file", str(book_copy)])
    assert args.func(args) == 1
    assert "connection refused" in capsys.readouterr().err
    assert book_copy.read_text() == original
