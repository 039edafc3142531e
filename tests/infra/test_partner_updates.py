"""How a change reaches the partner host that is already running.

The Container-Optimized Image re-applies the ``docker-compose`` metadata key when it changes
(containers whose definition changed are recreated); cloud-init applies ``user-data`` once per
instance. So a monitoring change must change the compose file, and the definition of each service
that mounts the changed files, and leave user-data alone; an SSH users change (user-data) must
replace the VM. Compose's own per-service configuration hash (``docker-compose config --hash``, what
``up`` compares to decide on recreating a container) shows which services a change recreates.
"""

from __future__ import annotations

import base64
import copy
import json
import subprocess
import zlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.gpu_host import REPLACE_ON_USER_DATA
from components.host_workload import CONFIG_DIGEST_ENV, CONFIG_MOUNTS
from tests.infra.conftest import Recorded
from tests.infra.host_sim import tool
from tests.infra.resource_options import lookup, property_path, record_options
from tests.infra.test_partner_stack import config_for

VM = "partner-gpu-vm"


def vm_inputs(rec: Recorded) -> dict[str, Any]:
    return next(r for r in rec.of_type("ComputeInstance") if r.name == VM).inputs


def compose_of(rec: Recorded) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(vm_inputs(rec)["metadata"]["docker-compose"])
    return document


