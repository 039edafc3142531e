"""Every kind of bad input gets a 4xx JSON error naming the field and the rule; never a 5xx."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from tests.service.helpers import ServiceProcess, metric_value

ROW = [1.0] * 64
INFER = "/v2/models/digits-mlp/infer"


def tensor(**override: object) -> dict:
    base: dict = {"name": "float_input", "shape": [1, 64], "datatype": "FP32", "data": ROW}
    base.update(override)
    return {"inputs": [base]}


# (path, raw body, status, field, rule)
CASES = [
    # /v1/predict: the body
    ("/v1/predict", b"", 400, "body", "required"),
    ("/v1/predict", b"{not json", 400, "body", "json"),
    ("/v1/predict", b'{"instances": [[NaN]]}', 400, "body", "json"),
    ("/v1/predict", b'{"instances": [[Infinity]]}', 400, "body", "json"),
    ("/v1/predict", b'{"instances": [[1e400]]}', 400, "body", "json"),
    ("/v1/predict", b"[1, 2, 3]", 422, "body", "type"),
    ("/v1/predict", b'"instances"', 422, "body", "type"),
    ("/v1/predict", b"{}", 422, "instances", "required"),
    ("/v1/predict", b'{"instance": [[1]]}', 422, "instance", "unknown_field"),
    ("/v1/predict", b'{"instances": [], "extra": 1}', 422, "extra", "unknown_field"),
    # /v1/predict: instances
    ("/v1/predict", b'{"instances": []}', 422, "instances", "min_items"),
    ("/v1/predict", b'{"instances": {"a": 1}}', 422, "instances", "type"),
    ("/v1/predict", b'{"instances": null}', 422, "instances", "type"),
    ("/v1/predict", b'{"instances": [[1, 2, 3]]}', 422, "instances[0]", "length"),
    ("/v1/predict", b'{"instances": [1, 2, 3]}', 422, "instances[0]", "type"),
    ("/v1/predict", b'{"instances": [[[1]]]}', 422, "instances[0]", "length"),
    (
        "/v1/predict",
        ('{"instances": [' + ",".join(["[" + ",".join(["1"] * 64) + "]"] * 65) + "]}").encode(),
        422,
        "instances",
        "max_items",
    ),
    # /v1/predict: the numbers
    ("/v1/predict", ('{"instances": [[' + ",".join(["1"] * 63) + ', "1"]]}').encode(), 422, "instances[0][63]", "type"),
    ("/v1/predict", ('{"instances": [[true' + ",1" * 63 + "]]}").encode(), 422, "instances[0][0]", "type"),
    ("/v1/predict", ('{"instances": [[1' + ",1" * 62 + ", false]]}").encode(), 422, "instances[0][63]", "type"),
    ("/v1/predict", ('{"instances": [[null' + ",1" * 63 + "]]}").encode(), 422, "instances[0][0]", "type"),
    ("/v1/predict", ('{"instances": [[{}' + ",1" * 63 + "]]}").encode(), 422, "instances[0][0]", "type"),
    ("/v1/predict", ('{"instances": [[[1]' + ",1" * 63 + "]]}").encode(), 422, "instances[0][0]", "type"),
    ("/v1/predict", ('{"instances": [[1e39' + ",1" * 63 + "]]}").encode(), 422, "instances[0][0]", "float32_range"),
    ("/v1/predict", ('{"instances": [[-1e39' + ",1" * 63 + "]]}").encode(), 422, "instances[0][0]", "float32_range"),
    (
        "/v1/predict",
        ('{"instances": [[1' + ",1" * 63 + "], [2" + ",2" * 62 + "]]}").encode(),
        422,
        "instances[1]",
        "length",
    ),
    ("/v1/predict", ('{"instances": [[' + ",".join(["1"] * 64) + "], 7]}").encode(), 422, "instances[1]", "type"),
    (
        "/v1/predict",
        ('{"instances": [[18446744073709551616' + ",1" * 63 + "]]}").encode(),
        422,
        "instances[0][0]",
        "range",
    ),
    ("/v1/predict", ('{"instances": [[16.5' + ",1" * 63 + "]]}").encode(), 422, "instances[0][0]", "range"),
    ("/v1/predict", ('{"instances": [[1' + ",1" * 62 + ", -0.1]]}").encode(), 422, "instances[0][63]", "range"),
    ("/v1/predict", ('{"instances": [[16' + ",0" * 63 + "]]}").encode(), 200, None, None),
    # /v2/models/{name}/infer
    (INFER, b"{oops", 400, "body", "json"),
    (INFER, b"{}", 422, "inputs", "required"),
    (INFER, b'{"inputs": {}}', 422, "inputs", "type"),
    (INFER, b'{"inputs": []}', 422, "inputs", "length"),
    (INFER, b'{"inputs": [1]}', 422, "inputs[0]", "type"),
    (INFER, b'{"inputs": [{}]}', 422, "inputs[0].name", "required"),
    (INFER, b'{"inputs": [], "bogus": true}', 422, "bogus", "unknown_field"),
    (INFER, b'{"inputs": [], "id": 5}', 422, "id", "type"),
    (INFER, b'{"inputs": [], "parameters": []}', 422, "parameters", "type"),
]
V2_CASES = [
    (tensor(name="x"), 422, "inputs[0].name", "unknown_input"),
    (tensor(datatype="BYTES"), 422, "inputs[0].datatype", "enum"),
    (tensor(shape=[1, 63]), 422, "inputs[0].shape", "shape"),
    (tensor(shape=[64]), 422, "inputs[0].shape", "shape"),
    (tensor(shape=[1, "64"]), 422, "inputs[0].shape", "type"),
    (tensor(shape=[0, 64], data=[]), 422, "inputs[0].shape", "min_items"),
    (tensor(shape=[65, 64], data=ROW * 65), 422, "inputs[0].shape", "max_items"),
    (tensor(shape=[2, 64]), 422, "inputs[0].data", "length"),
    (tensor(data="abc"), 422, "inputs[0].data", "type"),
    (tensor(data=[*ROW[:-1], "x"]), 422, "inputs[0].data[63]", "type"),
    (tensor(data=[*ROW[:-1], None]), 422, "inputs[0].data[63]", "type"),
    (tensor(data=[*ROW[:-1], True]), 422, "inputs[0].data[63]", "type"),
    (tensor(data=[*ROW[:-1], 1e39]), 422, "inputs[0].data[63]", "float32_range"),
    (tensor(data=[ROW, ROW]), 422, "inputs[0].data", "shape"),
    (tensor(data=[*ROW[:-1], 17]), 422, "inputs[0].data[63]", "range"),
    (tensor(data=[[*ROW[:-1], "1"]]), 422, "inputs[0].data[0][63]", "type"),
    (tensor(data=[*ROW[:-1], "1"]), 422, "inputs[0].data[63]", "type"),
    (tensor(data=[ROW[:3]]), 422, "inputs[0].data[0]", "length"),
    (tensor(extra=1), 422, "inputs[0].extra", "unknown_field"),
    ({**tensor(), "outputs": [{"name": "logits"}]}, 422, "outputs[0].name", "unknown_output"),
    ({**tensor(), "outputs": {"name": "label"}}, 422, "outputs", "type"),
    ({**tensor(), "inputs": [tensor()["inputs"][0]] * 2}, 422, "inputs", "length"),
]


def _check(response, status: int, field: str | None, rule: str | None) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    if field is None:
        return
    body = response.json()
    assert body["field"] == field, body
    assert body["rule"] == rule, body
    assert body["error"].startswith(f"{field}: ")
    assert body["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize(("path", "body", "status", "field", "rule"), CASES)
def test_bad_raw_bodies(
    service: ServiceProcess, path: str, body: bytes, status: int, field: str | None, rule: str | None
) -> None:
    with service.client() as http:
        response = http.post(path, content=body, headers={"content-type": "application/json"})
    _check(response, status, field, rule)


@pytest.mark.parametrize(("request_body", "status", "field", "rule"), V2_CASES)
def test_bad_oip_tensors(service: ServiceProcess, request_body: dict, status: int, field: str, rule: str) -> None:
    with service.client() as http:
        response = http.post(INFER, json=request_body)
    _check(response, status, field, rule)


def test_body_over_the_limit_by_content_length(service: ServiceProcess) -> None:
    body = b'{"instances": [' + b" " * (1_048_576 + 10) + b"]}"
    with service.client() as http:
        response = http.post("/v1/predict", content=body)
    _check(response, 413, "body", "max_bytes")


def test_body_over_the_limit_when_streamed_chunked(service: ServiceProcess) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"instances": ['
        for _ in range(300):
            yield b" " * 4096
        yield b"]}"

    with service.client() as http:
        response = http.post("/v1/predict", content=chunks())
    _check(response, 413, "body", "max_bytes")


def test_a_lying_content_length_is_a_400(service: ServiceProcess) -> None:
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nhost: x\r\ncontent-length: abc\r\n\r\n{}")
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 4"), head


@pytest.mark.parametrize(
    "head",
    [
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"POST /v1/predict HTTP/1.1\r\nBad Header Name: 1\r\n\r\n",
    ],
    ids=["content-length-not-a-number", "length-and-chunked", "not-http", "bad-header-name"],
)
def test_requests_the_http_parser_rejects_get_a_json_400_with_a_request_id(
    service: ServiceProcess, head: bytes
) -> None:
    """Rejected by uvicorn's parser before any application code: still JSON, with X-Request-ID."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(head)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head_part, _, body = raw.partition(b"\r\n\r\n")
    lines = head_part.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 400"), raw
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers["content-type"] == "application/json"
    error = json.loads(body)
    assert (error["field"], error["rule"]) == ("request", "http")
    assert "Content-Length" in error["error"]
    assert error["request_id"] == headers["x-request-id"]
    metrics = httpx.get(f"{service.base}/metrics").text
    assert (metric_value(metrics, "http_requests_total", route="unparsed", method="", status="400") or 0) >= 1


def test_the_service_is_still_healthy_after_the_bad_inputs(service: ServiceProcess) -> None:
    with service.client() as http:
        assert http.get("/readyz").status_code == 200
        metrics = http.get("/metrics").text
    assert 'status="500"' not in metrics
