"""A real Triton Inference Server on 127.0.0.1, for the tests and ``bench/service.py --triton``.

The ``tritonserver`` binary comes from the nvidia-pytriton wheel in its own virtualenv
(``.venv-triton``, made by ``scripts/triton-venv.sh``: the wheel's Python backend needs numpy<2,
the main ``.venv`` has numpy 2). It runs standalone, without pytriton's Python API: a normal model
repository written by ``components.triton_repo.write_layout`` (the published layout: the card's
``config.pbtxt`` and ``1/model.onnx``) plus ``1/model.py`` (``triton_python_model.py``), because
this build has only the Python backend. It speaks the real KServe v2 HTTP and gRPC protocols.

What the binary needs, as found on these machines:

- ``LD_LIBRARY_PATH`` with the directory of the venv interpreter's own ``libpython3.11.so`` (the
  Python-backend stub links against it), not Debian's, and the wheel's ``nvidia_pytriton.libs``;
- the stub for the interpreter's Python version copied into the backend directory as
  ``python/triton_python_backend_stub`` (pytriton does the same in its workspace);
- the venv's ``bin`` first on ``PATH``, so that the embedded interpreter of the stub finds the
  venv (``pyvenv.cfg``) and with it numpy<2 and ONNX Runtime.

    python -m tests.service.triton_server MODEL_DIR      # serve a model by hand (Ctrl-C stops)
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-triton"
VENV_SCRIPT = ROOT / "scripts" / "triton-venv.sh"
MODEL_PY = Path(__file__).with_name("triton_python_model.py")
SHM_DIR = Path("/dev/shm")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class TritonDist:
    """Where the pieces of the wheel's Triton are."""

    python: Path  # the venv's interpreter (its bin/ goes first on PATH)
    dist: Path  # .../site-packages/pytriton/tritonserver
    libdir: Path  # directory of that interpreter's libpython3.11.so
    python_version: str

    @property
    def libs(self) -> Path:
        """The wheel's bundled shared libraries (the server finds them by RPATH, a copied stub does not)."""
        return self.dist.parent.parent / "nvidia_pytriton.libs"

    @property
    def binary(self) -> Path:
        return self.dist / "bin" / "tritonserver"

    @property
    def stub(self) -> Path:
        return self.dist / "python_backend_stubs" / self.python_version / "triton_python_backend_stub"


_PROBE = (
    "import json, pathlib, sys, sysconfig, pytriton; "
    "print(json.dumps({'dist': str(pathlib.Path(pytriton.__file__).parent / 'tritonserver'), "
    "'libdir': sysconfig.get_config_var('LIBDIR'), 'version': '%d.%d' % sys.version_info[:2]}))"
)