def service_hashes(document: dict[str, Any], workdir: Path) -> dict[str, str]:
    """Compose's configuration hash of each service (a changed hash: ``up`` recreates that container)."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "docker-compose.yml"
    path.write_text(yaml.safe_dump(document))
    done = subprocess.run([tool("docker-compose"), "-f", str(path), "--profile", "*", "config", "--hash=*"],
                          capture_output=True, text=True, timeout=120, cwd=workdir)
    assert done.returncode == 0, done.stderr
    return dict(line.split() for line in done.stdout.splitlines())


def shipped_files(document: dict[str, Any]) -> dict[str, str]:
    files: dict[str, str] = json.loads(zlib.decompress(base64.b64decode(
        document["services"]["config"]["environment"]["AISTACK_FILES"])))
    return files


def test_a_prometheus_rule_change_travels_in_compose_and_recreates_only_prometheus(run_stack, model, tmp_path):
    before = run_stack("partner", config_for(model))
    after = run_stack("partner", config_for(model, monitoring={"errorRatio": 0.2}))
    old, new = compose_of(before), compose_of(after)
    # the rule itself is in the compose file, so the image's daemon applies it to the running VM
    assert "> 0.2" in shipped_files(new)["prometheus/rules/aistack.yml"]
    assert "> 0.05" in shipped_files(old)["prometheus/rules/aistack.yml"]
    # and it changes nothing cloud-init would see (it would never run again)
    assert vm_inputs(before)["metadata"]["user-data"] == vm_inputs(after)["metadata"]["user-data"]
    # only the services that mount the changed file carry a new digest
    digests = {name: (old["services"][name]["environment"][CONFIG_DIGEST_ENV],
                      new["services"][name]["environment"][CONFIG_DIGEST_ENV]) for name in CONFIG_MOUNTS}
    assert digests["prometheus"][0] != digests["prometheus"][1]
    assert digests["grafana"][0] == digests["grafana"][1]
    assert digests["blackbox-exporter"][0] == digests["blackbox-exporter"][1]
    # Compose recreates exactly the writer (which runs again first) and Prometheus
    hashes_old, hashes_new = service_hashes(old, tmp_path / "old"), service_hashes(new, tmp_path / "new")
    assert set(hashes_old) == set(hashes_new)
    assert {name for name in hashes_old if hashes_old[name] != hashes_new[name]} == {"config", "prometheus"}
    assert new["services"]["prometheus"]["depends_on"]["config"] == {"condition": "service_completed_successfully"}
    # without the digest, Compose would keep the old Prometheus running on the old rules
    bare_old, bare_new = copy.deepcopy(old), copy.deepcopy(new)
    for document in (bare_old, bare_new):
        del document["services"]["prometheus"]["environment"][CONFIG_DIGEST_ENV]
    assert service_hashes(bare_old, tmp_path / "bare-old")["prometheus"] == \
        service_hashes(bare_new, tmp_path / "bare-new")["prometheus"]


def test_a_dashboard_change_recreates_grafana_and_not_prometheus(run_stack, model, tmp_path, monkeypatch):
    from components import monitoring

    before = compose_of(run_stack("partner", config_for(model)))
    original = monitoring.dashboards

    def retitled() -> dict[str, dict[str, Any]]:
        boards = original()
        boards["gpu.json"]["title"] = "aistack: GPU (renamed)"
        return boards

    monkeypatch.setattr(monitoring, "dashboards", retitled)
    after = compose_of(run_stack("partner", config_for(model)))
    hashes_old, hashes_new = service_hashes(before, tmp_path / "old"), service_hashes(after, tmp_path / "new")
    assert {name for name in hashes_old if hashes_old[name] != hashes_new[name]} == {"config", "grafana"}


def test_the_vm_is_replaced_when_its_user_data_changes(run_stack, model, monkeypatch):
    registered = record_options(monkeypatch)
    one = {"users": [{"name": "ops", "sshKeys": ["ssh-ed25519 AAAAC3Nza ops@example.com"]}]}
    two = {"users": [*one["users"], {"name": "oncall", "sshKeys": ["ssh-ed25519 AAAAC3NzaOnCall oncall@example.com"]}]}
    before = run_stack("partner", config_for(model, ssh=one))
    options = registered[VM]
    after = run_stack("partner", config_for(model, ssh=two))
    assert registered[VM] == options
    assert options.replace_on_changes == (REPLACE_ON_USER_DATA,) == ('metadata["user-data"]',)
    assert options.delete_before_replace, "its name and its static address cannot be held by two VMs at once"
    # the path names the property that carries the users, and that property is what the change changes
    assert list(property_path(REPLACE_ON_USER_DATA)) == ["metadata", "user-data"]
    old, new = lookup(vm_inputs(before), REPLACE_ON_USER_DATA), lookup(vm_inputs(after), REPLACE_ON_USER_DATA)
    assert old != new and "oncall" in new and "oncall" not in old
    assert [u["name"] for u in yaml.safe_load(new)["users"]] == ["ops", "oncall"]
    assert vm_inputs(before)["metadata"]["docker-compose"] == vm_inputs(after)["metadata"]["docker-compose"]
    # nothing else in the stage is replaced on a whim
    assert [name for name, o in registered.items() if o.replace_on_changes] == [VM]


def test_a_release_changes_compose_but_never_user_data(run_stack, model):
    """A new image digest (a promotion) reaches the running VM: no replacement, no cloud-init."""
    before = run_stack("partner", config_for(model))
    config = config_for(model)
    release = json.loads(config["aistack:release"])
    config["aistack:release"] = json.dumps({**release, "imageDigest": "sha256:" + "9" * 64})
    after = run_stack("partner", config)
    assert lookup(vm_inputs(before), REPLACE_ON_USER_DATA) == lookup(vm_inputs(after), REPLACE_ON_USER_DATA)
    assert vm_inputs(before)["metadata"]["docker-compose"] != vm_inputs(after)["metadata"]["docker-compose"]


@pytest.mark.parametrize(("path", "keys"), [
    ('metadata["user-data"]', ["metadata", "user-data"]),
    ("metadata.serialPortEnable", ["metadata", "serialPortEnable"]),
    ('root["key with \\"escaped\\" quotes"].nested[0]', ["root", 'key with "escaped" quotes', "nested", 0]),
])
def test_property_paths_parse_as_pulumi_documents_them(path, keys):
    assert list(property_path(path)) == keys


@pytest.mark.parametrize("path", ["metadata[user-data]", 'metadata["user-data"', ".metadata"])
def test_malformed_property_paths_are_refused(path):
    with pytest.raises(AssertionError, match="not a property path"):
        list(property_path(path))
