"""Helpers shared by the service tests: a real ``python -m service`` process, a moto S3 server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
REGION = "ru-central1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServiceProcess:
    """A running ``python -m service`` with its own port, store, spool and log file."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    env: dict[str, str]
    _log: Any = field(repr=False, default=None)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=30.0, **kwargs)

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_bytes().splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                lines.append({"unparsed": raw.decode("utf-8", "replace")})
        return lines

    def wait_ready(self, timeout: float = 60.0, expect: int = 200) -> None:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"service exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                response = httpx.get(f"{self.base}/readyz", timeout=2.0)
                last = response.status_code
                if response.status_code == expect:
                    return
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.05)
        raise AssertionError(f"/readyz never answered {expect} (last: {last}):\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return int(self.proc.returncode)


def service_env(workdir: Path, **overrides: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MODEL_", "STORE", "SPOOL", "BATCH", "API_KEY", "S3_", "AWS_", "MAX_", "ORT_"))
    }
    env.update(
        HOST="127.0.0.1",
        STORE_PATH=str(workdir / "predictions"),
        SPOOL_DIR=str(workdir / "spool"),
        PYTHONPATH=str(ROOT),
        STORE_FLUSH_SECONDS="0.2",
        STORE_RETRY_SECONDS="0.3",
    )
    env.update(overrides)
    return env


def start_service(workdir: Path, *, wait: bool = True, cwd: Path | None = None, **env: str) -> ServiceProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    full_env = service_env(workdir, PORT=str(port), **env)
    log_path = workdir / f"service-{port}.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "service"],
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=str(cwd or ROOT),
    )
    svc = ServiceProcess(proc, port, log_path, full_env, log)
    if wait:
        svc.wait_ready()
    return svc


def wait_until(predicate: Any, timeout: float = 20.0, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def metric_value(text: str, name: str, /, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format (None if absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_part = head.partition("{")
        if metric != name:
            continue
        found = {}
        for item in label_part.rstrip("}").split(","):
            if "=" in item:
                key, _, val = item.partition("=")
                found[key] = val.strip('"')
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


class MotoS3:
    """A moto S3 server over HTTP on 127.0.0.1 that can be stopped and restarted on the same port."""

    def __init__(self) -> None:
        import logging

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.port = free_port()
        self._server: Any = None
        self.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})

    def env(self) -> dict[str, str]:
        return {"S3_ENDPOINT_URL": self.endpoint, "AWS_REGION": REGION, **CREDENTIALS}
