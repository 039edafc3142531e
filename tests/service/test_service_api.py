"""Every endpoint of a real ``python -m service`` process, over HTTP."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.service.helpers import ServiceProcess


def test_healthz_and_readyz(service: ServiceProcess, card: dict) -> None:
    with service.client() as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {
            "status": "ready",
            "backend": "onnx",
            "model": {"name": card["name"], "version": card["version"], "sha256": card["sha256"]},
        }


def test_predict_matches_onnx_runtime_on_held_out_digits(
    service: ServiceProcess, digits: tuple, reference: ort.InferenceSession, card: dict
) -> None:
    x_test, y_test = digits
    rows = x_test[:64]
    with service.client() as http:
        response = http.post("/v1/predict", json={"instances": rows.tolist()})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": card["name"], "version": card["version"]}
    assert len(body["predictions"]) == 64
    (expected,) = reference.run(["probabilities"], {"float_input": rows})
    got = np.array([p["probabilities"] for p in body["predictions"]], dtype=np.float32)
    assert np.allclose(got, expected, rtol=1e-5, atol=1e-7)
    labels = [p["label"] for p in body["predictions"]]
    assert labels == expected.argmax(axis=1).tolist()
    assert np.mean(np.array(labels) == y_test[:64]) > 0.9


def test_integers_are_accepted_as_numbers(service: ServiceProcess, digits: tuple) -> None:
    x_test, _ = digits
    as_ints = [[int(v) for v in x_test[0]]]  # the digits pixels are whole numbers 0..16
    with service.client() as http:
        a = http.post("/v1/predict", json={"instances": as_ints}).json()
        b = http.post("/v1/predict", json={"instances": [x_test[0].tolist()]}).json()
    assert a["predictions"] == b["predictions"]


def test_request_id_is_echoed_or_generated(service: ServiceProcess, digits: tuple) -> None:
    with service.client() as http:
        given = http.post(
            "/v1/predict", json={"instances": [digits[0][0].tolist()]}, headers={"X-Request-ID": "req-123.abc"}
        )
        generated = http.get("/healthz")
        bad = http.get("/healthz", headers={"X-Request-ID": "has spaces; and {braces}"})
    assert given.headers["x-request-id"] == "req-123.abc"
    assert len(generated.headers["x-request-id"]) == 24
    assert bad.headers["x-request-id"] != "has spaces; and {braces}"


def test_model_card_endpoint(service: ServiceProcess, card: dict) -> None:
    with service.client() as http:
        served = http.get("/v1/model").json()
    assert served["sha256"] == card["sha256"]
    assert served["version"] == card["version"]
    assert served["inputs"] == card["inputs"]


def test_metrics_endpoint_is_prometheus_text(service: ServiceProcess) -> None:
    with service.client() as http:
        response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE http_requests_total counter" in response.text


# -- Open Inference Protocol (KServe v2) --------------------------------------------------------


def test_v2_server_endpoints(service: ServiceProcess) -> None:
    with service.client() as http:
        live = http.get("/v2/health/live")
        ready = http.get("/v2/health/ready")
        meta = http.get("/v2").json()
    # the Open Inference Protocol's REST bodies (KServe's client reads them; Triton's ignores them)
    assert (live.status_code, live.json()) == (200, {"live": True})
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    assert live.headers["content-type"] == "application/json"
    assert meta["name"] and meta["version"] and meta["extensions"] == ["binary_tensor_data"]


def test_v2_model_metadata_and_readiness(service: ServiceProcess, card: dict) -> None:
    name, version = card["name"], card["version"]
    with service.client() as http:
        meta = http.get(f"/v2/models/{name}").json()
        meta_version = http.get(f"/v2/models/{name}/versions/{version}").json()
        ready = http.get(f"/v2/models/{name}/ready")
        ready_version = http.get(f"/v2/models/{name}/versions/{version}/ready")
    assert meta == meta_version
    assert meta["name"] == name and meta["versions"] == [version]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "float_input", "datatype": "FP32", "shape": [-1, 64]}]
    assert {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]} in meta["outputs"]
    assert {"name": "label", "datatype": "INT64", "shape": [-1]} in meta["outputs"]
    assert (ready.status_code, ready.json()) == (200, {"name": name, "ready": True})
    assert (ready_version.status_code, ready_version.json()) == (200, {"name": name, "ready": True})


@pytest.mark.parametrize("nested", [False, True], ids=["flat-data", "nested-data"])
def test_v2_infer_shapes(
    service: ServiceProcess, digits: tuple, reference: ort.InferenceSession, card: dict, nested: bool
) -> None:
    rows = digits[0][:3]
    data = rows.tolist() if nested else rows.reshape(-1).tolist()
    request = {
        "id": "oip-1",
        "inputs": [{"name": "float_input", "shape": [3, 64], "datatype": "FP32", "data": data}],
    }
    with service.client() as http:
        response = http.post(f"/v2/models/{card['name']}/infer", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == card["name"]
    assert body["model_version"] == card["version"]
    assert body["id"] == "oip-1"
    outputs = {o["name"]: o for o in body["outputs"]}
    (expected,) = reference.run(["probabilities"], {"float_input": rows})
    assert outputs["probabilities"]["datatype"] == "FP32"
    assert outputs["probabilities"]["shape"] == [3, 10]
    assert np.allclose(np.array(outputs["probabilities"]["data"]).reshape(3, 10), expected, rtol=1e-5, atol=1e-7)
    assert outputs["label"] == {"name": "label", "datatype": "INT64", "shape": [3], "data": expected.argmax(1).tolist()}


def test_v2_infer_on_a_version_with_selected_outputs(service: ServiceProcess, digits: tuple, card: dict) -> None:
    request = {
        "inputs": [{"name": "float_input", "shape": [1, 64], "datatype": "FP64", "data": digits[0][0].tolist()}],
        "outputs": [{"name": "label"}],
    }
    with service.client() as http:
        response = http.post(f"/v2/models/{card['name']}/versions/{card['version']}/infer", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [o["name"] for o in body["outputs"]] == ["label"]
    assert "id" not in body


def test_unknown_model_name_and_version_are_404(service: ServiceProcess, card: dict, digits: tuple) -> None:
    request = {"inputs": [{"name": "float_input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
    with service.client() as http:
        cases = {
            "model_name": [
                http.get("/v2/models/nope"),
                http.get("/v2/models/nope/ready"),
                http.post("/v2/models/nope/infer", json=request),
            ],
            "model_version": [
                http.get(f"/v2/models/{card['name']}/versions/000000000000"),
                http.post(f"/v2/models/{card['name']}/versions/000000000000/infer", json=request),
            ],
        }
    for field, responses in cases.items():
        for response in responses:
            assert response.status_code == 404, response.text
            assert response.json()["field"] == field
            assert response.json()["rule"] in ("unknown_model", "unknown_version")


def test_unknown_route_and_wrong_method_are_json_errors(service: ServiceProcess) -> None:
    with service.client() as http:
        missing = http.get("/v3/nothing")
        wrong = http.get("/v1/predict")
    assert missing.status_code == 404
    assert missing.json()["rule"] == "not_found"
    assert wrong.status_code == 405
    assert wrong.json()["rule"] == "method_not_allowed"


def test_openapi_publishes_the_request_schemas_for_the_loaded_model(service: ServiceProcess) -> None:
    with service.client() as http:
        schema = http.get("/openapi.json").json()
        docs = http.get("/docs")
    assert docs.status_code == 200
    paths = schema["paths"]
    for path in (
        "/v1/predict",
        "/healthz",
        "/readyz",
        "/metrics",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/infer",
    ):
        assert path in paths, path
    predict = paths["/v1/predict"]["post"]
    assert predict["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PredictRequest"
    }
    assert set(predict["responses"]) >= {"200", "400", "413", "422", "503"}
    request = schema["components"]["schemas"]["PredictRequest"]
    instances = request["properties"]["instances"]
    assert (instances["minItems"], instances["maxItems"]) == (1, 64)
    assert (instances["items"]["minItems"], instances["items"]["maxItems"]) == (64, 64)
    assert request["additionalProperties"] is False
    assert "ErrorResponse" in schema["components"]["schemas"]
    infer = schema["components"]["schemas"]["InferInputTensor"]
    assert infer["properties"]["name"]["const"] == "float_input"


def test_predictions_are_logged_with_digests(service: ServiceProcess, digits: tuple) -> None:
    row = digits[0][7]
    with service.client() as http:
        response = http.post("/v1/predict", json={"instances": [row.tolist()]}, headers={"X-Request-ID": "logged-1"})
    assert response.status_code == 200
    store = Path(service.env["STORE_PATH"])

    def find() -> dict | None:
        for path in store.glob("predictions-*.jsonl"):
            for line in path.read_bytes().splitlines():
                record = json.loads(line)
                if record["request_id"] == "logged-1":
                    return record
        return None

    from tests.service.helpers import wait_until

    record = wait_until(find, what="the prediction record")
    assert record["input_sha256"] == hashlib.sha256(row.astype("<f4").tobytes()).hexdigest()
    assert record["label"] == response.json()["predictions"][0]["label"]
    assert record["probabilities"] == pytest.approx(response.json()["predictions"][0]["probabilities"])
    assert record["endpoint"] == "v1" and record["index"] == 0 and record["latency_ms"] > 0
    assert record["model_version"] == response.json()["model"]["version"]
    assert record["time"].endswith("Z")


def test_a_real_triton_http_client_works_unchanged(service: ServiceProcess, digits: tuple, card: dict) -> None:
    import tritonclient.http as triton

    x_test, y_test = digits
    client = triton.InferenceServerClient(url=f"127.0.0.1:{service.port}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(card["name"])
        meta = client.get_model_metadata(card["name"])
        assert meta["inputs"][0]["name"] == "float_input"
        rows = x_test[:5]
        tensor = triton.InferInput("float_input", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows, binary_data=False)
        outputs = [
            triton.InferRequestedOutput("probabilities", binary_data=False),
            triton.InferRequestedOutput("label", binary_data=False),
        ]
        result = client.infer(card["name"], [tensor], outputs=outputs, request_id="triton-1")
        probabilities = result.as_numpy("probabilities")
        assert probabilities.shape == (5, 10)
        assert result.as_numpy("label").tolist() == probabilities.argmax(1).tolist()
        assert (result.as_numpy("label") == y_test[:5]).sum() >= 4
        assert result.get_response()["id"] == "triton-1"
    finally:
        client.close()
