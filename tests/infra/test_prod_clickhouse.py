"""Managed ClickHouse: versions, presets, topology and disks refused with their rule; private hosts; secret password."""

from __future__ import annotations

import pytest

from components import clickhouse
from components.base import ValidationError
from components.clickhouse import Clickhouse, ClickhouseArgs
from stagectl import plan as plan_module

LABELS = {"project": "aistack", "stage": "prod"}
PLAINTEXT = "Plaintext-ClickHouse-0123456789ab"
SUBNETS = {"ru-central1-a": "subnet-a", "ru-central1-b": "subnet-b", "ru-central1-d": "subnet-d"}


def ch_args(**kw: object) -> ClickhouseArgs:
    base: dict[str, object] = {"folder_id": "f", "network_id": "net-1", "subnet_ids": SUBNETS,
                               "security_group_ids": ["sg-ch"]}
    return ClickhouseArgs(**{**base, **kw})  # type: ignore[arg-type]


@pytest.fixture
def random_passwords(monkeypatch):
    original = plan_module._Mocks.new_resource

    def new_resource(self, args):
        rid, state = original(self, args)
        if args.typ == "random:index/randomPassword:RandomPassword":
            state = {**state, "result": PLAINTEXT}
        return rid, state

    monkeypatch.setattr(plan_module._Mocks, "new_resource", new_resource)


@pytest.mark.parametrize("preset", ["s3-c2-m8", "s2.micro", "s2.2xlarge", "b3-c1-m4", "m3-c4-m32"])
def test_presets_are_accepted(preset):
    assert clickhouse.check_preset(preset).memory_gb >= 4


@pytest.mark.parametrize(("preset", "largest"), [("s2.micro", 4096), ("m2.small", 4096), ("s3-c2-m8", 8192),
                                                 ("b3-c1-m4", 512), ("b2.medium", 512)])
def test_network_disks_follow_the_host_generation(preset, largest):
    """Managed ClickHouse: network disks up to 4096 GB on Cascade Lake (s2, m2), 8192 GB on Ice Lake."""
    clickhouse.check_disk(preset, "network-ssd", largest, 1)
    with pytest.raises(ValidationError, match=f"out of range for network-ssd on {preset} in Managed ClickHouse: "
                                              f"allowed 10-{largest} GB"):
        clickhouse.check_disk(preset, "network-ssd", largest + 1, 1)


def test_unknown_preset_lists_the_allowed_ones():
    with pytest.raises(ValidationError) as info:
        clickhouse.check_preset("s2.huge")
    message = str(info.value)
    assert message.startswith("resource preset 's2.huge' is not a Managed ClickHouse host class: allowed b2.medium, "
                              "s2.micro, s2.small")
    assert message.endswith("(check `yc managed-clickhouse resource-preset list` for your cloud)")


@pytest.mark.parametrize(("kw", "message"), [
    ({"version": "23.8"}, "ClickHouse version '23.8' is not offered: allowed 24.8, 25.3, 25.8, 25.9, 25.10"),
    ({"version": "24.3"}, "ClickHouse version '24.3' is not offered"),
    ({"shards": 0}, "shards 0 is out of range: allowed 1-10"),
    ({"replicas": 8}, "replicas 8 per shard is out of range: allowed 1-7"),
    ({"disk_type": "network-nvme"}, "disk type 'network-nvme' is invalid: allowed network-ssd, network-hdd"),
    ({"disk_size_gb": 5}, "disk size 5 GB is out of range for network-ssd on s3-c2-m8 in Managed ClickHouse: "
                          "allowed 10-8192 GB"),
    ({"disk_type": "local-ssd", "disk_size_gb": 368}, "local-ssd is not replicated by the cloud: it needs 2 or more "
                                                      "replicas per shard (got 1)"),
    ({"disk_type": "network-ssd-nonreplicated", "disk_size_gb": 100, "replicas": 3, "coordination": "embedded-keeper"},
     "disk size 100 GB is invalid for network-ssd-nonreplicated: use a multiple of 93 GB"),
    ({"replicas": 2}, "2 replicas per shard need a coordination service, and coordination is 'none': set "
                      "coordination to 'embedded-keeper' (3 or more hosts) when creating the cluster. Changing it on "
                      "a cluster that exists replaces the cluster and its data"),
    ({"coordination": "embedded-keeper"}, "embedded ClickHouse Keeper needs 3 or more ClickHouse hosts (got 1 "
                                          "shard(s) x 1 replica(s))"),
    ({"coordination": "zookeeper"}, "coordination 'zookeeper' is invalid: allowed none, embedded-keeper"),
    ({"database": "system"}, "database name 'system' is invalid"),
    ({"user": "in-ference"}, "user name 'in-ference' is invalid: use 1-63 letters, digits or '_'"),
    ({"security_group_ids": []}, "ClickHouse needs a security group"),
    ({"backup_retain_days": 90}, "backup retention 90 days is out of range: allowed 7-60"),
])
def test_invalid_settings_are_refused_with_the_rule(kw, message):
    with pytest.raises(ValidationError) as info:
        ch_args(**kw)
    assert message in str(info.value)


