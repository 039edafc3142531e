"""``BACKEND=triton`` against a real Triton Inference Server (the nvidia-pytriton wheel's
``tritonserver`` in ``.venv-triton``, Python backend running ONNX Runtime) on 127.0.0.1.

The model repository is the published layout (``components.triton_repo.write_layout``: the card's
``config.pbtxt`` with dynamic batching, ``1/model.onnx``) plus the Python-backend ``model.py``.
Services talk to it over gRPC and over HTTP; their answers are compared with the in-process ONNX
Runtime service's. Triton is killed under the services and started again: 503s with the reason,
``/readyz`` not ready, then recovery without restarting anything.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.backends.base import BackendError, BackendRejected, BackendUnavailable
from service.backends.triton import TritonBackend
from service.model_source import ModelArtifact, fetch_model
from tests.service.helpers import ServiceProcess, metric_value, start_service, wait_until
from tests.service.triton_server import TritonDist, TritonServer, ensure_triton_venv, python_backend_repository

PROTOCOLS = ("grpc", "http")


@pytest.fixture(scope="session")
def triton_dist() -> TritonDist:
    """``.venv-triton`` (created by ``scripts/triton-venv.sh`` if missing). No skip: without it the
    Triton tests fail with the script's output."""
    return ensure_triton_venv()


