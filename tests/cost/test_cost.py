"""Cost of a plan: hand-checked totals on small fixtures, formats, unpriced resources listed."""

from __future__ import annotations

import json

import pytest
from pydantic.alias_generators import to_camel

from stacks.config import UsageAssumptions
from stagectl.cost import CostError, price_plan, render_table
from stagectl.plan import Plan, PlannedResource
from stagectl.prices import Price, PriceBook

Y = "yandex:index/"


def usage(**settings: object) -> UsageAssumptions:
    return UsageAssumptions.model_validate({to_camel(k): v for k, v in settings.items()})


def price(key: str, unit: str, usd: float, free: float = 0.0, estimate: bool = False) -> Price:
    return Price(key, unit, usd, usd * 100, "sku", "https://example.test/pricing", estimate,
                 "n" if estimate else "", free)


BOOK = PriceBook("2026-01-01", "ru-central1", {p.key: p for p in [
    price("serverless.invocations", "1M invocations", 0.10, free=1),
    price("serverless.memory", "GB-hour", 0.02, free=10),
    price("serverless.vcpu", "vCPU-hour", 0.04, free=5),
    price("serverless.provisioned.memory", "GB-hour", 0.01),
    price("serverless.provisioned.vcpu", "vCPU-hour", 0.02),
    price("storage.standard.gb_month", "GB-month", 0.02, free=1),
    price("storage.cold.gb_month", "GB-month", 0.01),
    price("storage.put_ops", "1K operations", 0.004),
    price("storage.get_ops", "10K operations", 0.003),
    price("kms.key_version", "version-month", 0.5, estimate=True),
]}, {})


def resource(kind: str, name: str, **inputs: object) -> PlannedResource:
    token = f"{Y}{kind[0].lower()}{kind[1:]}:{kind}"
    return PlannedResource(f"urn:pulumi:s::p::{token}::{name}", token, name, None, dict(inputs), True)


def plan(*resources: PlannedResource) -> Plan:
    return Plan("mvp", "aistack", list(resources))


def test_serverless_container_hand_checked():
    assumed = usage(requests_per_month=3_000_000, mean_duration_ms=150)
    container = resource("ServerlessContainer", "svc", memory=2048, cores=1, coreFraction=20)
    report = price_plan(plan(container), BOOK, assumed)
    # busy time: 3e6 x 150 ms = 125 h
    # invocations: (3 - 1) M x 0.10 = 0.20
    # memory: (2 GB x 125 h - 10) x 0.02 = 4.80
    # vCPU: (0.2 x 125 - 5) x 0.04 = 0.80
    assert [round(line.monthly, 6) for line in report.items[0].lines] == [0.2, 4.8, 0.8]
    assert report.monthly_total == pytest.approx(5.8)


def test_free_tier_can_be_turned_off_and_provisioned_instances_are_billed():
    assumed = usage(requests_per_month=1_000_000, mean_duration_ms=36, free_tier=False,
                             hours_per_month=730)
    container = resource("ServerlessContainer", "svc", memory=1024, cores=1, coreFraction=100,
                         provisionPolicy={"minInstances": 2})
    report = price_plan(plan(container), BOOK, assumed)
    # busy 10 h: invocations 1 x 0.10 + memory 10 x 0.02 + vCPU 10 x 0.04 = 0.70
    # provisioned: 2 x 730 h x (1 GB x 0.01 + 1 vCPU x 0.02) = 43.80
    assert report.monthly_total == pytest.approx(0.70 + 43.80)


def test_bucket_uses_its_storage_class_and_request_units():
    assumed = usage(stored_gb=51, put_requests_per_month=20_000, get_requests_per_month=500_000)
    report = price_plan(plan(resource("StorageBucket", "b"), resource("StorageBucket", "c",
                                                                      defaultStorageClass="COLD")), BOOK, assumed)
    standard, cold = report.items
    # (51 - 1) x 0.02 = 1.00; 20 x 0.004 = 0.08; 50 x 0.003 = 0.15
    assert standard.monthly == pytest.approx(1.23)
    # 51 x 0.01 = 0.51 (no free tier on cold); same requests
    assert cold.monthly == pytest.approx(0.51 + 0.08 + 0.15)


def test_free_and_unpriced_resources_are_listed_not_dropped():
    report = price_plan(plan(resource("IamServiceAccount", "sa"), resource("MdbMongodbCluster", "mongo"),
                             resource("KmsSymmetricKey", "k")), BOOK, usage())
    status = {i.name: i.status for i in report.items}
    assert status == {"sa": "free", "mongo": "unpriced", "k": "priced"}
    data = report.to_json()
    assert data["unpriced"] == [{"urn": report.items[1].urn, "type": report.items[1].type, "name": "mongo",
                                 "reason": "no price model for yandex:index/mdbMongodbCluster:MdbMongodbCluster"}]
    assert "not priced" in render_table(report)
    assert "* price is an estimate" in render_table(report)


def test_json_shape_and_currency():
    report = price_plan(plan(resource("KmsSymmetricKey", "k")), BOOK, usage(), currency="RUB",
                        budget=40.0)
    data = json.loads(report.dumps())
    assert {"stack", "currency", "monthly_total", "prices_as_of", "items", "assumptions"} <= set(data)
    assert data["currency"] == "RUB" and data["monthly_total"] == 50.0 and data["prices_as_of"] == "2026-01-01"
    item = data["items"][0]
    assert set(item) == {"urn", "type", "name", "monthly", "lines"}
    assert item["lines"] == [{"what": "1 active key version", "quantity": 1, "unit": "version-month",
                              "unit_price": 50.0, "monthly": 50.0}]
    assert data["assumptions"]["requestsPerMonth"] == 1_000_000
    assert data["seed_estimate"]["monthly"] == 2.5
    assert "Budget: ₽40.00 (over)" in render_table(report)


def test_missing_price_is_a_clear_error():
    with pytest.raises(CostError, match=r"lockbox\.secret_version"):
        price_plan(plan(resource("LockboxSecret", "s")), BOOK, usage())
