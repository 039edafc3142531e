"""The ecosystem's KServe v2 clients against a real ``python -m service``, with their defaults.

- NVIDIA's ``tritonclient.http`` (sync, geventhttpclient) and ``tritonclient.http.aio`` (aiohttp):
  by default they send the input as binary tensor data (``Inference-Header-Content-Length``) and
  ask for binary outputs; with request and response compression (gzip, deflate).
- KServe's own ``kserve.InferenceRESTClient`` (protocol v2, httpx) in JSON and binary modes: it
  reads the health endpoints' JSON bodies and sends ``model_name`` in the body.
- ``curl`` with a JSON body, as a person types it.
- Hand-made bodies for the binary framing and content-coding errors: each a 4xx naming the problem.

Every answer is compared with ONNX Runtime's on the same rows.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import subprocess
import zlib
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest

from tests.service.helpers import ServiceProcess

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rows(digits: tuple) -> np.ndarray:
    return np.ascontiguousarray(digits[0][:7], dtype=np.float32)


def _expected(reference: ort.InferenceSession, rows: np.ndarray) -> np.ndarray:
    (probabilities,) = reference.run(["probabilities"], {"float_input": rows})
    return np.asarray(probabilities)


def _infer_path(card: dict) -> str:
    return f"/v2/models/{card['name']}/infer"


# -- tritonclient ----------------------------------------------------------------------------


def test_tritonclient_http_defaults_send_and_receive_binary_tensors(
    service: ServiceProcess, rows: np.ndarray, reference: ort.InferenceSession, card: dict
) -> None:
    import tritonclient.http as triton

    want = _expected(reference, rows)
    client = triton.InferenceServerClient(url=f"127.0.0.1:{service.port}")
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(card["name"])
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        tensor = triton.InferInput("float_input", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)  # the default: binary_data=True
        assert tensor._get_tensor()["parameters"] == {"binary_data_size": rows.nbytes}

        # no outputs named: the client asks for every output in binary (binary_data_output)
        result = client.infer(card["name"], [tensor], request_id="triton-binary")
        response = result.get_response()
        assert response["id"] == "triton-binary"
        sizes = {o["name"]: o["parameters"]["binary_data_size"] for o in response["outputs"]}
        assert sizes == {"label": 8 * len(rows), "probabilities": 4 * want.size}
        assert all("data" not in o for o in response["outputs"])
        np.testing.assert_allclose(result.as_numpy("probabilities"), want, rtol=1e-6, atol=1e-7)
        assert result.as_numpy("label").tolist() == want.argmax(1).tolist()

        # named outputs with the defaults (binary), and one asked for in JSON
        outputs = [
            triton.InferRequestedOutput("probabilities"),
            triton.InferRequestedOutput("label", binary_data=False),
        ]
        mixed = client.infer(card["name"], [tensor], outputs=outputs)
        by_name = {o["name"]: o for o in mixed.get_response()["outputs"]}
        assert by_name["probabilities"]["parameters"] == {"binary_data_size": 4 * want.size}
        assert by_name["label"]["data"] == want.argmax(1).tolist()
        np.testing.assert_allclose(mixed.as_numpy("probabilities"), want, rtol=1e-6, atol=1e-7)
    finally:
        client.close()


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_http_compressed_requests_and_responses(
    service: ServiceProcess, rows: np.ndarray, reference: ort.InferenceSession, card: dict, algorithm: str
) -> None:
    import tritonclient.http as triton

    want = _expected(reference, rows)
    client = triton.InferenceServerClient(url=f"127.0.0.1:{service.port}")
    try:
        tensor = triton.InferInput("float_input", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        result = client.infer(
            card["name"],
            [tensor],
            request_compression_algorithm=algorithm,
            response_compression_algorithm=algorithm,
        )
        np.testing.assert_allclose(result.as_numpy("probabilities"), want, rtol=1e-6, atol=1e-7)
        assert result.as_numpy("label").tolist() == want.argmax(1).tolist()
    finally:
        client.close()
    # what went over the wire: the same request by hand shows the response's coding and framing
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "float_input",
                    "shape": list(rows.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": rows.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    body = header + rows.tobytes()
    packed = gzip.compress(body) if algorithm == "gzip" else zlib.compress(body)
    raw = httpx.post(
        f"{service.base}{_infer_path(card)}",
        content=packed,
        headers={
            "Content-Encoding": algorithm,
            "Accept-Encoding": algorithm,
            "Inference-Header-Content-Length": str(len(header)),
        },
    )
    assert raw.status_code == 200, raw.text
    assert raw.headers["content-encoding"] == algorithm
    assert raw.headers["content-type"] == "application/octet-stream"
    plain = raw.content  # httpx removed the content coding
    json_length = int(raw.headers["inference-header-content-length"])
    meta = orjson.loads(plain[:json_length])
    label_size = meta["outputs"][0]["parameters"]["binary_data_size"]
    labels = np.frombuffer(plain[json_length : json_length + label_size], dtype="<i8")
    probabilities = np.frombuffer(plain[json_length + label_size :], dtype="<f4").reshape(want.shape)
    assert labels.tolist() == want.argmax(1).tolist()
    np.testing.assert_allclose(probabilities, want, rtol=1e-6, atol=1e-7)


def test_tritonclient_http_aio_defaults(
    service: ServiceProcess, rows: np.ndarray, reference: ort.InferenceSession, card: dict
) -> None:
    import tritonclient.http.aio as triton_aio

    want = _expected(reference, rows)

    async def go() -> list[np.ndarray]:
        client = triton_aio.InferenceServerClient(url=f"127.0.0.1:{service.port}")
        try:
            assert await client.is_server_live() and await client.is_server_ready()
            assert await client.is_model_ready(card["name"])
            tensor = triton_aio.InferInput("float_input", list(rows.shape), "FP32")
            tensor.set_data_from_numpy(rows)
            plain = await client.infer(card["name"], [tensor])
            # tritonclient 2.41's aio module cannot compress requests (it never imports gzip/zlib);
            # compressed responses it can read
            packed = await client.infer(
                card["name"],
                [tensor],
                outputs=[triton_aio.InferRequestedOutput("probabilities")],
                response_compression_algorithm="gzip",
            )
            return [plain.as_numpy("probabilities"), plain.as_numpy("label"), packed.as_numpy("probabilities")]
        finally:
            await client.close()

    probabilities, labels, compressed = asyncio.run(go())
    np.testing.assert_allclose(probabilities, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(compressed, want, rtol=1e-6, atol=1e-7)
    assert labels.tolist() == want.argmax(1).tolist()


# -- KServe's client ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kserve_python() -> Path:
    """``.venv-kserve`` (KServe's client pins protobuf and FastAPI versions the main .venv cannot
    share), synced to its lock; no skip: without it the test fails with the reason."""
    done = subprocess.run(["bash", str(ROOT / "scripts" / "venv.sh"), "kserve"], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, f"scripts/venv.sh kserve failed:\n{(done.stdout + done.stderr)[-3000:]}"
    return ROOT / ".venv-kserve" / "bin" / "python"


@pytest.mark.parametrize("mode", ["json", "binary"])
def test_kserve_inference_rest_client(
    service: ServiceProcess,
    rows: np.ndarray,
    reference: ort.InferenceSession,
    card: dict,
    mode: str,
    kserve_python: Path,
) -> None:
    want = _expected(reference, rows)
    done = subprocess.run(
        [str(kserve_python), str(ROOT / "tests" / "service" / "kserve_client.py"), service.base, card["name"],
         json.dumps(rows.tolist()), mode],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout)
    assert (answer["live"], answer["ready"], answer["model_ready"]) == (True, True, True)
    assert answer["model_name"] == card["name"]
    probabilities = np.asarray(answer["outputs"]["probabilities"], dtype=np.float32)
    np.testing.assert_allclose(probabilities.reshape(want.shape), want, rtol=1e-6, atol=1e-7)
    assert answer["outputs"]["label"] == want.argmax(1).tolist()


def test_model_name_in_the_body_is_accepted_and_must_match_the_path(service: ServiceProcess, card: dict) -> None:
    tensor = {"name": "float_input", "shape": [1, 64], "datatype": "FP32", "data": [1.0] * 64}
    with service.client() as http:
        same = http.post(_infer_path(card), json={"model_name": card["name"], "inputs": [tensor]})
        other = http.post(_infer_path(card), json={"model_name": "another-model", "inputs": [tensor]})
    assert same.status_code == 200, same.text
    assert other.status_code == 422
    assert other.json()["field"] == "model_name"
    assert "another-model" in other.json()["error"] and card["name"] in other.json()["error"]


# -- curl ----------------------------------------------------------------------------------------


def test_curl_with_a_json_body(
    service: ServiceProcess, rows: np.ndarray, reference: ort.InferenceSession, card: dict
) -> None:
    curl = shutil.which("curl")
    assert curl, "curl is needed for this test (Debian package curl)"
    want = _expected(reference, rows[:2])
    request = {"inputs": [{"name": "float_input", "shape": [2, 64], "datatype": "FP32", "data": rows[:2].tolist()}]}
    out = subprocess.run(
        [
            curl,
            "-sS",
            "--fail-with-body",
            f"{service.base}{_infer_path(card)}",
            "-H",
            "content-type: application/json",
            "-d",
            json.dumps(request),
        ],
        capture_output=True,
        check=True,
        timeout=30,
    )
    body = json.loads(out.stdout)
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["label"]["data"] == want.argmax(1).tolist()
    np.testing.assert_allclose(np.array(outputs["probabilities"]["data"]).reshape(2, 10), want, rtol=1e-6, atol=1e-7)
    predict = subprocess.run(
        [
            curl,
            "-sS",
            "--compressed",
            f"{service.base}/v1/predict",
            "-H",
            "content-type: application/json",
            "-d",
            json.dumps({"instances": rows[:2].tolist()}),
        ],
        capture_output=True,
        check=True,
        timeout=30,
    )
    assert [p["label"] for p in json.loads(predict.stdout)["predictions"]] == want.argmax(1).tolist()


# -- binary framing and content codings: 4xx naming the problem -------------------------------------


def _binary_request(rows: np.ndarray, size: int | None = None, datatype: str = "FP32", **extra: object) -> bytes:
    tensor: dict = {"name": "float_input", "shape": list(rows.shape), "datatype": datatype}
    tensor["parameters"] = {"binary_data_size": rows.nbytes if size is None else size}
    tensor.update(extra)
    return orjson.dumps({"inputs": [tensor]})


ROW = np.arange(64, dtype=np.float32).reshape(1, 64) / 4


def _post(service: ServiceProcess, card: dict, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"{service.base}{_infer_path(card)}", content=body, headers=headers, timeout=30)


@pytest.mark.parametrize(
    ("make", "status", "field", "rule", "says"),
    [
        # the header's value
        (
            lambda h: (h + ROW.tobytes(), {"Inference-Header-Content-Length": "x12"}),
            400,
            "Inference-Header-Content-Length",
            "binary_framing",
            "length in bytes",
        ),
        (
            lambda h: (h + ROW.tobytes(), {"Inference-Header-Content-Length": "0"}),
            400,
            "Inference-Header-Content-Length",
            "binary_framing",
            "is 0",
        ),
        (
            lambda h: (h + ROW.tobytes(), {"Inference-Header-Content-Length": "100000"}),
            400,
            "Inference-Header-Content-Length",
            "binary_framing",
            "whole body is",
        ),
        # the header does not point at the end of the JSON
        (
            lambda h: (h + ROW.tobytes(), {"Inference-Header-Content-Length": str(len(h) - 3)}),
            400,
            "body",
            "json",
            "invalid JSON",
        ),
        # binary data without the header
        (lambda h: (h + ROW.tobytes(), {}), 400, "body", "json", "Inference-Header-Content-Length"),
        # sizes that do not add up
        (
            lambda h: (h + ROW.tobytes()[:100], {"Inference-Header-Content-Length": str(len(h))}),
            400,
            "inputs[0].parameters.binary_data_size",
            "binary_framing",
            "only 100 bytes",
        ),
        (
            lambda h: (h + ROW.tobytes() + b"\0" * 8, {"Inference-Header-Content-Length": str(len(h))}),
            400,
            "Inference-Header-Content-Length",
            "binary_framing",
            "8 bytes of binary data are left over",
        ),
    ],
    ids=["not-a-number", "zero", "past-the-body", "inside-the-json", "no-header", "short-data", "left-over"],
)
def test_malformed_binary_framing_is_a_400_naming_the_problem(
    service: ServiceProcess,
    card: dict,
    make,
    status: int,
    field: str,
    rule: str,
    says: str,  # type: ignore[no-untyped-def]
) -> None:
    body, headers = make(_binary_request(ROW))
    response = _post(service, card, body, **headers)
    assert response.status_code == status, response.text
    error = response.json()
    assert (error["field"], error["rule"]) == (field, rule), error
    assert says in error["error"], error
    assert error["request_id"] == response.headers["x-request-id"]


def test_binary_tensor_rules(service: ServiceProcess, card: dict) -> None:
    def post(header: bytes, data: bytes) -> dict:
        response = _post(service, card, header + data, **{"Inference-Header-Content-Length": str(len(header))})
        assert response.status_code in (400, 422), response.text
        return {"status": response.status_code, **response.json()}

    # the size disagrees with the shape and datatype
    wrong = post(_binary_request(ROW, size=128), ROW.tobytes()[:128])
    assert (wrong["status"], wrong["field"], wrong["rule"]) == (422, "inputs[0].parameters.binary_data_size", "length")
    assert "needs 256 bytes" in wrong["error"]
    # both data and binary data
    both = post(_binary_request(ROW, data=[1.0] * 64), ROW.tobytes())
    assert (both["status"], both["field"], both["rule"]) == (400, "inputs[0].data", "binary_framing")
    # a negative or non-integer size
    for size in (-1, 1.5, "256"):
        bad = post(_binary_request(ROW, size=size), ROW.tobytes())  # type: ignore[arg-type]
        assert (bad["status"], bad["rule"]) == (400, "binary_framing"), bad
    # NaN and out-of-range values in binary data are named by element, like JSON values
    nan = ROW.copy()
    nan[0, 5] = np.nan
    named = post(_binary_request(nan), nan.tobytes())
    assert (named["status"], named["field"], named["rule"]) == (422, "inputs[0].binary_data[5]", "finite")
    high = ROW.copy()
    high[0, 63] = 99.0  # the demo model's range is [0, 16]
    ranged = post(_binary_request(high), high.tobytes())
    assert (ranged["field"], ranged["rule"]) == ("inputs[0].binary_data[63]", "range")
    # other datatypes are converted like their JSON form
    as_f64 = ROW.astype("<f8")
    header = _binary_request(as_f64, datatype="FP64")
    ok = _post(service, card, header + as_f64.tobytes(), **{"Inference-Header-Content-Length": str(len(header))})
    json_answer = _post(
        service,
        card,
        orjson.dumps(
            {"inputs": [{"name": "float_input", "shape": [1, 64], "datatype": "FP32", "data": ROW.ravel().tolist()}]}
        ),
    )
    assert ok.status_code == 200 and ok.json()["outputs"] == json_answer.json()["outputs"]
    # output parameters
    base = {"inputs": [{"name": "float_input", "shape": [1, 64], "datatype": "FP32", "data": ROW.ravel().tolist()}]}
    flag = _post(
        service, card, orjson.dumps({**base, "outputs": [{"name": "label", "parameters": {"binary_data": 1}}]})
    )
    assert (flag.status_code, flag.json()["field"]) == (422, "outputs[0].parameters.binary_data")
    top = _post(service, card, orjson.dumps({**base, "parameters": {"binary_data_output": "yes"}}))
    assert (top.status_code, top.json()["field"]) == (422, "parameters.binary_data_output")
    classification = _post(
        service, card, orjson.dumps({**base, "outputs": [{"name": "label", "parameters": {"classification": 3}}]})
    )
    assert (classification.status_code, classification.json()["rule"]) == (422, "unsupported")


def test_content_coding_errors(service: ServiceProcess, card: dict) -> None:
    body = orjson.dumps(
        {"inputs": [{"name": "float_input", "shape": [1, 64], "datatype": "FP32", "data": ROW.ravel().tolist()}]}
    )
    unsupported = _post(service, card, body, **{"Content-Encoding": "br"})
    assert unsupported.status_code == 415
    assert (unsupported.json()["field"], unsupported.json()["rule"]) == ("Content-Encoding", "content_encoding")
    assert "'br'" in unsupported.json()["error"]
    # a whole gzip header, then bytes that are not a deflate stream
    corrupt = _post(service, card, gzip.compress(body)[:10] + b"\xff" * 32, **{"Content-Encoding": "gzip"})
    assert (corrupt.status_code, corrupt.json()["rule"]) == (400, "content_encoding")
    assert "not valid gzip data" in corrupt.json()["error"]
    truncated = _post(service, card, gzip.compress(body)[:-12], **{"Content-Encoding": "gzip"})
    assert (truncated.status_code, truncated.json()["rule"]) == (400, "content_encoding")
    assert "truncated" in truncated.json()["error"]
    # a small body that inflates past MAX_BODY_BYTES (1 MiB) is refused while inflating
    bomb = gzip.compress(b" " * (2 * 1_048_576))
    assert len(bomb) < 10_000
    big = _post(service, card, bomb, **{"Content-Encoding": "gzip"})
    assert (big.status_code, big.json()["rule"]) == (413, "max_bytes")
    # raw deflate (no zlib header), which some clients send for "deflate"
    raw = zlib.compressobj(6, zlib.DEFLATED, -15)
    ok = _post(service, card, raw.compress(body) + raw.flush(), **{"Content-Encoding": "deflate"})
    assert ok.status_code == 200, ok.text
    # /v1/predict accepts compressed bodies too
    predict = httpx.post(
        f"{service.base}/v1/predict",
        content=gzip.compress(orjson.dumps({"instances": ROW.tolist()})),
        headers={"Content-Encoding": "gzip", "Accept-Encoding": "identity"},
    )
    assert predict.status_code == 200 and "content-encoding" not in predict.headers


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{\"instances\": " + b"[" * 2000 + b"]" * 2000 + b"}", "nested deeper than 1024 levels"),
        (b'{"instances": "\xff\xfe"}', "not valid UTF-8 (byte 15"),
        (b'{"instances": [[1, 2,]]}', "trailing comma is not allowed at line 1 column 21"),
        (b'{"instances": [[NaN]]}', "NaN and Infinity are not JSON numbers"),
        (b'{"instances": [[-Infinity]]}', "NaN and Infinity are not JSON numbers"),
        (b'{"instances": [[1]]', "unexpected end of data"),
        (b'{"instances": [[1e999]]}', "beyond the range of a double"),
    ],
    ids=["depth", "utf8", "syntax", "nan", "minus-infinity", "truncated", "huge-number"],
)
def test_invalid_json_messages_name_the_fault(service: ServiceProcess, body: bytes, says: str) -> None:
    response = httpx.post(f"{service.base}/v1/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()
    assert error["rule"] == "json"
    assert says in error["error"], error["error"]
    if "NaN" not in says:
        assert "NaN" not in error["error"]