def ensure_triton_venv(venv: Path = VENV) -> TritonDist:
    """Create or update ``.venv-triton`` (a no-op when it is up to date) and locate Triton in it.

    Raises ``RuntimeError`` with the script's output when it cannot be made (no network, wrong
    Python version, ...), so a test that needs Triton fails with the reason.
    """
    env = dict(os.environ, TRITON_VENV=str(venv))
    done = subprocess.run(["bash", str(VENV_SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(
            f"{VENV_SCRIPT.relative_to(ROOT)} failed (exit {done.returncode}); the Triton tests need it:\n"
            f"{(done.stdout + done.stderr)[-3000:]}"
        )
    python = venv / "bin" / "python"
    probe = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, timeout=120, check=True)
    found = json.loads(probe.stdout)
    dist = TritonDist(python, Path(found["dist"]), Path(found["libdir"]), found["version"])
    for path in (dist.binary, dist.stub, dist.libdir / f"libpython{dist.python_version}.so"):
        if not path.exists():
            raise RuntimeError(f"{path} is missing: {venv} does not hold a usable tritonserver")
    return dist


def python_backend_repository(model_dir: Path, out_dir: Path, max_batch_size: int = 64) -> tuple[Path, str]:
    """The published Triton layout of ``model_dir`` (``card.json`` + ``model.onnx``) for the Python
    backend on CPU, plus ``model.py``; returns ``(repository root, model name)``."""
    from components.triton_repo import TritonOptions, load_card, model_name, write_layout

    options = TritonOptions(backend="python", instance_kind="KIND_CPU", max_batch_size=max_batch_size)
    root = write_layout(Path(model_dir), options, out_dir=Path(out_dir))
    name = model_name(load_card(Path(model_dir)))
    shutil.copyfile(MODEL_PY, root / name / "1" / "model.py")
    return root, name


class TritonServer:
    """One ``tritonserver`` process (and its Python-backend stubs) in its own process group, on
    fixed ports so that it can be killed and started again where clients expect it."""

    def __init__(self, repository: Path, workdir: Path, dist: TritonDist | None = None) -> None:
        self.repository = Path(repository)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.dist = dist or ensure_triton_venv()
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.metrics_port = free_port()
        self.log_path = self.workdir / "tritonserver.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._shm_prefix = f"yc-aistack-test-{secrets.token_hex(4)}-"
        self._backends = self._prepare_backends()

    @property
    def http_url(self) -> str:
        """``host:port`` of the HTTP endpoint (tritonclient's form, no scheme)."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def _prepare_backends(self) -> Path:
        backends = self.workdir / "backends"
        if not backends.is_dir():
            shutil.copytree(self.dist.dist / "backends", backends)
            stub = backends / "python" / "triton_python_backend_stub"
            shutil.copyfile(self.dist.stub, stub)
            stub.chmod(stub.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return backends

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        paths = [str(self.dist.libdir), str(self.dist.libs), os.environ.get("LD_LIBRARY_PATH")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, paths))
        env["PATH"] = os.pathsep.join([str(self.dist.python.parent), env.get("PATH", "/usr/bin:/bin")])
        env["OMP_NUM_THREADS"] = "1"
        return env

    def argv(self) -> list[str]:
        return [
            str(self.dist.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={self._backends}",
            f"--cache-directory={self.dist.dist / 'caches'}",
            "--model-control-mode=none",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--log-verbose=0",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
        ]

    def start(self, wait: bool = True, timeout: float = 90.0) -> TritonServer:
        if self.running:
            raise RuntimeError("tritonserver is already running")
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                self.argv(),
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(self.workdir),
                start_new_session=True,
            )
        finally:
            log.close()
        if wait:
            self.wait_ready(timeout)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=2.0) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (OSError, ValueError):
            return 0

    def ready(self) -> bool:
        return self._get("/v2/health/ready") == 200

    def model_ready(self, name: str) -> bool:
        return self._get(f"/v2/models/{name}/ready") == 200

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"tritonserver not ready after {timeout}s:\n{self.log_tail()}")

    def _signal_group(self, sig: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the server and its stubs at once (a crash, as far as clients can tell)."""
        if self.proc is None:
            return
        self._signal_group(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._wait_ports_free()
        self._clean_shm()

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(timeout=30)
        # the stubs are in the same process group; make sure none outlives the server
        self._signal_group(signal.SIGKILL)
        self._clean_shm()

    def _wait_ports_free(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        for port in (self.http_port, self.grpc_port):
            while time.monotonic() < deadline:
                with socket.socket() as sock:
                    if sock.connect_ex(("127.0.0.1", port)) != 0:
                        break
                time.sleep(0.05)

    def _clean_shm(self) -> None:
        """A killed Python backend leaves its shared-memory regions behind."""
        if SHM_DIR.is_dir():
            for region in SHM_DIR.glob(f"{self._shm_prefix}*"):
                with contextlib.suppress(OSError):
                    region.unlink()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description="serve a model directory (card.json + model.onnx) with Triton")
    parser.add_argument("model_dir", type=Path, nargs="?", default=ROOT / "models" / "digits")
    parser.add_argument("--info", action="store_true", help="only create the venv and print where Triton is")
    args = parser.parse_args(argv)
    dist = ensure_triton_venv()
    if args.info:
        print(json.dumps({k: str(v) for k, v in vars(dist).items()}, indent=2))
        return 0
    with tempfile.TemporaryDirectory(prefix="triton-") as tmp:
        repository, name = python_backend_repository(args.model_dir, Path(tmp) / "repository")
        server = TritonServer(repository, Path(tmp) / "work", dist).start()
        print(f"model {name}: HTTP {server.http_url}, gRPC {server.grpc_url}; Ctrl-C stops", flush=True)
        try:
            while server.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
