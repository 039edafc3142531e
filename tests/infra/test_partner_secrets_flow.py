"""The partner host's secrets, end to end: the compose file's ``secrets`` service (the real
``fetch_secrets.py``, as its own entrypoint and environment) against a stand-in of the VM metadata
service and Lockbox's payload API, writing into a directory standing for the host; then each
consumer's view of it, taken from the same compose file: what it mounts, the user it runs as, the
files its command or its environment names."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components.host_workload import CONSUMER_USERS, FETCH_SCRIPT, HOST_SECRETS_ROOT, compose_yaml
from tests.infra.host_sim import (
    CA_PATH,
    FAKE_CA,
    TOKEN_PATH,
    WORKLOAD,
    ContainerView,
    FakeCloud,
    ca_rewrite,
    closed_port_url,
    fake_cloud,
    files_under,
    host_directory,
    normalized,
    run_as,
    run_python_service,
    secrets_env,
    sourced_env_file,
    uid_gid,
)

TRICKY = "p@ss w0rd's $HOME `x` \"q\" \\n"
VALUES = {"AWS_ACCESS_KEY_ID": "YCAJEexample", "AWS_SECRET_ACCESS_KEY": "YCsecret-example",
          "PG_PASSWORD": TRICKY, "GF_SECURITY_ADMIN_PASSWORD": "grafana-Admin-pw-42"}
#: What each consumer needs, in Lockbox entry keys.
NEEDS = {"triton": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
         "inference": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "PG_PASSWORD"},
         "grafana": {"GF_SECURITY_ADMIN_PASSWORD"}}


def lockbox(cloud: FakeCloud) -> None:
    cloud.state.payloads = {
        "e6qstoragekey": [{"key": "AWS_ACCESS_KEY_ID", "textValue": VALUES["AWS_ACCESS_KEY_ID"]},
                          {"key": "AWS_SECRET_ACCESS_KEY", "textValue": VALUES["AWS_SECRET_ACCESS_KEY"]}],
        "e6qdatabase": [{"key": "PG_PASSWORD", "textValue": VALUES["PG_PASSWORD"]}],
        "e6qgrafana": [{"key": "GF_SECURITY_ADMIN_PASSWORD", "textValue": VALUES["GF_SECURITY_ADMIN_PASSWORD"]}],
    }


@pytest.fixture
def cloud() -> Iterator[FakeCloud]:
    with fake_cloud() as fake:
        yield fake


@pytest.fixture
def host_root() -> Iterator[Path]:
    with host_directory() as path:
        yield path


@pytest.fixture
def compose(tmp_path: Path) -> dict[str, Any]:
    return normalized(compose_yaml(WORKLOAD), tmp_path)


def write_secrets(compose: dict[str, Any], cloud: FakeCloud, root: Path,
                  metadata_url: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_python_service(compose["services"]["secrets"], root, secrets_env(cloud.url, metadata_url),
                              rewrite=ca_rewrite(compose, cloud.url))


def secrets_area(compose: dict[str, Any], root: Path) -> Path:
    """Where the writer's volumes put the secrets on the host (under root)."""
    writer = ContainerView(compose["services"]["secrets"], root)
    (mount,) = writer.mounts
    assert not mount.read_only and mount.kind == "bind"
    return writer.host_dir(mount)


def reads(compose: dict[str, Any], consumer: str) -> dict[str, str]:
    """Container path -> what it is, for every secret file the consumer's own definition names."""
    service = compose["services"][consumer]
    names: dict[str, str] = {}
    argv = service.get("entrypoint") or service.get("command")
    if consumer == "grafana":
        names[service["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"]] = "GF_SECURITY_ADMIN_PASSWORD"
    else:
        names[sourced_env_file(argv)] = "env"
    dsn = (service.get("environment") or {}).get("PG_DSN")
    if dsn:
        (ca,) = [p.split("=", 1)[1] for p in dsn.split("?", 1)[1].split("&") if p.startswith("sslrootcert=")]
        names[ca] = "ca"
    return names


# --- the stand-in behaves like the real endpoints ----------------------------------------------------------