@pytest.fixture(scope="module")
def repository(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return python_backend_repository(demo_model, tmp_path_factory.mktemp("triton") / "repository")


@pytest.fixture(scope="module")
def triton(
    repository: tuple[Path, str], triton_dist: TritonDist, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    """One Triton for the module's read-only tests."""
    server = TritonServer(repository[0], tmp_path_factory.mktemp("triton-work"), triton_dist)
    server.start()
    yield server
    server.stop()


def triton_env(demo_model: Path, server: TritonServer, protocol: str, **extra: str) -> dict[str, str]:
    return {
        "MODEL_URI": str(demo_model / "model.onnx"),
        "BACKEND": "triton",
        "TRITON_PROTOCOL": protocol,
        "TRITON_URL": server.grpc_url if protocol == "grpc" else server.http_url,
        "TRITON_TIMEOUT_SECONDS": "5",
        **extra,
    }


@pytest.fixture(scope="module")
def through_triton(
    demo_model: Path, triton: TritonServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServiceProcess]]:
    """A service per protocol, both on the module's Triton."""
    started = {
        protocol: start_service(tmp_path_factory.mktemp(f"svc-{protocol}"), **triton_env(demo_model, triton, protocol))
        for protocol in PROTOCOLS
    }
    yield started
    for svc in started.values():
        assert svc.stop() == 0, svc.log_tail()


def _predict(svc: ServiceProcess, rows: np.ndarray) -> tuple[np.ndarray, list[int]]:
    with svc.client() as http:
        response = http.post("/v1/predict", json={"instances": rows.tolist()})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    return np.array([p["probabilities"] for p in predictions], dtype=np.float32), [p["label"] for p in predictions]


# -- answers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_predictions_through_triton_equal_the_in_process_backend(
    protocol: str, through_triton: dict[str, ServiceProcess], service: ServiceProcess, digits: tuple
) -> None:
    x_test, y_test = digits
    svc = through_triton[protocol]
    with svc.client() as http:
        assert http.get("/readyz").json()["backend"] == "triton"
    for rows in (x_test[:1], x_test[:64], x_test[64:100]):
        got, got_labels = _predict(svc, rows)
        want, want_labels = _predict(service, rows)  # the in-process ONNX Runtime service
        assert got.shape == want.shape == (len(rows), 10)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
        assert got_labels == want_labels
    _, labels = _predict(svc, x_test[:64])
    assert np.mean(np.array(labels) == y_test[:64]) > 0.9


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_concurrent_requests_merge_past_tritons_max_batch_size(
    protocol: str, through_triton: dict[str, ServiceProcess], service: ServiceProcess, digits: tuple
) -> None:
    """16 concurrent 64-row requests: the micro-batcher merges them (up to BATCH_MAX_SIZE=128 rows,
    over the model's max_batch_size of 64), the backend splits them for Triton, rows stay in order."""
    x_test, _ = digits
    chunks = [x_test[i * 20 : i * 20 + 64] for i in range(16)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        through = list(pool.map(lambda rows: _predict(through_triton[protocol], rows), chunks))
    for rows, (got, labels) in zip(chunks, through, strict=True):
        want, want_labels = _predict(service, rows)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
        assert labels == want_labels
    with httpx.Client(base_url=through_triton[protocol].base) as http:
        metrics = http.get("/metrics").text
    assert 'inference_duration_seconds_count{backend="triton"}' in metrics
    # some runs merged two 64-row requests: more rows than Triton's max_batch_size, split and joined
    runs = metric_value(metrics, "inference_batch_size_count") or 0
    at_most_64 = metric_value(metrics, "inference_batch_size_bucket", le="64.0") or 0
    assert runs > at_most_64, (runs, at_most_64)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_v2_infer_through_triton(
    protocol: str, through_triton: dict[str, ServiceProcess], service: ServiceProcess, digits: tuple, demo_model: Path
) -> None:
    name = json.loads((demo_model / "card.json").read_text())["name"]
    rows = digits[0][:5]
    body = {"inputs": [{"name": "float_input", "shape": [5, 64], "datatype": "FP32", "data": rows.tolist()}]}
    with through_triton[protocol].client() as http:
        got = http.post(f"/v2/models/{name}/infer", json=body)
        meta = http.get(f"/v2/models/{name}").json()
        ready = http.get(f"/v2/models/{name}/ready")
    with service.client() as http:
        want = http.post(f"/v2/models/{name}/infer", json=body)
    assert got.status_code == want.status_code == 200, got.text
    assert ready.status_code == 200
    assert meta["platform"] == "triton"
    got_out = {o["name"]: o for o in got.json()["outputs"]}
    want_out = {o["name"]: o for o in want.json()["outputs"]}
    assert got_out["label"]["data"] == want_out["label"]["data"]
    np.testing.assert_allclose(got_out["probabilities"]["data"], want_out["probabilities"]["data"], rtol=1e-5)


def test_a_card_that_does_not_match_tritons_model_is_refused(
    model_copy: Path, triton: TritonServer, services: Any
) -> None:
    """Triton serves ``float_input``; a card naming another input is a model the service refuses."""
    card_path = model_copy / "card.json"
    card = json.loads(card_path.read_text())
    card["inputs"][0]["name"] = "pixels"
    card_path.write_text(json.dumps(card))
    svc = services(wait=False, **triton_env(model_copy, triton, "grpc", MODEL_RETRY_SECONDS="0"))
    svc.wait_ready(expect=503)
    with svc.client() as http:
        ready = http.get("/readyz").json()
        predict = http.post("/v1/predict", json={"instances": [[0.0] * 64]})
    assert ready["status"] == "not_ready"
    assert "invalid" in ready["reason"] and "does not match the card" in ready["reason"], ready
    assert "'pixels'" in ready["reason"]
    assert predict.status_code == 503


# -- Triton going away and coming back ----------------------------------------------------------


@pytest.fixture
def own_triton(repository: tuple[Path, str], triton_dist: TritonDist, tmp_path: Path) -> Iterator[TritonServer]:
    """A Triton of the test's own (not started): the test kills and restarts it."""
    server = TritonServer(repository[0], tmp_path / "triton", triton_dist)
    yield server
    server.stop()


def _status(svc: ServiceProcess, rows: np.ndarray) -> tuple[int, dict[str, Any]]:
    response = httpx.post(f"{svc.base}/v1/predict", json={"instances": rows.tolist()}, timeout=30)
    return response.status_code, response.json()


@pytest.mark.slow
def test_services_started_before_triton_become_ready_when_it_comes_up(
    own_triton: TritonServer, demo_model: Path, services: Any, digits: tuple
) -> None:
    """The GPU host starts Triton and the service together: the service comes up not ready (503,
    with the reason) and becomes ready by itself once Triton serves the model, no restart."""
    rows = digits[0][:3]
    started = {p: services(wait=False, **triton_env(demo_model, own_triton, p)) for p in PROTOCOLS}
    for svc in started.values():
        svc.wait_ready(expect=503)
        code, body = _status(svc, rows)
        assert code == 503, body
        assert body["rule"] == "backend_unavailable"
        assert "Triton" in body["error"]
        reason = httpx.get(f"{svc.base}/readyz").json()["reason"]
        assert reason.startswith("backend not ready: Triton"), reason
    own_triton.start()
    for svc in started.values():
        svc.wait_ready(timeout=30)
        code, body = _status(svc, rows)
        assert code == 200, body
        assert svc.proc.poll() is None


@pytest.mark.slow
def test_killing_triton_gives_503s_then_recovery_without_restart(
    own_triton: TritonServer, demo_model: Path, services: Any, service: ServiceProcess, digits: tuple
) -> None:
    x_test, _ = digits
    rows = x_test[:8]
    want, want_labels = _predict(service, rows)
    own_triton.start()
    started = {p: services(**triton_env(demo_model, own_triton, p, TRITON_RETRIES="2")) for p in PROTOCOLS}
    pids = {p: svc.proc.pid for p, svc in started.items()}
    for svc in started.values():
        got, _ = _predict(svc, rows)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)

    # under load: concurrent clients keep predicting while Triton is killed
    stop_at = time.monotonic() + 3.0
    statuses: dict[str, list[int]] = {p: [] for p in PROTOCOLS}

    def client(protocol: str) -> None:
        with httpx.Client(base_url=started[protocol].base, timeout=30) as http:
            while time.monotonic() < stop_at:
                statuses[protocol].append(http.post("/v1/predict", json={"instances": rows.tolist()}).status_code)

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(client, p) for p in PROTOCOLS for _ in range(4)]
        time.sleep(1.0)
        own_triton.kill()
        for future in futures:
            future.result()
    for protocol in PROTOCOLS:
        seen = set(statuses[protocol])
        assert seen <= {200, 503}, (protocol, seen)  # never a 500, never a hang
        assert 200 in seen and 503 in seen, (protocol, seen)

    for svc in started.values():
        code, body = _status(svc, rows)
        assert code == 503, body
        assert body["error"] == "the inference backend (Triton) is unreachable; retry later", body
        assert body["rule"] == "backend_unavailable"
        readyz = wait_until(
            lambda svc=svc: (r := httpx.get(f"{svc.base}/readyz")).status_code == 503 and r, what="readyz 503"
        )
        reason = readyz.json()["reason"]
        assert reason.startswith("backend not ready: Triton") and "failed" in reason, reason
        assert httpx.get(f"{svc.base}/v2/health/ready").status_code == 400
        assert httpx.get(f"{svc.base}/healthz").status_code == 200  # alive, just not ready

    own_triton.start()  # same ports
    for protocol, svc in started.items():
        wait_until(lambda svc=svc: _status(svc, rows)[0] == 200, timeout=30, what=f"{protocol} recovery")
        got, labels = _predict(svc, rows)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
        assert labels == want_labels
        assert httpx.get(f"{svc.base}/readyz").status_code == 200
        assert svc.proc.poll() is None and svc.proc.pid == pids[protocol]  # the same process throughout
        log = "\n".join(json.dumps(line) for line in svc.log_lines())
        assert "is not available" in log and "is available again" in log


