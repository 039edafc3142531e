"""Cost of a stack's resources: hand-checked totals on small fixtures, formats, unpriced resources listed."""

from __future__ import annotations

import json

import pytest
from pydantic.alias_generators import to_camel

from pricing.book import Preset, Price, PriceBook
from pricing.cost import CostError, price_resources
from stacks.config import UsageAssumptions
from stagectl.cost import render_table
from stagectl.plan import PlannedResource

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
    price("compute.standard-v3-t4.vcpu", "vCPU-hour", 0.01),
    price("compute.standard-v3-t4.ram", "GB-hour", 0.002),
    price("compute.standard-v3-t4.gpu", "GPU-hour", 0.5),
    price("compute.standard-v3-t4.preemptible.gpu", "GPU-hour", 0.1),
    price("compute.standard-v3-t4.preemptible.vcpu", "vCPU-hour", 0.003),
    price("compute.standard-v3-t4.preemptible.ram", "GB-hour", 0.001),
    price("compute.standard-v3.vcpu.50", "vCPU-hour", 0.005),
    price("compute.standard-v3.ram", "GB-hour", 0.002),
    price("disk.network-ssd.gb_month", "GB-month", 0.1),
    price("disk.network-hdd.gb_month", "GB-month", 0.02),
    price("vpc.public_ip", "hour", 0.002),
    price("mdb.postgresql.standard-v2.vcpu.100", "vCPU-hour", 0.016),
    price("mdb.postgresql.standard-v2.ram", "GB-hour", 0.004),
    price("mdb.postgresql.storage.network-ssd.gb_month", "GB-month", 0.1),
    price("k8s.master.regional", "hour", 0.08),
]}, {"s2.micro": Preset("s2.micro", "standard-v2", 2, 8, 100, "https://example.test/presets")})


def resource(kind: str, name: str, **inputs: object) -> PlannedResource:
    token = f"{Y}{kind[0].lower()}{kind[1:]}:{kind}"
    return PlannedResource(f"urn:pulumi:s::p::{token}::{name}", token, name, None, dict(inputs), True)


def cloud(*resources: PlannedResource) -> list[PlannedResource]:
    return list(resources)


def test_serverless_container_hand_checked():
    assumed = usage(requests_per_month=3_000_000, mean_duration_ms=150)
    container = resource("ServerlessContainer", "svc", memory=2048, cores=1, coreFraction=20)
    report = price_resources("mvp", cloud(container), BOOK, assumed)
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
    report = price_resources("mvp", cloud(container), BOOK, assumed)
    # busy 10 h: invocations 1 x 0.10 + memory 10 x 0.02 + vCPU 10 x 0.04 = 0.70
    # provisioned: 2 x 730 h x (1 GB x 0.01 + 1 vCPU x 0.02) = 43.80
    assert report.monthly_total == pytest.approx(0.70 + 43.80)


def test_bucket_uses_its_storage_class_and_request_units():
    assumed = usage(stored_gb=51, put_requests_per_month=20_000, get_requests_per_month=500_000)
    report = price_resources("mvp", cloud(resource("StorageBucket", "b"), resource("StorageBucket", "c",
                                                                      defaultStorageClass="COLD")), BOOK, assumed)
    standard, cold = report.items
    # (51 - 1) x 0.02 = 1.00; 20 x 0.004 = 0.08; 50 x 0.003 = 0.15
    assert standard.monthly == pytest.approx(1.23)
    # 51 x 0.01 = 0.51 (no free tier on cold); same requests
    assert cold.monthly == pytest.approx(0.51 + 0.08 + 0.15)


def test_free_and_unpriced_resources_are_listed_not_dropped():
    report = price_resources("mvp", cloud(resource("IamServiceAccount", "sa"), resource("MdbMongodbCluster", "mongo"),
                             resource("KmsSymmetricKey", "k")), BOOK, usage())
    status = {i.name: i.status for i in report.items}
    assert status == {"sa": "free", "mongo": "unpriced", "k": "priced"}
    data = report.to_json()
    assert data["unpriced"] == [{"urn": report.items[1].urn, "type": report.items[1].type, "name": "mongo",
                                 "reason": "no price model for yandex:index/mdbMongodbCluster:MdbMongodbCluster"}]
    assert "not priced" in render_table(report)
    assert "* price is an estimate" in render_table(report)


