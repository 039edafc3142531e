"""The partner host's moving parts, run for real on this machine: the cloud endpoints the one-shot
services call (a stand-in of the VM metadata service, Lockbox's payload API and the CA download),
the compose file as Compose itself normalises it, and the compose services' own commands run with
the host's directories mapped under a local root.

Paths are never restated here: where a service writes or reads is taken from its volumes and its
environment in the generated compose file, and mapped to ``<root>/<host path>``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from components.host_workload import GpuHostWorkload, HostSecrets

ROOT = Path(__file__).resolve().parents[2]
TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"
CA_PATH = "/cloud-certs/CA.pem"
FAKE_CA = b"-----BEGIN CERTIFICATE-----\nfake-yandex-ca\n-----END CERTIFICATE-----\n"

SHA = "cd" * 32
#: A partner host's workload as the stage program resolves it (Lockbox ids, the stage's DSN shape).
WORKLOAD = GpuHostWorkload(
    stage="partner",
    inference_image=f"cr.yandex/crp0example/inference@sha256:{'ab' * 32}",
    triton_repository_url=f"s3://https://storage.yandexcloud.net:443/bucket-1/models/digits/{SHA}/triton",
    triton_model="digits-mlp",
    model_sha256=SHA,
    model_uri=f"s3://bucket-1/models/digits/{SHA}/model.onnx",
    model_card_uri=f"s3://bucket-1/models/digits/{SHA}/card.json",
    pg_dsn="postgresql://inference@c-cluster1.rw.mdb.yandexcloud.net:6432/predictions?sslmode=verify-full",
    secrets=HostSecrets(storage_key="e6qstoragekey", database="e6qdatabase", grafana="e6qgrafana"),
)


def tool(name: str) -> str:
    """A validator's path: the virtualenv's bin first, then PATH. Missing is a failure, not a skip."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    assert found, (f"{name} is not installed: run scripts/install-test-deps.sh (Debian packages) and "
                   "make venv-dev (the dev lock)")
    return found


# --- the cloud ---------------------------------------------------------------------------------------------

@dataclass
class CloudState:
    """What the stand-in answers; tests change it between runs."""

    token: str = "t1.fake-iam-token"
    #: secret id -> Lockbox entries ({"key": ..., "textValue": ...})
    payloads: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    #: secret ids the VM's account has no payloadViewer on (403)
    denied: set[str] = field(default_factory=set)
    #: the metadata service answers 503 this many times first
    metadata_failures: int = 0
    ca: bytes = FAKE_CA
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    state: CloudState

    def do_GET(self) -> None:
        state = self.server.state  # type: ignore[attr-defined]
        path = urlsplit(self.path).path
        state.requests.append(("GET", path, dict(self.headers)))
        if path == TOKEN_PATH:
            # the metadata service refuses requests without the header (as Google's and Yandex's do)
            if self.headers.get("Metadata-Flavor") != "Google":
                return self._json(403, {"error": "Missing required header: Metadata-Flavor: Google"})
            if state.metadata_failures > 0:
                state.metadata_failures -= 1
                return self._json(503, {"error": "metadata service is starting"})
            return self._json(200, {"access_token": state.token, "expires_in": 43200, "token_type": "Bearer"})
        match = re.fullmatch(r"/lockbox/v1/secrets/([^/]+)/payload", path)
        if match:
            if self.headers.get("Authorization") != f"Bearer {state.token}":
                return self._json(401, {"code": 16, "message": "The token is invalid"})
            secret_id = match.group(1)
            if secret_id in state.denied:
                return self._json(403, {"code": 7, "message": f"Permission denied to secret {secret_id}"})
            if secret_id not in state.payloads:
                return self._json(404, {"code": 5, "message": f"Secret {secret_id} not found"})
            return self._json(200, {"entries": state.payloads[secret_id], "versionId": f"{secret_id}-v1"})
        if path == CA_PATH:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-x509-ca-cert")
            self.send_header("Content-Length", str(len(state.ca)))
            self.end_headers()
            self.wfile.write(state.ca)
            return None
        return self._json(404, {"error": f"{path} is not implemented here"})

    def _json(self, status: int, document: dict[str, Any]) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        return None


