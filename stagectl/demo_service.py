"""The service part of ``make demo``: build the demo model if needed, start ``python -m service`` on a
free local port with its embedded defaults, ask for one prediction, print it, stop the service.

Everything runs on this machine: in-process ONNX Runtime, the file-based ``local`` prediction store
(under a temporary directory, so the demo leaves nothing behind but the model in ``models/digits``).
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

from stagectl.model import CARD_FILE, DEFAULT_OUT, MODEL_FILE

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


def run_service_demo() -> int:
    """Build (if missing), serve, predict one held-out digit, stop; 0 on success."""
    from stagectl.model import build_demo_model, held_out_sample

    model_dir = Path.cwd() / DEFAULT_OUT
    if not (model_dir / MODEL_FILE).is_file() or not (model_dir / CARD_FILE).is_file():
        print(f"building the demo model into {model_dir} ...", flush=True)
        card = build_demo_model(model_dir)
    else:
        card = json.loads((model_dir / CARD_FILE).read_text(encoding="utf-8"))
    print(f"model {card['name']} version {card['version']} (held-out accuracy {card['accuracy']})", flush=True)

    pixels, truth = held_out_sample(SAMPLE_INDEX)
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
