"""``BACKEND=tfserving`` against a server speaking TF Serving's REST API with the real SavedModel.

TensorFlow Serving itself is not run (it cannot be installed here): ``tfserving_fake/server.py``
implements its documented REST API (predict in row and columnar format, model status, metadata,
``{"error": ...}`` bodies with TF Serving's status codes) by running the SavedModel that
``stagectl model build`` writes in TensorFlow (``.venv-tf``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.backends.base import BackendError, BackendRejected, BackendUnavailable
from service.backends.onnx import OnnxBackend
from service.backends.tfserving import TfServingBackend
from service.model_source import ModelArtifact, ModelLoadError, fetch_model
from stagectl.tf_export import MAX_ABS_DIFF
from tests.service.helpers import free_port, metric_value, wait_until
from tests.service.tfserving_fake import FakeTfServing, built_model_with_tf

MODEL = "digits"  # TFSERVING_MODEL of deploy/base (the stage's model name, not the card's)


def _no_s3() -> Any:
    raise AssertionError("no S3 here")


def _artifact(model_dir: Path) -> ModelArtifact:
    return fetch_model(str(model_dir / "model.onnx"), None, None, _no_s3)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_model_with_tf(tmp_path_factory)


@pytest.fixture(scope="module")
def tf_serving(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeTfServing]:
    server = FakeTfServing(built / "tf", MODEL, tmp_path_factory.mktemp("tfs") / "server.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def onnx_reference(built: Path) -> Callable[[np.ndarray], np.ndarray]:
    backend = OnnxBackend()
    asyncio.run(backend.load(_artifact(built)))
    return backend.infer_blocking


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.mark.slow
@pytest.mark.parametrize("request_format", ["row", "columnar"])
def test_predictions_through_tf_serving_equal_the_onnx_backend(
    request_format: Any, built: Path, tf_serving: FakeTfServing, onnx_reference: Any, digits: tuple
) -> None:
    x_test, _ = digits
    backend = TfServingBackend(tf_serving.url, model=MODEL, request_format=request_format)

    async def go() -> list[np.ndarray]:
        await backend.load(_artifact(built))
        assert await backend.ready()
        try:
            return [await backend.infer(x_test[i : i + n]) for i, n in ((0, 1), (1, 64), (65, 385))]
        finally:
            await backend.close()

    got = np.concatenate(_run(go()))
    expected = onnx_reference(x_test)
    assert got.shape == expected.shape == (450, 10) and got.dtype == np.float32
    assert float(np.max(np.abs(got - expected))) <= MAX_ABS_DIFF
    assert np.array_equal(got.argmax(axis=1), expected.argmax(axis=1))


@pytest.mark.slow
def test_load_checks_the_model_version_and_signature_against_the_card(
    built: Path, tf_serving: FakeTfServing, tmp_path: Path
) -> None:
    artifact = _artifact(built)
    card = json.loads((built / "card.json").read_text())
    card["inputs"][0]["name"] = "pixels"
    (tmp_path / "card.json").write_text(json.dumps(card))
    renamed = fetch_model(str(built / "model.onnx"), str(tmp_path / "card.json"), None, _no_s3)

    async def load_error(model_artifact: ModelArtifact = artifact, **kwargs: Any) -> ModelLoadError:
        backend = TfServingBackend(tf_serving.url, **kwargs)
        try:
            with pytest.raises(ModelLoadError) as info:
                await backend.load(model_artifact)
        finally:
            await backend.close()
        return info.value

    async def go() -> None:
        pinned = TfServingBackend(tf_serving.url, model=MODEL, version=1)
        await pinned.load(artifact)
        assert pinned.predict_path == f"/v1/models/{MODEL}/versions/1:predict"
        assert (await pinned.infer(np.zeros((1, 64), dtype=np.float32))).shape == (1, 10)
        await pinned.close()

        err = await load_error(model=MODEL, version=2)
        assert err.kind == "missing" and "Could not find version 2 of model digits" in err.reason
        err = await load_error()  # default: the card's name, which this TF Serving does not serve
        assert err.kind == "missing" and "Could not find any versions of model digits-mlp" in err.reason
        err = await load_error(model=MODEL, signature="classify")
        assert err.kind == "invalid" and "no signature 'classify'" in err.reason and "serving_default" in err.reason
        err = await load_error(renamed, model=MODEL)
        assert err.kind == "invalid" and "['float_input']" in err.reason and "'pixels'" in err.reason

    _run(go())


@pytest.mark.slow
def test_tf_serving_400_becomes_a_422_that_names_the_problem(built: Path, tf_serving: FakeTfServing) -> None:
    backend = TfServingBackend(tf_serving.url, model=MODEL)

    async def go() -> None:
        await backend.load(_artifact(built))
        try:
            with pytest.raises(BackendRejected) as info:
                await backend.infer(np.zeros((2, 63), dtype=np.float32))  # past the service's own validation
        finally:
            await backend.close()
        err = info.value
        assert err.status == 422 and err.field == "instances" and err.rule == "backend_rejected"
        assert err.public_message.startswith("TF Serving rejected the input: ")
        assert "float_input" in err.public_message

    _run(go())


# --- error mapping and bounded retries (scripted answers) ---------------------------------------


def _status() -> dict[str, Any]:
    return {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK"}}]}


def _metadata() -> dict[str, Any]:
    def spec(dims: list[int], dtype: str) -> dict[str, Any]:
        return {"dtype": dtype, "tensor_shape": {"dim": [{"size": str(d)} for d in dims]}}

    return {
        "metadata": {
            "signature_def": {
                "signature_def": {
                    "serving_default": {
                        "inputs": {"float_input": spec([-1, 64], "DT_FLOAT")},
                        "outputs": {"probabilities": spec([-1, 10], "DT_FLOAT"), "label": spec([-1], "DT_INT64")},
                    }
                }
            }
        }
    }


class Scripted:
    """An httpx transport answering status/metadata like TF Serving and predicts from a script."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.predicts = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/metadata"):
            return httpx.Response(200, json=_metadata())
        if not path.endswith(":predict"):
            return httpx.Response(200, json=_status())
        answer = self.answers[min(self.predicts, len(self.answers) - 1)]
        self.predicts += 1
        if isinstance(answer, Exception):
            raise answer
        status, body = answer
        return httpx.Response(status, json=body)


