"""The service part of ``make demo``: start ``python -m service`` on a free local port with its
embedded defaults and the released demo model (``models/digits``, committed), ask for one
prediction on a held-out digit of its golden input, print it, stop the service.

Everything runs on this machine: in-process ONNX Runtime, the file-based ``local`` prediction store
(under a temporary directory, so the demo leaves nothing behind). Nothing is trained: the demo
needs neither scikit-learn nor the model toolchain.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from stagectl.model import CARD_FILE, GOLDEN_FILE, MODEL_FILE, RELEASE_DIR, sha256_file

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
SAMPLE_INDEX = 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _http(method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 5.0) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _wait_ready(base: str, proc: subprocess.Popen[bytes]) -> float:
    start = time.monotonic()
    while time.monotonic() - start < READY_TIMEOUT_S:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited with status {proc.returncode} before it was ready")
        try:
            status, _ = _http("GET", f"{base}/readyz", timeout=1.0)
            if status == 200:
                return time.monotonic() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"the service was not ready after {READY_TIMEOUT_S:.0f}s")


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class DemoError(Exception):
    pass


def released_model(root: Path) -> tuple[Path, dict[str, Any]]:
    """The committed release (``models/digits``) and its card, checked against each other."""
    model_dir = root / RELEASE_DIR
    missing = [name for name in (MODEL_FILE, CARD_FILE, GOLDEN_FILE) if not (model_dir / name).is_file()]
    if missing:
        raise DemoError(f"{', '.join(str(RELEASE_DIR / m) for m in missing)} missing: the released model is part of "
                        f"the repository (git checkout -- {RELEASE_DIR})")
    card: dict[str, Any] = json.loads((model_dir / CARD_FILE).read_text(encoding="utf-8"))
    actual = sha256_file(model_dir / MODEL_FILE)
    if actual != card["sha256"]:
        raise DemoError(f"{RELEASE_DIR / MODEL_FILE} has sha256 {actual} but its card says {card['sha256']}: "
                        f"restore the release (git checkout -- {RELEASE_DIR})")
    return model_dir, card


def run_service_demo() -> int:
    """Serve the released model, predict one held-out digit, stop; 0 on success."""
    try:
        model_dir, card = released_model(Path.cwd())
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    print(f"model {card['name']} version {card['version']} (held-out accuracy {card['accuracy']})", flush=True)

    golden = json.loads((model_dir / GOLDEN_FILE).read_text(encoding="utf-8"))
    pixels, truth = golden["instances"][SAMPLE_INDEX], golden["targets"][SAMPLE_INDEX]
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="service-demo-") as tmp:
        env = {k: v for k, v in os.environ.items() if k not in ("MODEL_URI", "MODEL_CARD_URI", "MODEL_SHA256", "STORE")}
        env.update(
            PORT=str(port),
            HOST="127.0.0.1",
            MODEL_URI=str(model_dir / MODEL_FILE),
            STORE_PATH=str(Path(tmp) / "predictions"),
            SPOOL_DIR=str(Path(tmp) / "spool"),
            LOG_LEVEL="warning",
        )
        log_path = Path(tmp) / "service.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "service"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(Path.cwd())
            )
            try:
                ready_s = _wait_ready(base, proc)
                print(f"service ready on {base} after {ready_s:.2f}s (python -m service, embedded defaults)")
                request = {"instances": [pixels]}
                print(
                    f"POST {base}/v1/predict  instances: 1 x {len(pixels)} floats "
                    f"(held-out digit #{SAMPLE_INDEX}, true label {truth})"
                )
                status, answer = _http("POST", f"{base}/v1/predict", request)
                print(f"HTTP {status}")
                print(json.dumps(answer, indent=2))
            finally:
                code = _stop(proc)
        if status != 200:
            print(log_path.read_text(encoding="utf-8", errors="replace")[-2000:], file=sys.stderr)
            return 1
        predicted = answer["predictions"][0]["label"]
        confidence = max(answer["predictions"][0]["probabilities"])
        verdict = "correct" if predicted == truth else "wrong"
        print(f"predicted {predicted} with p={confidence:.4f} ({verdict}); service stopped cleanly (exit {code})")
        records = sorted((Path(tmp) / "predictions").glob("*.jsonl"))
        logged = sum(len(p.read_bytes().splitlines()) for p in records)
        print(f"prediction log: {logged} record(s) written by the local store")
        return 0 if code == 0 else 1