def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_the_stand_in_refuses_what_the_real_endpoints_refuse(cloud):
    lockbox(cloud)
    assert _get(cloud.url + TOKEN_PATH)[0] == 403, "no Metadata-Flavor header"
    status, body = _get(cloud.url + TOKEN_PATH, {"Metadata-Flavor": "Google"})
    assert status == 200 and json.loads(body)["access_token"] == cloud.state.token
    payload = f"{cloud.url}/lockbox/v1/secrets/e6qdatabase/payload"
    assert _get(payload)[0] == 401
    assert _get(payload, {"Authorization": "Bearer wrong"})[0] == 401
    status, body = _get(payload, {"Authorization": f"Bearer {cloud.state.token}"})
    assert status == 200 and json.loads(body)["entries"] == [{"key": "PG_PASSWORD", "textValue": TRICKY}]
    auth = {"Authorization": f"Bearer {cloud.state.token}"}
    assert _get(f"{cloud.url}/lockbox/v1/secrets/e6qnosuch/payload", auth)[0] == 404
    cloud.state.denied = {"e6qdatabase"}
    assert _get(payload, auth)[0] == 403
    assert _get(f"{cloud.url}/lockbox/v1/secrets/e6qdatabase", auth)[0] == 404, "not an implemented path"
    assert _get(cloud.url + CA_PATH) == (200, FAKE_CA)