# -- timeouts and retries (the backend on its own) ----------------------------------------------


def _artifact(demo_model: Path) -> ModelArtifact:
    return fetch_model(str(demo_model / "model.onnx"), None, None, lambda: None)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_server_that_never_answers_times_out_as_503(protocol: str, demo_model: Path) -> None:
    """A socket that accepts connections and says nothing: every call ends within
    TRITON_TIMEOUT_SECONDS (gRPC gives up on the missing HTTP/2 handshake, HTTP on the answer)."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    url = f"127.0.0.1:{silent.getsockname()[1]}"
    timeout, retries = 0.5, 1

    async def go() -> tuple[BaseException, float, bool, str | None]:
        backend = TritonBackend(url, protocol=protocol, timeout=timeout, retries=retries)  # type: ignore[arg-type]
        await backend.load(_artifact(demo_model))  # Triton not answering is not a load failure
        ready = await backend.ready()
        reason = backend.unready_reason
        start = time.monotonic()
        try:
            await backend.infer(np.zeros((1, 64), np.float32))
        except BackendError as exc:
            error: BaseException = exc
        else:
            raise AssertionError("inference against a silent server succeeded")
        elapsed = time.monotonic() - start
        await backend.close()
        return error, elapsed, ready, reason

    try:
        error, elapsed, ready, reason = asyncio.run(go())
    finally:
        silent.close()
    assert not ready and reason is not None, reason
    assert "no answer within 0.5s" in reason or "timed out" in reason, reason
    assert isinstance(error, BackendUnavailable), error
    assert error.status == 503
    assert error.public_message in (
        "the inference backend (Triton) did not answer in time; retry later",
        "the inference backend (Triton) is unreachable; retry later",
    )
    assert elapsed < (retries + 1) * timeout + 0.5, elapsed


def test_transient_errors_are_retried_a_bounded_number_of_times() -> None:
    from tritonclient.utils import InferenceServerException

    backend = TritonBackend("127.0.0.1:1", protocol="grpc", timeout=1.0, retries=3, retry_backoff_ms=10)
    calls: list[float] = []

    def failing(status: str) -> Any:
        async def call() -> None:
            calls.append(time.monotonic())
            raise InferenceServerException("boom", status=status)

        return call

    async def go(status: str) -> BaseException:
        try:
            await backend._call("inference", failing(status))
        except Exception as exc:
            return exc
        raise AssertionError("no error")

    calls.clear()
    error = asyncio.run(go("StatusCode.UNAVAILABLE"))
    assert isinstance(error, BackendUnavailable) and "after 4 attempts" in str(error)
    assert len(calls) == 4  # 1 + TRITON_RETRIES
    gaps = np.diff(calls)
    assert gaps[0] >= 0.009 and gaps[2] >= 0.035  # 10, 20, 40 ms: doubling backoff

    for status in ("StatusCode.INVALID_ARGUMENT", "StatusCode.INTERNAL"):
        calls.clear()
        error = asyncio.run(go(status))
        assert isinstance(error, InferenceServerException)  # not transient: no retry, explained later
        assert len(calls) == 1

    calls.clear()
    error = asyncio.run(go("StatusCode.DEADLINE_EXCEEDED"))
    assert isinstance(error, BackendUnavailable) and len(calls) == 1


def test_triton_rejecting_the_data_is_a_422(triton: TritonServer, demo_model: Path, tmp_path: Path) -> None:
    """With the model ready, Triton refusing a request is about the data: 422 with its message."""
    model_dir = tmp_path / "model"
    shutil.copytree(demo_model, model_dir)

    async def go() -> BaseException:
        backend = TritonBackend(triton.grpc_url, protocol="grpc")
        await backend.load(_artifact(model_dir))
        assert await backend.ready()
        try:
            await backend.infer(np.zeros((1, 63), np.float32))  # one feature short
        except BackendError as exc:
            return exc
        finally:
            await backend.close()
        raise AssertionError("Triton accepted a wrong shape")

    error = asyncio.run(go())
    assert isinstance(error, BackendRejected), error
    assert error.status == 422 and "float_input" in error.public_message


@pytest.mark.parametrize(
    ("url", "words"),
    [("http://triton:8000", "without a scheme"), ("triton", "host:port"), ("triton:0", "host:port")],
)
def test_triton_url_must_be_host_and_port(url: str, words: str) -> None:
    from pydantic import ValidationError

    from service.settings import settings_from_env

    with pytest.raises(ValidationError, match=words):
        settings_from_env({"BACKEND": "triton", "TRITON_URL": url})
    settings = settings_from_env({"BACKEND": "triton", "TRITON_URL": "triton:8001"})
    assert (settings.triton_protocol, settings.triton_model, settings.triton_timeout_seconds) == ("grpc", None, 5.0)
