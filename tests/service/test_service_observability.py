"""Prometheus metrics and ECS JSON logs of a real service process."""

from __future__ import annotations

import json
from pathlib import Path

from tests.service.helpers import metric_value, wait_until


def test_metrics_count_requests_inference_batches_model_and_store(services, demo_model: Path, digits: tuple) -> None:  # type: ignore[no-untyped-def]
    svc = services(MODEL_URI=str(demo_model / "model.onnx"))
    card = json.loads((demo_model / "card.json").read_text())
    x_test = digits[0]
    with svc.client() as http:
        for n in (1, 2, 3):
            assert http.post("/v1/predict", json={"instances": x_test[:n].tolist()}).status_code == 200
        assert http.post("/v1/predict", json={"instances": []}).status_code == 422
        assert http.post("/v1/predict", content=b"{").status_code == 400
        assert http.get("/v2/models/nope").status_code == 404
        assert http.get("/no/such/route").status_code == 404
        text = http.get("/metrics").text

    def sample(metric: str, /, **labels: str) -> float | None:
        return metric_value(text, metric, **labels)

    assert sample("http_requests_total", route="/v1/predict", method="POST", status="200") == 3
    assert sample("http_requests_total", route="/v1/predict", method="POST", status="422") == 1
    assert sample("http_requests_total", route="/v1/predict", method="POST", status="400") == 1
    assert sample("http_requests_total", route="/v2/models/{name}", method="GET", status="404") == 1
    assert sample("http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert sample("http_request_duration_seconds_count", route="/v1/predict", method="POST") == 5
    assert sample("http_request_duration_seconds_bucket", route="/v1/predict", method="POST", le="+Inf") == 5
    assert sample("inference_duration_seconds_count", backend="onnx") == 3
    assert sample("inference_batch_size_sum") == 6
    assert sample("inference_batch_size_count") == 3
    assert sample("predictions_total", model=card["name"], version=card["version"]) == 6
    assert sample("model_info", name=card["name"], version=card["version"], sha256=card["sha256"], backend="onnx") == 1
    assert sample("model_ready") == 1
    assert sample("prediction_store_queue_depth") is not None
    assert sample("prediction_store_spool_records") == 0
    assert "# TYPE prediction_store_errors_total counter" in text
    # the store flushes by age: the records reach it without a shutdown
    wait_until(
        lambda: (
            metric_value(
                __import__("httpx").get(f"{svc.base}/metrics").text,
                "prediction_store_written_records_total",
                store="local",
            )
            == 6
        ),
        what="records written",
    )


def test_model_load_failures_are_counted_by_kind(services, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    svc = services(wait=False, MODEL_URI=str(tmp_path / "absent" / "model.onnx"), MODEL_RETRY_SECONDS="0")
    svc.wait_ready(expect=503)
    with svc.client() as http:
        text = http.get("/metrics").text
    assert metric_value(text, "model_load_failures_total", kind="missing") == 1
    assert metric_value(text, "model_ready") == 0


def test_logs_are_ecs_json_lines_one_per_request(services, demo_model: Path, digits: tuple) -> None:  # type: ignore[no-untyped-def]
    svc = services(MODEL_URI=str(demo_model / "model.onnx"))
    with svc.client() as http:
        http.post("/v1/predict", json={"instances": [digits[0][0].tolist()]}, headers={"X-Request-ID": "trace-me-1"})
        http.post("/v1/predict", json={"instances": [[1]]}, headers={"X-Request-ID": "trace-me-2"})
        http.get("/healthz", headers={"X-Request-ID": "trace-me-3"})
    assert svc.stop() == 0
    raw = svc.log_path.read_bytes().splitlines()
    lines = [json.loads(line) for line in raw]  # every line is JSON
    for line in lines:
        assert line["ecs.version"] and line["@timestamp"].endswith("Z") and line["log.level"] and "message" in line
        assert line["service"]["name"] == "yc-aistack-inference"
    access = [line for line in lines if line.get("event", {}).get("dataset") == "service.access"]
    by_id = {line["http"]["request"]["id"]: line for line in access}
    assert len([line for line in access if line["http"]["request"]["id"].startswith("trace-me-")]) == 3
    ok, bad, health = by_id["trace-me-1"], by_id["trace-me-2"], by_id["trace-me-3"]
    assert ok["http"]["response"]["status_code"] == 200 and ok["url"]["path"] == "/v1/predict"
    assert ok["http"]["request"]["method"] == "POST" and ok["event"]["duration"] > 0
    assert bad["http"]["response"]["status_code"] == 422 and bad["log.level"] == "info"
    assert health["labels"]["route"] == "/healthz"
    messages = [line["message"] for line in lines]
    assert any(m.startswith("model digits-mlp version ") and "verified against the card" in m for m in messages)
    assert "service stopped" in messages