def test_json_shape_and_currency():
    report = price_resources("mvp", cloud(resource("KmsSymmetricKey", "k")), BOOK, usage(), currency="RUB",
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
        price_resources("mvp", cloud(resource("LockboxSecret", "s")), BOOK, usage())


def test_gpu_vm_always_on_versus_scheduled_preemptible():
    vm = resource("ComputeInstance", "vm", platformId="standard-v3-t4",
                  resources={"gpus": 1, "cores": 8, "memory": 32, "coreFraction": 100},
                  bootDisk={"initializeParams": {"type": "network-ssd", "size": 100}},
                  networkInterfaces=[{"nat": True}])
    on = price_resources("mvp", cloud(vm), BOOK, usage(gpu_hours_per_month=730))
    # 730 h x (8 x 0.01 + 32 x 0.002 + 0.5) = 470.12; disk 100 x 0.1 = 10; ephemeral IP 730 x 0.002 = 1.46
    assert on.monthly_total == pytest.approx(470.12 + 10 + 1.46)
    cheap = resource("ComputeInstance", "vm", platformId="standard-v3-t4",
                     resources={"gpus": 1, "cores": 8, "memory": 32}, schedulingPolicy={"preemptible": True},
                     bootDisk={"initializeParams": {"type": "network-ssd", "size": 100}},
                     networkInterfaces=[{"nat": True, "natIpAddress": "[computed]"}])
    scheduled = price_resources("mvp", cloud(cheap), BOOK, usage(gpu_hours_per_month=200))
    # 200 h x (8 x 0.003 + 32 x 0.001 + 0.1) = 31.2; disk 10; the static address is priced on its own
    assert scheduled.monthly_total == pytest.approx(31.2 + 10)


def test_managed_postgresql_by_preset_hosts_and_disk():
    cluster = resource("MdbPostgresqlCluster", "pg", hosts=[{"zone": "a"}, {"zone": "b"}],
                       config={"resources": {"resourcePresetId": "s2.micro", "diskTypeId": "network-ssd",
                                             "diskSize": 20}})
    report = price_resources("mvp", cloud(cluster), BOOK, usage(hours_per_month=730))
    # 2 hosts x 730 h x (2 x 0.016 + 8 x 0.004) = 93.44; storage 2 x 20 x 0.1 = 4
    assert report.monthly_total == pytest.approx(93.44 + 4)
    unknown = resource("MdbPostgresqlCluster", "pg", config={"resources": {"resourcePresetId": "z9.giant"}})
    with pytest.raises(CostError, match=r"z9\.giant"):
        price_resources("mvp", cloud(unknown), BOOK, usage())


def test_kubernetes_master_and_autoscaled_node_group():
    cluster = resource("KubernetesCluster", "k8s", master={"regional": {"region": "ru-central1"}})
    nodes = resource("KubernetesNodeGroup", "cpu",
                     instanceTemplate={"platformId": "standard-v3",
                                       "resources": {"cores": 2, "memory": 4, "coreFraction": 50},
                                       "bootDisk": {"type": "network-hdd", "size": 64}},
                     scalePolicy={"autoScale": {"min": 1, "max": 5, "initial": 2}})
    report = price_resources("mvp", cloud(cluster, nodes), BOOK, usage(hours_per_month=730))
    master, group = report.items
    assert master.monthly == pytest.approx(730 * 0.08)
    # 2 nodes x 730 h x (2 x 0.005 + 4 x 0.002) = 26.28; disks 2 x 64 x 0.02 = 2.56
    assert group.monthly == pytest.approx(26.28 + 2.56)


def test_component_presets_agree_with_the_price_book():
    from components.postgres import RESOURCE_PRESETS
    from pricing.book import load_price_book

    book = load_price_book()
    for name, preset in RESOURCE_PRESETS.items():
        priced = book.preset(name)
        assert (priced.cores, priced.memory_gb) == (preset.cores, preset.memory_gb), name
        assert (priced.core_fraction < 100) == preset.burstable, name
