"""Settings from the environment, configuration errors, and the optional API key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings, settings_from_env
from tests.service.helpers import ROOT, service_env


def test_defaults_run_on_a_laptop() -> None:
    s = settings_from_env({})
    assert (s.host, s.port) == ("0.0.0.0", 8080)
    assert s.model_uri == "models/digits/model.onnx" and s.model_card_uri is None and s.model_sha256 is None
    assert (s.backend, s.ort_threads, s.batching) == ("onnx", 1, True)
    assert (s.store, s.store_path, s.spool_dir) == ("local", Path("var/predictions"), Path("var/spool"))
    assert s.s3_endpoint_url == "https://storage.yandexcloud.net" and s.aws_region == "ru-central1"
    assert s.max_instances == 64 and s.max_body_bytes == 1_048_576 and s.api_key is None


def test_environment_names_are_the_contract() -> None:
    s = settings_from_env(
        {
            "PORT": "9000",
            "HOST": "127.0.0.1",
            "MODEL_URI": "s3://bucket/models/digits/model.onnx",
            "MODEL_SHA256": "A" * 64,
            "BACKEND": "onnx",
            "ORT_THREADS": "2",
            "BATCHING": "off",
            "BATCH_MAX_SIZE": "32",
            "STORE": "s3",
            "STORE_S3_URI": "s3://preds/mvp/",
            "SPOOL_DIR": "/tmp/x",
            "S3_ENDPOINT_URL": "http://127.0.0.1:9",
            "AWS_REGION": "eu-1",
            "MAX_INSTANCES": "8",
            "MAX_BODY_BYTES": "2048",
            "API_KEY": "s3cr3t",
            "LOG_LEVEL": "WARNING",
        }
    )
    assert s.port == 9000 and s.batching is False and s.ort_threads == 2 and s.batch_max_size == 32
    assert s.model_sha256 == "a" * 64 and s.store == "s3" and s.aws_region == "eu-1"
    assert s.api_key_value == "s3cr3t" and "s3cr3t" not in repr(s)
    assert s.log_level == "warning" and s.max_instances == 8


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"PORT": "http"}, "port"),
        ({"BACKEND": "tensorrt"}, "backend"),
        ({"STORE": "s3"}, "STORE_S3_URI"),
        ({"MODEL_URI": "http://example/model.onnx"}, "model_uri"),
        ({"MODEL_URI": "s3://bucket-only"}, "model_uri"),
        ({"MODEL_SHA256": "abc"}, "model_sha256"),
        ({"BATCHING": "sometimes"}, "batching"),
        ({"MAX_BODY_BYTES": "10000000"}, "max_body_bytes"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        settings_from_env(env)
    assert field in str(exc.value)


def test_python_m_service_refuses_a_bad_configuration(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service"],
        env=service_env(tmp_path, PORT="not-a-port"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "invalid configuration: PORT" in result.stderr


def test_settings_are_immutable() -> None:
    with pytest.raises(ValidationError):
        Settings().port = 1  # type: ignore[misc]


def test_api_key_protects_only_the_predict_endpoints(services, demo_model: Path) -> None:  # type: ignore[no-untyped-def]
    svc = services(MODEL_URI=str(demo_model / "model.onnx"), API_KEY="k3y-123")
    body = {"instances": [[0.0] * 64]}
    v2 = {"inputs": [{"name": "float_input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
    with svc.client() as http:
        missing = http.post("/v1/predict", json=body)
        wrong = http.post("/v1/predict", json=body, headers={"X-API-Key": "nope"})
        right = http.post("/v1/predict", json=body, headers={"X-API-Key": "k3y-123"})
        v2_missing = http.post("/v2/models/digits-mlp/infer", json=v2)
        v2_right = http.post("/v2/models/digits-mlp/infer", json=v2, headers={"X-API-Key": "k3y-123"})
        open_routes = [http.get(p).status_code for p in ("/healthz", "/readyz", "/metrics", "/v2/models/digits-mlp")]
        schema = http.get("/openapi.json").json()
    for response in (missing, wrong, v2_missing):
        assert response.status_code == 401
        assert response.json()["field"] == "X-API-Key" and response.json()["rule"] == "api_key"
    assert right.status_code == 200 and v2_right.status_code == 200
    assert open_routes == [200, 200, 200, 200]
    assert schema["components"]["securitySchemes"]["ApiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schema["paths"]["/v1/predict"]["post"]["security"] == [{"ApiKey": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]
    assert "k3y-123" not in svc.log_tail(100_000)


def test_without_an_api_key_no_header_is_needed(service) -> None:  # type: ignore[no-untyped-def]
    with service.client() as http:
        assert http.post("/v1/predict", json={"instances": [[0.0] * 64]}).status_code == 200
        assert "securitySchemes" not in http.get("/openapi.json").json()["components"]
