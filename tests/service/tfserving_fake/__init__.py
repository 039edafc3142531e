"""Start/stop the TF Serving test server (``server.py``, run under ``.venv-tf``) from the tests.

The TensorFlow virtualenv is required, never optional: without it the tests that need TensorFlow
fail and say how to create it (``scripts/tf-venv.sh``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from stagectl.tf_export import tf_python
from tests.service.helpers import free_port

SERVER = Path(__file__).resolve().parent / "server.py"
_BUILT: dict[str, Path] = {}


def built_model_with_tf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory written by the real ``stagectl model build`` CLI, TF SavedModel included
    (``model.onnx``, ``card.json``, ``tf/1/``); built once per test process."""
    if "dir" not in _BUILT:
        require_tf_python()
        import argparse

        from stagectl import model as model_cmd

        out = tmp_path_factory.mktemp("built-with-tf") / "digits"
        parser = argparse.ArgumentParser(prog="stagectl")
        model_cmd.add_commands(parser.add_subparsers(dest="command"))
        # compared with no release: reproducing the release's bytes is test_service_model_build's concern
        no_release = tmp_path_factory.mktemp("no-release")
        args = parser.parse_args(["model", "build", "--out", str(out), "--release", str(no_release)])
        code = args.func(args)
        assert code == 0, "stagectl model build failed"
        assert (out / "tf" / "1" / "saved_model.pb").is_file(), "stagectl model build wrote no TF SavedModel"
        _BUILT["dir"] = out
    return _BUILT["dir"]


def require_tf_python() -> Path:
    """The ``.venv-tf`` interpreter, or a test failure that says how to get it."""
    python = tf_python()
    if python is None or not python.exists():
        pytest.fail(
            "TensorFlow virtualenv .venv-tf is missing: run scripts/tf-venv.sh "
            "(scripts/install-test-deps.sh does it as part of `make test`)",
            pytrace=False,
        )
    return python


class FakeTfServing:
    """One ``server.py`` process on 127.0.0.1 that can be killed and restarted on the same port."""

    def __init__(self, base_path: Path | str, model_name: str, log_path: Path, load_delay: float = 0.0) -> None:
        self.python = require_tf_python()
        self.base_path = base_path
        self.model_name = model_name
        self.log_path = log_path
        self.load_delay = load_delay
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True, timeout: float = 90.0) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(self.python),
                    str(SERVER),
                    f"--port={self.port}",
                    f"--model_name={self.model_name}",
                    f"--model_base_path={self.base_path}",
                    f"--load_delay={self.load_delay}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        if wait:
            self.wait_available(timeout)

    def wait_available(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"TF Serving test server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                response = httpx.get(f"{self.url}/v1/models/{self.model_name}", timeout=2.0)
                last = response.text
                if response.status_code == 200 and '"AVAILABLE"' in response.text:
                    return
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.1)
        raise AssertionError(f"TF Serving test server not AVAILABLE in {timeout}s (last: {last}):\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL, like a crashed or evicted pod: no goodbye on open connections."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""