class FakeCloud:
    """The metadata service, Lockbox's payload API and the CA download on 127.0.0.1."""

    def __init__(self) -> None:
        self.state = CloudState()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.state = self.state  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextlib.contextmanager
def fake_cloud() -> Iterator[FakeCloud]:
    fake = FakeCloud()
    try:
        yield fake
    finally:
        fake.stop()


def closed_port_url() -> str:
    """An address where nothing listens (the metadata service is down)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def host_directory() -> Iterator[Path]:
    """A directory standing for the host's ``/``; world-traversable, so the consumers' users can reach it."""
    path = Path(tempfile.mkdtemp(prefix="aistack-host-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --- the compose file -----------------------------------------------------------------------------------------

def _unescape(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("$$", "$")
    if isinstance(value, list):
        return [_unescape(v) for v in value]
    if isinstance(value, dict):
        return {k: _unescape(v) for k, v in value.items()}
    return value


def normalized(compose_text: str, workdir: Path) -> dict[str, Any]:
    """The compose file as Compose reads it, with every profile on: volumes in long form, values as the
    containers get them. (``config`` prints a literal ``$`` as ``$$`` again, so its output stays a valid
    compose file; that is undone here. A ``$`` the generator forgot to escape would have been interpolated,
    and Compose says so.)"""
    path = workdir / "docker-compose.yml"
    path.write_text(compose_text)
    done = subprocess.run([tool("docker-compose"), "-f", str(path), "--profile", "*", "config", "--format", "json"],
                          capture_output=True, text=True, timeout=120, cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert "variable is not set" not in done.stderr, done.stderr
    document: dict[str, Any] = _unescape(json.loads(done.stdout))
    return document


@dataclass(frozen=True)
class Mount:
    kind: str  # bind or volume
    source: str  # host path or volume name
    target: str
    read_only: bool


def mounts(service: Mapping[str, Any]) -> list[Mount]:
    found = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *options = volume.split(":")
            kind = "bind" if source.startswith("/") else "volume"
            found.append(Mount(kind, source, target, "ro" in ",".join(options).split(",")))
        else:
            found.append(Mount(volume["type"], volume["source"], volume["target"], bool(volume.get("read_only"))))
    return found


class ContainerView:
    """What one compose service sees: a path in the container -> the place on the host, under ``root``."""

    def __init__(self, service: Mapping[str, Any], root: Path) -> None:
        self.service = service
        self.root = root
        self.mounts = sorted(mounts(service), key=lambda m: len(m.target), reverse=True)

    def host_dir(self, mount: Mount) -> Path:
        if mount.kind == "bind":
            return self.root / mount.source.lstrip("/")
        return self.root / "var/lib/docker/volumes" / mount.source / "_data"

    def mount_of(self, path: str) -> Mount:
        for mount in self.mounts:
            if path == mount.target or path.startswith(mount.target.rstrip("/") + "/"):
                return mount
        raise AssertionError(f"{path} is on no volume of this service: {[m.target for m in self.mounts]}")

    def local(self, path: str) -> Path:
        mount = self.mount_of(path)
        return self.host_dir(mount) / path[len(mount.target):].lstrip("/")

    def localize(self, text: str) -> str:
        """``text`` with every mount point replaced by its local directory (for running the command here)."""
        pattern = "|".join(re.escape(m.target) for m in self.mounts)
        return re.sub(rf"(?<![\w/])({pattern})(?=/|\b|$)",
                      lambda match: str(self.host_dir(self.mount_of(match.group(1)))), text) if pattern else text

    def make_dirs(self) -> None:
        for mount in self.mounts:
            self.host_dir(mount).mkdir(parents=True, exist_ok=True)


def uid_gid(service: Mapping[str, Any]) -> tuple[int, int]:
    """The numeric ``user: "<uid>:<gid>"`` a service runs as (root when it says root)."""
    user = str(service.get("user", ""))
    if user == "root":
        return 0, 0
    uid, sep, gid = user.partition(":")
    assert sep and uid.isdigit() and gid.isdigit(), f"user {user!r} is not numeric uid:gid"
    return int(uid), int(gid)


def sourced_env_file(argv: list[str]) -> str:
    """The ``env`` file a consumer's ``sh -c`` sources before it execs the program."""
    match = re.search(r"(?:^|[;&|]\s*|\s)\. (/\S+/env)(?:\s|$)", argv[2] if len(argv) > 2 else "")
    assert match, f"no `. <dir>/env` in {argv}"
    return match.group(1)