def _scripted(answers: list[Any], demo_model: Path, retries: int = 2) -> tuple[TfServingBackend, Scripted]:
    script = Scripted(answers)
    backend = TfServingBackend(
        "http://tf-serving.test:8501",
        model=MODEL,
        retries=retries,
        retry_backoff_ms=1,
        timeout=0.5,
        transport=httpx.MockTransport(script),
    )
    return backend, script


def _infer(backend: TfServingBackend, demo_model: Path, batch: np.ndarray) -> np.ndarray:
    """Load, infer once and close on one event loop."""

    async def go() -> np.ndarray:
        await backend.load(_artifact(demo_model))
        try:
            return await backend.infer(batch)
        finally:
            await backend.close()

    result: np.ndarray = _run(go())
    return result


def _ok(n: int) -> tuple[int, dict[str, Any]]:
    return 200, {"predictions": [{"probabilities": [0.1] * 10, "label": 0} for _ in range(n)]}


def test_retries_are_bounded_and_unavailability_is_a_503(demo_model: Path) -> None:
    batch = np.zeros((3, 64), dtype=np.float32)
    unavailable = (503, {"error": "Server is overloaded"})

    backend, script = _scripted([unavailable, unavailable, _ok(3)], demo_model)
    assert _infer(backend, demo_model, batch).shape == (3, 10)
    assert script.predicts == 3  # two retries, then the answer

    backend, script = _scripted([unavailable], demo_model)
    with pytest.raises(BackendUnavailable) as info:
        _infer(backend, demo_model, batch)
    assert script.predicts == 3  # 1 + TFSERVING_RETRIES, no more
    assert info.value.status == 503 and "Server is overloaded" in str(info.value)
    assert "tf-serving.test" not in info.value.public_message  # internal addresses stay in the log

    backend, script = _scripted([httpx.ConnectError("connection refused")], demo_model, retries=1)
    with pytest.raises(BackendUnavailable, match="unreachable after 2 attempts"):
        _infer(backend, demo_model, batch)
    assert script.predicts == 2

    backend, script = _scripted([httpx.ReadTimeout("timed out")], demo_model)
    with pytest.raises(BackendUnavailable) as info:
        _infer(backend, demo_model, batch)
    assert script.predicts == 1 and "did not answer in time" in info.value.public_message  # a slow server: no retry

    backend, script = _scripted([(404, {"error": "Servable not found for request: Latest(digits)"})], demo_model)
    with pytest.raises(BackendUnavailable) as info:
        _infer(backend, demo_model, batch)
    assert script.predicts == 1 and "'digits' is not available" in info.value.public_message

    backend, script = _scripted([(500, {"error": "INTERNAL: kernel failed"})], demo_model)
    with pytest.raises(BackendError) as err:
        _infer(backend, demo_model, batch)
    assert not isinstance(err.value, BackendUnavailable | BackendRejected)
    assert script.predicts == 1 and err.value.status == 500 and "kernel failed" in str(err.value)

    backend, _ = _scripted([(200, {"predictions": [{"label": 0}]})], demo_model)
    with pytest.raises(BackendError, match="without 'probabilities'"):
        _infer(backend, demo_model, batch)