def test_cluster_is_private_protected_and_in_the_vpc(run_component):
    rec = run_component(lambda: Clickhouse("ch", ch_args(), LABELS))
    cluster = rec.one("MdbClickhouseCluster").inputs
    assert cluster["hosts"] == [{"type": "CLICKHOUSE", "zone": "ru-central1-a", "shardName": "shard1",
                                 "subnetId": "subnet-a", "assignPublicIp": False}]
    assert cluster["deletionProtection"] is True
    assert cluster["networkId"] == "net-1" and cluster["securityGroupIds"] == ["sg-ch"]
    assert cluster["version"] == "24.8" and cluster["embeddedKeeper"] is False
    assert cluster["clickhouse"] == {"resources": {"resourcePresetId": "s3-c2-m8", "diskTypeId": "network-ssd",
                                                   "diskSize": 32}}
    assert cluster["access"] == {"webSql": False, "dataLens": False, "metrika": False, "serverless": False,
                                 "dataTransfer": False, "yandexQuery": False}
    assert cluster["databases"] == [{"name": "predictions"}]
    assert cluster["labels"]["component"] == "clickhouse"


def test_shards_and_replicas_spread_over_zones(run_component):
    rec = run_component(lambda: Clickhouse("ch", ch_args(shards=2, replicas=3, coordination="embedded-keeper"),
                                           LABELS))
    cluster = rec.one("MdbClickhouseCluster").inputs
    assert [s["name"] for s in cluster["shards"]] == ["shard1", "shard2"]
    placed = [(h["shardName"], h["zone"]) for h in cluster["hosts"]]
    assert placed == [(shard, zone) for shard in ("shard1", "shard2")
                      for zone in ("ru-central1-a", "ru-central1-b", "ru-central1-d")]
    assert all(h["assignPublicIp"] is False for h in cluster["hosts"])
    assert cluster["embeddedKeeper"] is True, "the configured coordination, not derived from the replicas"


def test_more_replicas_do_not_change_the_coordination(run_component):
    """1 -> 3 replicas with embedded Keeper chosen at creation: embeddedKeeper (ForceNew) stays as it was."""
    before = run_component(lambda: Clickhouse("ch", ch_args(replicas=3, coordination="embedded-keeper"), LABELS))
    after = run_component(lambda: Clickhouse("ch", ch_args(replicas=5, coordination="embedded-keeper"), LABELS))
    assert before.one("MdbClickhouseCluster").inputs["embeddedKeeper"] is True
    assert after.one("MdbClickhouseCluster").inputs["embeddedKeeper"] is True


def test_a_protected_cluster_is_protected_from_the_engine(run_component):
    rec = run_component(lambda: Clickhouse("ch", ch_args(), LABELS))
    assert rec.one("MdbClickhouseCluster").protect is True
    unprotected = run_component(lambda: Clickhouse("ch", ch_args(deletion_protection=False), LABELS))
    assert unprotected.one("MdbClickhouseCluster").protect is False


def test_a_change_that_replaces_the_cluster_is_refused_offline(run_component):
    """Changing the coordination of a cluster that exists (what the old code did by itself when the
    replicas went from 1 to 2: embedded_keeper is ForceNew): the diff names the replacement and refuses it."""
    from stagectl.diff import diff_plans, replacement_message

    base = run_component(lambda: Clickhouse("ch", ch_args(replicas=1), LABELS)).plan
    head = run_component(lambda: Clickhouse("ch", ch_args(replicas=3, coordination="embedded-keeper"),
                                            LABELS)).plan
    result = diff_plans("prod", base, head)
    assert result.refused
    [(resource, forcing)] = result.replaced
    assert resource.name == "ch-cluster" and [c.path for c in forcing] == ["embeddedKeeper"]
    assert replacement_message(resource, forcing) == (
        "ch-cluster (MdbClickhouseCluster) would be replaced, and what it holds lost: embeddedKeeper false -> true "
        "forces a new resource. Revert the change, or create a new one beside it and move the data")
    same = diff_plans("prod", base, run_component(lambda: Clickhouse("ch", ch_args(disk_size_gb=64), LABELS)).plan)
    assert same.changed and not same.replaced and not same.refused


def test_deletion_protection_can_be_turned_off(run_component):
    rec = run_component(lambda: Clickhouse("ch", ch_args(deletion_protection=False), LABELS))
    assert rec.one("MdbClickhouseCluster").inputs["deletionProtection"] is False


def test_password_is_a_secret_everywhere(run_component, random_passwords):
    rec = run_component(lambda: Clickhouse("ch", ch_args(), LABELS))
    assert PLAINTEXT not in rec.json()
    # A secret inside the users block makes the whole block secret.
    assert rec.one("MdbClickhouseCluster").inputs["users"] == "[secret]"
    assert rec.one("LockboxSecretVersion").inputs["entries"] == "[secret]"


def test_users_block_is_secret_while_the_password_is_generated(run_component):
    """The password is the generated secret of a RandomPassword; the users block carrying it is marked
    secret, never plain."""
    cluster = run_component(lambda: Clickhouse("ch", ch_args(), LABELS)).one("MdbClickhouseCluster").inputs
    assert cluster["users"] == "[secret]"


def test_host_is_the_special_fqdn(run_component):
    captured: dict[str, str] = {}

    def program() -> None:
        ch = Clickhouse("ch", ch_args(), LABELS)
        ch.host.apply(lambda host: captured.setdefault("host", host))

    run_component(program)
    assert captured["host"] == "c-(ch-cluster.id).rw.mdb.yandexcloud.net"


def test_security_group_admits_only_the_client_group():
    spec = clickhouse.clickhouse_rules("k8s-nodes")
    assert [(r.port, r.group, r.cidrs) for r in spec.ingress] == [(8443, "k8s-nodes", ()), (9440, "k8s-nodes", ())]
    assert spec.egress == ()