def test_the_script_defaults_to_yandex_clouds_endpoints():
    """Without the overrides the tests set, the script calls the real endpoints and keeps retrying at boot."""
    done = subprocess.run(
        [sys.executable, "-c", "import json, runpy, sys; g = runpy.run_path(sys.argv[1], run_name='probe'); "
                               "print(json.dumps([g[k] for k in ('METADATA_URL', 'LOCKBOX_URL', 'TOKEN_PATH', "
                               "'ATTEMPTS', 'RETRY_SECONDS')]))",
         str(FETCH_SCRIPT)], env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["http://169.254.169.254", "https://payload.lockbox.api.cloud.yandex.net",
                                       "/computeMetadata/v1/instance/service-accounts/default/token", 30, 5.0]


# --- the flow -----------------------------------------------------------------------------------------------

def test_each_consumer_reads_exactly_its_own_secrets_where_its_service_looks(compose, cloud, host_root):
    lockbox(cloud)
    cloud.state.metadata_failures = 1  # not ready at the first attempt
    done = write_secrets(compose, cloud, host_root)
    assert done.returncode == 0, done.stderr
    area = secrets_area(compose, host_root)
    assert str(area) == str(host_root) + HOST_SECRETS_ROOT
    payload_reads = [path for method, path, _ in cloud.state.requests if path.endswith("/payload")]
    assert sorted(payload_reads) == sorted(f"/lockbox/v1/secrets/{s}/payload"
                                           for s in ("e6qstoragekey", "e6qdatabase", "e6qgrafana")), "each once"
    assert set(CONSUMER_USERS) == {"triton", "inference", "grafana"}
    for consumer, needs in NEEDS.items():
        service = compose["services"][consumer]
        view = ContainerView(service, host_root)
        uid, gid = uid_gid(service)
        secret_mounts = [m for m in view.mounts if view.host_dir(m).is_relative_to(area)]
        assert len(secret_mounts) == 1 and secret_mounts[0].read_only, f"{consumer} mounts one directory, read-only"
        own = view.host_dir(secret_mounts[0])
        # the directory and each file belong to the consumer's user alone
        info = own.stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (uid, gid, 0o500), consumer
        visible = files_under(own)
        for name in visible:
            file_info = (own / name).stat()
            assert (file_info.st_uid, stat.S_IMODE(file_info.st_mode)) == (uid, 0o400), f"{consumer}/{name}"
        # it sees its own entries and nothing else
        extra = {"env", "yandex-ca.pem"} if consumer == "inference" else {"env"}
        assert set(visible) == needs | extra, consumer
        for key in needs:
            assert visible[key].decode() == VALUES[key]
        others = {k: v for k, v in VALUES.items() if k not in needs}
        for name, content in visible.items():
            for key, value in others.items():
                assert value.encode() not in content and f"{key}=".encode() not in content, f"{consumer}/{name}: {key}"
        # the files its service names exist where its mount puts them, readable by its user
        for path, what in reads(compose, consumer).items():
            local = view.local(path)
            assert local.is_file(), f"{consumer} reads {path} ({what}): nothing at {local}"
            assert run_as(uid, gid, ["/bin/cat", str(local)]).returncode == 0, f"{consumer} cannot read {path}"
            if what == "ca":
                assert local.read_bytes() == FAKE_CA
            if what == "GF_SECURITY_ADMIN_PASSWORD":
                assert local.read_text() == VALUES["GF_SECURITY_ADMIN_PASSWORD"]
        # the env file, sourced as the service does, as its user, yields the exact values
        if consumer != "grafana":
            env_file = view.local(sourced_env_file(service.get("entrypoint") or service["command"]))
            keys = sorted(needs)
            printed = run_as(uid, gid, ["/bin/sh", "-c", f"set -a && . {env_file} && set +a && printf '%s\\n' "
                                                         + " ".join(f'"${k}"' for k in keys)])
            assert printed.returncode == 0, printed.stderr
            assert printed.stdout.splitlines() == [VALUES[k] for k in keys]


def test_a_consumer_cannot_read_another_consumers_secrets(compose, cloud, host_root):
    lockbox(cloud)
    assert write_secrets(compose, cloud, host_root).returncode == 0
    area = secrets_area(compose, host_root)
    grafana = compose["services"]["grafana"]
    inference = compose["services"]["inference"]
    pg_password = area / "inference" / "PG_PASSWORD"
    assert pg_password.is_file()
    denied = run_as(*uid_gid(grafana), ["/bin/cat", str(pg_password)])
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    denied = run_as(*uid_gid(inference), ["/bin/cat", str(area / "grafana" / "GF_SECURITY_ADMIN_PASSWORD")])
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    assert run_as(*uid_gid(inference), ["/bin/ls", str(area / "grafana")]).returncode != 0, "not even the names"
    # Triton runs as root: what keeps the database password from it is that it mounts only its own directory
    triton = ContainerView(compose["services"]["triton"], host_root)
    assert not any((triton.host_dir(m) / "PG_PASSWORD").exists() for m in triton.mounts)


def test_a_rerun_replaces_the_files_and_drops_what_is_no_longer_wanted(compose, cloud, host_root):
    lockbox(cloud)
    assert write_secrets(compose, cloud, host_root).returncode == 0
    area = secrets_area(compose, host_root)
    (area / "inference" / "STALE").write_text("from an older configuration")
    cloud.state.payloads["e6qdatabase"] = [{"key": "PG_PASSWORD", "textValue": "rotated-password"}]
    done = write_secrets(compose, cloud, host_root)
    assert done.returncode == 0, done.stderr
    assert (area / "inference" / "PG_PASSWORD").read_text() == "rotated-password"
    assert not (area / "inference" / "STALE").exists()
    assert not [p for p in area.rglob("*") if p.name.endswith(".aistack-tmp")]


def test_the_writer_runs_before_the_consumers_on_every_apply_and_after_a_reboot(compose, cloud, host_root):
    services = compose["services"]
    writer = services["secrets"]
    # each apply of the spec: the consumers start once the writer reports every file in place
    for consumer in ("triton", "inference", "grafana", "migrate"):
        assert services[consumer]["depends_on"]["secrets"]["condition"] == "service_healthy", consumer
    test = writer["healthcheck"]["test"]
    assert test[:3] == ["CMD", "test", "-f"] and test[3] == writer["environment"]["AISTACK_READY_FILE"]
    # a reboot empties /run, and the image's daemon leaves an unchanged spec to the restart policies: the
    # writer is a container Docker restarts whenever it starts, and it writes the files again each time
    assert writer["restart"] == "unless-stopped" and writer["environment"]["AISTACK_STAY"] == "1"
    (mount,) = ContainerView(writer, host_root).mounts
    assert mount.source.startswith("/run/"), "the host's /run is tmpfs: secrets never reach the disk"
    lockbox(cloud)
    first = write_secrets(compose, cloud, host_root)
    assert first.returncode == 0, first.stderr  # it stayed up until stopped, then exited cleanly
    assert "staying up" in first.stderr
    area = secrets_area(compose, host_root)
    shutil.rmtree(area)  # the reboot
    again = write_secrets(compose, cloud, host_root)
    assert again.returncode == 0, again.stderr
    assert (area / "inference" / "PG_PASSWORD").read_text() == VALUES["PG_PASSWORD"]
    # the consumers Docker restarts at the same moment wait for their files instead of starting without them
    for consumer in ("triton", "inference", "grafana"):
        service = services[consumer]
        argv = service.get("entrypoint") or service["command"]
        wanted = next(iter(reads(compose, consumer)))
        assert f"until [ -r {wanted} ]" in argv[2], consumer
        assert service["restart"] == "unless-stopped"


def _waits(compose: dict[str, Any], consumer: str, root: Path) -> str:
    """The consumer's own start-up script, up to its exec, with its paths mapped under root."""
    service = compose["services"][consumer]
    view = ContainerView(service, root)
    script = view.localize((service.get("entrypoint") or service["command"])[2])
    return script.split("; set -a", 1)[0].split("; exec", 1)[0]


def test_a_consumer_waits_for_its_secrets_and_then_starts(compose, cloud, host_root):
    lockbox(cloud)
    script = _waits(compose, "grafana", host_root)
    uid, gid = uid_gid(compose["services"]["grafana"])
    waiting = subprocess.Popen(["/bin/sh", "-c", script + "; echo started"], user=uid, group=gid, extra_groups=[],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={"PATH": "/usr/bin:/bin"})
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            waiting.wait(timeout=1.5)
        assert write_secrets(compose, cloud, host_root).returncode == 0
        out, err = waiting.communicate(timeout=10)
    finally:
        waiting.kill()
    assert waiting.returncode == 0 and out.strip() == "started", err


# --- failures -----------------------------------------------------------------------------------------------

def _nothing_written(root: Path) -> None:
    assert [str(p) for p in root.rglob("*") if p.is_file()] == []


def test_metadata_service_down(compose, cloud, host_root):
    lockbox(cloud)
    done = write_secrets(compose, cloud, host_root, metadata_url=closed_port_url())
    assert done.returncode != 0
    assert "giving up on IAM token from the metadata service after 2 attempts" in done.stderr
    assert "Connection refused" in done.stderr
    _nothing_written(host_root)


def test_lockbox_refuses_a_secret(compose, cloud, host_root):
    lockbox(cloud)
    cloud.state.denied = {"e6qdatabase"}
    done = write_secrets(compose, cloud, host_root)
    assert done.returncode != 0
    assert "giving up on Lockbox secret e6qdatabase after 2 attempts: HTTP 403" in done.stderr
    assert "grant it lockbox.payloadViewer on the secret" in done.stderr
    _nothing_written(host_root)


def test_a_missing_entry_is_named_and_nothing_is_written(compose, cloud, host_root):
    lockbox(cloud)
    cloud.state.payloads["e6qdatabase"] = [{"key": "PASSWORD", "textValue": "x"}]
    done = write_secrets(compose, cloud, host_root)
    assert done.returncode != 0
    assert ("fetch-secrets: Lockbox secret e6qdatabase has no entry 'PG_PASSWORD' (wanted in" in done.stderr
            and "its entries: PASSWORD" in done.stderr)
    _nothing_written(host_root)


def test_a_failed_rerun_leaves_the_previous_files_whole(compose, cloud, host_root):
    lockbox(cloud)
    assert write_secrets(compose, cloud, host_root).returncode == 0
    before = files_under(host_root)
    cloud.state.payloads["e6qgrafana"] = []
    done = write_secrets(compose, cloud, host_root)
    assert done.returncode != 0 and "has no entry 'GF_SECURITY_ADMIN_PASSWORD'" in done.stderr
    ready = ContainerView(compose["services"]["secrets"], host_root).local(
        compose["services"]["secrets"]["environment"]["AISTACK_READY_FILE"])
    assert not ready.exists(), "not healthy: the consumers do not start on a failed run"
    assert files_under(host_root) == {k: v for k, v in before.items() if host_root / k != ready}


def test_the_ca_download_failing_writes_nothing(compose, cloud, host_root):
    lockbox(cloud)
    rewrite = {origin: cloud.url + "/missing" for origin in ca_rewrite(compose, cloud.url)}
    done = run_python_service(compose["services"]["secrets"], host_root, secrets_env(cloud.url), rewrite=rewrite)
    assert done.returncode != 0 and "HTTP 404" in done.stderr
    _nothing_written(host_root)


def test_an_owner_that_is_not_numeric_is_refused(compose, cloud, host_root):
    lockbox(cloud)
    secrets = dict(compose["services"]["secrets"])
    owners = json.loads(secrets["environment"]["AISTACK_OWNERS"])
    owners["/run/secrets/grafana"] = "grafana"
    secrets["environment"] = {**secrets["environment"], "AISTACK_OWNERS": json.dumps(owners)}
    done = run_python_service(secrets, host_root, secrets_env(cloud.url), rewrite=ca_rewrite(compose, cloud.url))
    assert done.returncode != 0 and "give '<uid>:<gid>' in numbers" in done.stderr
    assert not any(path.endswith("/payload") for _, path, _ in cloud.state.requests), "refused before any read"


def test_the_service_image_user_is_the_one_its_secrets_belong_to(compose):
    dockerfile = (Path(__file__).resolve().parents[2] / "service" / "Dockerfile").read_text()
    (user,) = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert compose["services"]["inference"]["user"] == user == CONSUMER_USERS["inference"]
    assert compose["services"]["migrate"]["user"] == user
    owners = json.loads(compose["services"]["secrets"]["environment"]["AISTACK_OWNERS"])
    writer = ContainerView(compose["services"]["secrets"], Path("/"))
    owner_of_host_dir = {str(writer.local(directory)): user for directory, user in owners.items()}
    for consumer in CONSUMER_USERS:
        view = ContainerView(compose["services"][consumer], Path("/"))
        (source,) = [m.source for m in view.mounts if m.source.startswith(HOST_SECRETS_ROOT)]
        assert owner_of_host_dir[source] == compose["services"][consumer]["user"], consumer



def test_the_runner_vms_short_form_still_works(cloud, host_root):
    """The runner VM runs the same script from cloud-init with the short form (no owners, no downloads)."""
    import yaml

    from components.runner import GitlabRunnerArgs, runner_user_data

    args = GitlabRunnerArgs(folder_id="f", zone="ru-central1-a", subnet_id="s", security_group_ids=["g"],
                            runner_token="glrt-x", users=[])
    document = yaml.safe_load(runner_user_data(args, "e6qrunnertoken", "partner-runner"))
    (script,) = [f["content"] for f in document["write_files"] if f["path"].endswith("fetch_secrets.py")]
    (command,) = [c for c in document["runcmd"] if c[0] == "env" and c[1].startswith("AISTACK_SECRETS=")]
    wanted = json.loads(command[1].split("=", 1)[1])
    (directory,) = wanted
    local = host_root / directory.lstrip("/")
    cloud.state.payloads = {"e6qrunnertoken": [{"key": "CI_SERVER_TOKEN", "textValue": "glrt-runner-token"}]}
    done = subprocess.run([sys.executable, "-c", script],
                          env={"PATH": "/usr/bin:/bin", "AISTACK_SECRETS": json.dumps({str(local): wanted[directory]}),
                               **secrets_env(cloud.url)}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    token = local / "CI_SERVER_TOKEN"
    assert token.read_text() == "glrt-runner-token" and stat.S_IMODE(token.stat().st_mode) == 0o444
    assert (local / "env").read_text() == "CI_SERVER_TOKEN=glrt-runner-token\n"