def test_unreachable_tf_serving_fails_loading_as_retryable(demo_model: Path) -> None:
    backend = TfServingBackend(f"http://127.0.0.1:{free_port()}", model=MODEL, retries=1, retry_backoff_ms=1)

    async def go() -> None:
        try:
            with pytest.raises(ModelLoadError) as info:
                await backend.load(_artifact(demo_model))
            assert not await backend.ready()
        finally:
            await backend.close()
        assert info.value.kind == "unreadable" and "unreachable after 2 attempts" in info.value.reason

    _run(go())


def test_the_columnar_request_body_names_the_cards_input(demo_model: Path) -> None:
    backend, _ = _scripted([_ok(1)], demo_model)
    _infer(backend, demo_model, np.zeros((1, 64), dtype=np.float32))
    row = np.arange(64, dtype=np.float32).reshape(1, 64)
    assert json.loads(backend.request_body(row)) == {"signature_name": "serving_default", "instances": row.tolist()}
    backend.request_format = "columnar"
    assert json.loads(backend.request_body(row)) == {
        "signature_name": "serving_default",
        "inputs": {"float_input": row.tolist()},
    }
    answer = {"outputs": {"probabilities": [[0.5] + [0.05] * 9], "label": [0]}}
    assert backend.parse_probabilities(answer, 1).shape == (1, 10)


# --- the service process on TF Serving -------------------------------------------------------------


@pytest.mark.slow
def test_service_on_tf_serving_answers_like_onnx_503_while_it_is_down_then_recovers(
    built: Path, services: Any, onnx_reference: Any, digits: tuple, tmp_path: Path
) -> None:
    x_test, _ = digits
    server = FakeTfServing(built / "tf", MODEL, tmp_path / "tfs.log", load_delay=1.5)
    server.start(wait=False)  # the service starts while TF Serving is still loading the model
    try:
        svc = services(
            wait=False,
            MODEL_URI=str(built / "model.onnx"),
            BACKEND="tfserving",
            TFSERVING_URL=server.url,
            TFSERVING_MODEL=MODEL,
            MODEL_RETRY_SECONDS="0.5",
        )
        svc.wait_ready(timeout=120)
        rows = x_test[:40]

        def predict(http: httpx.Client) -> httpx.Response:
            return http.post("/v1/predict", json={"instances": rows.tolist()})

        def assert_like_onnx(response: httpx.Response) -> None:
            assert response.status_code == 200, response.text
            body = response.json()
            probs = np.asarray([p["probabilities"] for p in body["predictions"]], dtype=np.float32)
            expected = onnx_reference(rows)
            assert float(np.max(np.abs(probs - expected))) <= MAX_ABS_DIFF
            assert [p["label"] for p in body["predictions"]] == expected.argmax(axis=1).tolist()

        with svc.client() as http:
            assert http.get("/readyz").json()["backend"] == "tfserving"
            assert_like_onnx(predict(http))
            v2 = http.post(
                "/v2/models/digits-mlp/infer",
                json={
                    "inputs": [{"name": "float_input", "shape": [2, 64], "datatype": "FP32", "data": rows[:2].tolist()}]
                },
            )
            assert v2.status_code == 200, v2.text

            server.kill()  # TF Serving dies mid-test
            down = predict(http)
            assert down.status_code == 503, down.text
            error = down.json()
            assert error["rule"] == "backend_unavailable" and "retry later" in error["error"]
            assert "127.0.0.1" not in error["error"]
            wait_until(lambda: http.get("/readyz").status_code == 503, what="/readyz 503 while TF Serving is down")
            # the gauge dashboards and alerts read follows the readiness checks, not only the load
            assert metric_value(http.get("/metrics").text, "model_ready") == 0

            started = time.monotonic()
            server.start()  # same port
            wait_until(lambda: http.get("/readyz").status_code == 200, timeout=30, what="/readyz 200 again")
            assert metric_value(http.get("/metrics").text, "model_ready") == 1
            assert_like_onnx(predict(http))
            assert time.monotonic() - started < 60
        logs = " ".join(json.dumps(line) for line in svc.log_lines())
        assert "is unreachable" in logs  # the details went to the log
    finally:
        server.stop()
