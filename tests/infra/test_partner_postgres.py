"""Managed PostgreSQL: presets, versions and disks refused with their rule; no public IP; password only secret."""

from __future__ import annotations

import pulumi
import pytest

from components.base import ValidationError
from components.postgres import RESOURCE_PRESETS, Postgres, PostgresArgs
from stagectl import plan as plan_module

LABELS = {"project": "aistack", "stage": "partner"}
PLAINTEXT = "Plaintext-Password-0123456789abc"


def pg_args(**kw: object) -> PostgresArgs:
    base: dict[str, object] = {"folder_id": "f", "network_id": "net-1", "zone": "ru-central1-a",
                               "subnet_id": "subnet-1", "security_group_ids": ["sg-db"]}
    return PostgresArgs(**{**base, **kw})  # type: ignore[arg-type]


@pytest.fixture
def random_passwords(monkeypatch):
    """Make the mocks return a known password for RandomPassword, as the provider would."""
    original = plan_module._Mocks.new_resource

    def new_resource(self, args):
        rid, state = original(self, args)
        if args.typ == "random:index/randomPassword:RandomPassword":
            state = {**state, "result": PLAINTEXT}
        return rid, state

    monkeypatch.setattr(plan_module._Mocks, "new_resource", new_resource)


@pytest.mark.parametrize("preset", ["s2.micro", "b2.medium", "s3-c2-m8", "s2.2xlarge", "s3-c4-m16"])
def test_documented_presets_are_accepted(preset):
    assert pg_args(resource_preset=preset).resource_preset in RESOURCE_PRESETS


def test_b3_is_a_clickhouse_class_not_a_postgresql_one():
    with pytest.raises(ValidationError, match="resource preset 'b3-c1-m4' is not a Managed PostgreSQL host class"):
        pg_args(resource_preset="b3-c1-m4")


def test_unknown_preset_lists_the_allowed_ones():
    with pytest.raises(ValidationError) as info:
        pg_args(resource_preset="s2.huge")
    message = str(info.value)
    assert message.startswith("resource preset 's2.huge' is not a Managed PostgreSQL host class: allowed b2.medium, "
                              "s2.micro, s2.small")
    assert message.endswith("(check `yc managed-postgresql resource-preset list` for your cloud)")


@pytest.mark.parametrize(("kw", "message"), [
    ({"version": "13"}, "PostgreSQL version '13' is not offered: allowed 14, 15, 16, 17"),
    ({"disk_type": "network-nvme"}, "disk type 'network-nvme' is invalid: allowed network-ssd, network-hdd, "
                                    "network-ssd-nonreplicated, local-ssd"),
    ({"disk_size_gb": 5}, "disk size 5 GB is out of range for network-ssd on s2.micro in Managed PostgreSQL: "
                          "allowed 10-8192 GB"),
    ({"disk_type": "network-ssd-nonreplicated", "disk_size_gb": 93},
     "network-ssd-nonreplicated is not replicated by the cloud: it needs 3 or more hosts \\(got 1\\)"),
    ({"disk_type": "network-ssd-nonreplicated", "disk_size_gb": 100, "hosts": 3},
     "disk size 100 GB is invalid for network-ssd-nonreplicated: use a multiple of 93 GB"),
    ({"disk_type": "local-ssd", "disk_size_gb": 100, "hosts": 3, "resource_preset": "s3-c2-m8"},
     "disk size 100 GB is invalid for local-ssd on s3-c2-m8 \\(ice-lake\\): use a multiple of 368 GB"),
    ({"resource_preset": "b2.medium", "disk_size_gb": 1024},
     "disk size 1024 GB is out of range for network-ssd on b2.medium in Managed PostgreSQL: allowed 10-512 GB"),
    ({"hosts": 0}, "hosts 0 is out of range: allowed 1-7"),
    ({"database": "postgres"}, "database name 'postgres' is invalid"),
    ({"user": "1user"}, "user name '1user' is invalid: use 1-63 letters"),
])
def test_invalid_settings_are_refused_with_the_rule(kw, message):
    with pytest.raises(ValidationError, match=message):
        pg_args(**kw)


def test_valid_special_disks():
    assert pg_args(disk_type="network-ssd-nonreplicated", disk_size_gb=186, hosts=3).hosts == 3
    assert pg_args(disk_type="local-ssd", disk_size_gb=200, hosts=3, resource_preset="s2.small").disk_size_gb == 200


def test_cluster_is_private_protected_and_in_the_vpc(run_component):
    rec = run_component(lambda: Postgres("db", pg_args(hosts=2, password_readers=["sa-1"]), LABELS))
    cluster = rec.one("MdbPostgresqlCluster").inputs
    assert cluster["hosts"] == [{"zone": "ru-central1-a", "subnetId": "subnet-1", "assignPublicIp": False}] * 2
    assert cluster["deletionProtection"] is True
    assert cluster["networkId"] == "net-1" and cluster["securityGroupIds"] == ["sg-db"]
    assert cluster["config"]["version"] == "16"
    assert cluster["config"]["resources"] == {"resourcePresetId": "s2.micro", "diskTypeId": "network-ssd",
                                              "diskSize": 20}
    assert cluster["config"]["access"] == {"webSql": False, "dataLens": False, "dataTransfer": False,
                                           "serverless": False}
    assert cluster["config"]["autofailover"] is True
    assert "users" not in cluster and "databases" not in cluster
    user = rec.one("MdbPostgresqlUser").inputs
    assert user["name"] == "inference" and user["clusterId"] == "(db-cluster.id)"
    assert user["deletionProtection"] == "true"
    database = rec.one("MdbPostgresqlDatabase").inputs
    assert database == {"clusterId": "(db-cluster.id)", "name": "predictions", "owner": "inference",
                        "deletionProtection": "true"}
    reader = rec.one("LockboxSecretIamMember").inputs
    assert reader["role"] == "lockbox.payloadViewer" and reader["member"] == "serviceAccount:sa-1"
    password = rec.one("RandomPassword").inputs
    assert password["length"] == 32 and password["special"] is False


def test_deletion_protection_can_be_turned_off(run_component):
    rec = run_component(lambda: Postgres("db", pg_args(deletion_protection=False), LABELS))
    assert rec.one("MdbPostgresqlCluster").inputs["deletionProtection"] is False
    assert rec.one("MdbPostgresqlDatabase").inputs["deletionProtection"] == "false"


def test_password_is_a_secret_everywhere(run_component, random_passwords):
    seen: dict[str, str] = {}

    def program() -> None:
        db = Postgres("db", pg_args(password_readers=["sa-1"]), LABELS)
        pulumi.Output.unsecret(db.password.result).apply(lambda value: seen.setdefault("password", value))

    rec = run_component(program)
    assert seen["password"] == PLAINTEXT, "the generated password did flow through the program"
    text = rec.json()
    assert PLAINTEXT not in text
    assert rec.one("MdbPostgresqlUser").inputs["password"] == "[secret]"
    assert rec.one("LockboxSecretVersion").inputs["entries"] == "[secret]"


def test_dsn_has_no_password(run_component):
    captured: dict[str, object] = {}

    def program() -> None:
        db = Postgres("db", pg_args(), LABELS)
        db.dsn.apply(lambda dsn: captured.setdefault("dsn", dsn))
        db.host.apply(lambda host: captured.setdefault("host", host))

    run_component(program)
    assert captured["host"] == "c-(db-cluster.id).rw.mdb.yandexcloud.net"
    assert captured["dsn"] == ("postgresql://inference@c-(db-cluster.id).rw.mdb.yandexcloud.net:6432/predictions"
                               "?sslmode=verify-full")