# --- running the one-shot services --------------------------------------------------------------------------

def run_python_service(service: Mapping[str, Any], root: Path, extra_env: Mapping[str, str] | None = None,
                       rewrite: Mapping[str, str] | None = None,
                       timeout: int = 120) -> subprocess.CompletedProcess[str]:
    """Run a ``python -c <script>`` compose service's own entrypoint and environment here, every path in its
    environment mapped under ``root``; ``rewrite`` replaces URL prefixes (the real endpoints by stand-ins)."""
    entrypoint = list(service["entrypoint"])
    assert entrypoint[:2] == ["python", "-c"], entrypoint
    view = ContainerView(service, root)
    view.make_dirs()
    env = {"PATH": "/usr/bin:/bin"}
    for name, value in (service.get("environment") or {}).items():
        text = view.localize(str(value))
        for old, new in (rewrite or {}).items():
            text = text.replace(old, new)
        env[name] = text
    env.update(extra_env or {})
    argv = [sys.executable, "-c", entrypoint[2]]
    health = service.get("healthcheck")
    if not health:
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    # a service that stays up: run until its own health check passes (what `depends_on: service_healthy`
    # waits for), then stop it as `docker stop` does; if it exits first, that is its result
    test = list(health["test"])
    assert test[0] == "CMD", test
    check = [view.localize(part) for part in test[1:]]
    # Docker's first check comes one interval after the start; files the check looks at that are left from
    # the previous run (same inode and change time) must not count, so they are told apart instead
    left = {path: _identity(path) for path in check if path.startswith("/")}
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None:
            fresh = all(_identity(path) != before for path, before in left.items())
            if fresh and subprocess.run(check, env={"PATH": "/usr/bin:/bin"}, capture_output=True).returncode == 0:
                process.send_signal(signal.SIGTERM)
                break
            assert time.monotonic() < deadline, f"{argv[:2]} never became healthy"
            time.sleep(0.05)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return subprocess.CompletedProcess(argv, process.returncode, out, err)


def _identity(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_ctime_ns


def secrets_env(cloud_url: str, metadata_url: str | None = None) -> dict[str, str]:
    return {"AISTACK_METADATA_URL": metadata_url or cloud_url, "AISTACK_LOCKBOX_URL": cloud_url,
            "AISTACK_ATTEMPTS": "2", "AISTACK_RETRY_SECONDS": "0"}


def ca_rewrite(compose: Mapping[str, Any], cloud_url: str) -> dict[str, str]:
    """The real CA download's origin (as the compose file names it) -> the stand-in."""
    downloads = json.loads(compose["services"]["secrets"]["environment"]["AISTACK_DOWNLOADS"])
    origins = {f"{urlsplit(u).scheme}://{urlsplit(u).netloc}" for u in downloads.values()}
    return {origin: cloud_url for origin in origins}


def files_under(directory: Path) -> dict[str, bytes]:
    if not directory.is_dir():
        return {}
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def run_as(uid: int, gid: int, argv: list[str],
           env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as that user (the tests run as root, as ``make test`` does)."""
    assert os.geteuid() == 0, "running a command as a consumer's user needs root, as make test runs"
    return subprocess.run(argv, user=uid, group=gid, extra_groups=[], env=dict(env or {"PATH": "/usr/bin:/bin"}),
                          capture_output=True, text=True, timeout=30, cwd="/")
