"""Model loading: file and S3 (moto server over HTTP), checksum verification, never a wrong model."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import httpx
import pytest

from service.app import Service
from service.settings import Settings
from tests.service.helpers import MotoS3, wait_until


def _load(tmp_path: Path, **settings: object) -> Service:
    svc = Service(Settings(store_path=tmp_path / "st", spool_dir=tmp_path / "sp", model_retry_seconds=0, **settings))

    async def go() -> None:
        await svc.start()
        await svc.stop()

    asyncio.run(go())
    return svc


def test_file_uri_and_plain_path_load(model_copy: Path, tmp_path: Path) -> None:
    for uri in (str(model_copy / "model.onnx"), f"file://{model_copy / 'model.onnx'}"):
        svc = _load(tmp_path, model_uri=uri)
        assert svc.model is not None, svc.load_error
        assert svc.model.version == json.loads((model_copy / "card.json").read_text())["version"]


@pytest.mark.parametrize(
    ("tamper", "kind", "words"),
    [
        ("flip-a-byte", "checksum", "sha256 mismatch"),
        ("delete-model", "missing", "no such file"),
        ("delete-card", "missing", "model card"),
        ("model-is-a-directory", "unreadable", "model"),
        ("card-not-json", "invalid", "invalid model card"),
        ("card-without-sha256", "invalid", "sha256"),
        ("card-wrong-input-width", "invalid", "shape"),
        ("card-wrong-input-name", "invalid", "inputs"),
        ("not-onnx", "invalid", "ONNX Runtime cannot load it"),
    ],
)
def test_a_bad_model_leaves_the_service_not_ready(
    model_copy: Path, tmp_path: Path, tamper: str, kind: str, words: str
) -> None:
    model, card_path = model_copy / "model.onnx", model_copy / "card.json"
    card = json.loads(card_path.read_text())
    if tamper == "flip-a-byte":
        data = bytearray(model.read_bytes())
        data[len(data) // 2] ^= 0xFF
        model.write_bytes(bytes(data))
    elif tamper == "delete-model":
        model.unlink()
    elif tamper == "delete-card":
        card_path.unlink()
    elif tamper == "model-is-a-directory":
        model.unlink()
        model.mkdir()
    elif tamper == "card-not-json":
        card_path.write_text("{")
    elif tamper == "card-without-sha256":
        del card["sha256"]
        card_path.write_text(json.dumps(card))
    elif tamper == "card-wrong-input-width":
        card["inputs"][0]["shape"] = [-1, 32]
        card_path.write_text(json.dumps(card))
    elif tamper == "card-wrong-input-name":
        card["inputs"][0]["name"] = "pixels"
        card_path.write_text(json.dumps(card))
    elif tamper == "not-onnx":  # consistent card, but the bytes are no ONNX graph
        garbage = b"definitely not an onnx graph"
        model.write_bytes(garbage)
        card["sha256"] = hashlib.sha256(garbage).hexdigest()
        card_path.write_text(json.dumps(card))
    svc = _load(tmp_path, model_uri=str(model))
    assert svc.model is None
    assert svc.load_error is not None
    assert svc.load_error.kind == kind, svc.load_error
    assert words in str(svc.load_error), svc.load_error
    ok, body = svc.readiness()
    assert not ok and body["status"] == "not_ready" and kind in body["reason"]


def test_a_pinned_sha256_overrides_the_card(model_copy: Path, tmp_path: Path) -> None:
    card = json.loads((model_copy / "card.json").read_text())
    right = _load(tmp_path, model_uri=str(model_copy / "model.onnx"), model_sha256=card["sha256"])
    assert right.model is not None
    wrong = _load(tmp_path, model_uri=str(model_copy / "model.onnx"), model_sha256="0" * 64)
    assert wrong.model is None and wrong.load_error is not None
    assert wrong.load_error.kind == "checksum" and "MODEL_SHA256 expects 000" in wrong.load_error.reason


def test_a_model_swapped_with_its_card_is_refused_when_pinned(
    model_copy: Path, tmp_path: Path, demo_model: Path
) -> None:
    """Someone replaces model + card in the bucket with another consistent pair: the pin catches it."""
    other = bytearray((demo_model / "model.onnx").read_bytes())
    pinned = hashlib.sha256(bytes(other)).hexdigest()
    other[-1] ^= 0x01  # another "model" (still loads or not: it must never be served)
    (model_copy / "model.onnx").write_bytes(bytes(other))
    card = json.loads((model_copy / "card.json").read_text())
    card["sha256"] = hashlib.sha256(bytes(other)).hexdigest()
    (model_copy / "card.json").write_text(json.dumps(card))
    svc = _load(tmp_path, model_uri=str(model_copy / "model.onnx"), model_sha256=pinned)
    assert svc.model is None and svc.load_error is not None and svc.load_error.kind == "checksum"


def test_checksum_refusal_over_http_with_a_log_line_saying_why(model_copy: Path, services) -> None:  # type: ignore[no-untyped-def]
    data = bytearray((model_copy / "model.onnx").read_bytes())
    data[100] ^= 0x01
    (model_copy / "model.onnx").write_bytes(bytes(data))
    svc = services(wait=False, MODEL_URI=str(model_copy / "model.onnx"))
    svc.wait_ready(expect=503)
    with svc.client() as http:
        ready = http.get("/readyz")
        predict = http.post("/v1/predict", json={"instances": [[0.0] * 64]})
        v2 = http.get("/v2/health/ready")
        live = http.get("/healthz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "not_ready" and ready.json()["reason"].startswith("checksum:")
    assert predict.status_code == 503 and predict.json()["rule"] == "ready"
    assert (v2.status_code, v2.json()) == (400, {"ready": False})
    assert live.status_code == 200
    errors = [line for line in svc.log_lines() if line.get("log.level") == "error"]
    assert any("model not loaded (checksum)" in e["message"] and "sha256 mismatch" in e["message"] for e in errors)


def _upload(moto: MotoS3, bucket: str, prefix: str, model_dir: Path) -> None:
    s3 = moto.client()
    for name in ("model.onnx", "card.json"):
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=(model_dir / name).read_bytes())


def test_model_from_s3_over_http(moto_s3: MotoS3, demo_model: Path, services, digits: tuple) -> None:  # type: ignore[no-untyped-def]
    moto_s3.create_bucket("models-ok")
    _upload(moto_s3, "models-ok", "digits/v1", demo_model)
    svc = services(MODEL_URI="s3://models-ok/digits/v1/model.onnx", **moto_s3.env())
    x_test, y_test = digits
    with svc.client() as http:
        ready = http.get("/readyz").json()
        answer = http.post("/v1/predict", json={"instances": x_test[:20].tolist()}).json()
    assert ready["model"]["version"] == json.loads((demo_model / "card.json").read_text())["version"]
    assert sum(int(p["label"] == y) for p, y in zip(answer["predictions"], y_test[:20], strict=True)) >= 18


def test_s3_missing_object_and_tampered_object(moto_s3: MotoS3, demo_model: Path, services, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    moto_s3.create_bucket("models-bad")
    missing = services(wait=False, MODEL_URI="s3://models-bad/nothing/model.onnx", **moto_s3.env())
    missing.wait_ready(expect=503)
    with missing.client() as http:
        reason = http.get("/readyz").json()["reason"]
    assert reason.startswith("missing: s3://models-bad/nothing/card.json")

    tampered = tmp_path / "tampered"
    tampered.mkdir()
    (tampered / "card.json").write_bytes((demo_model / "card.json").read_bytes())
    (tampered / "model.onnx").write_bytes((demo_model / "model.onnx").read_bytes() + b"\0")
    _upload(moto_s3, "models-bad", "tampered", tampered)
    bad = services(wait=False, MODEL_URI="s3://models-bad/tampered/model.onnx", **moto_s3.env())
    bad.wait_ready(expect=503)
    with bad.client() as http:
        assert http.get("/readyz").json()["reason"].startswith("checksum: s3://models-bad/tampered/model.onnx")


def test_the_service_becomes_ready_once_the_model_is_published(moto_s3: MotoS3, demo_model: Path, services) -> None:  # type: ignore[no-untyped-def]
    moto_s3.create_bucket("models-late")
    svc = services(wait=False, MODEL_URI="s3://models-late/d/model.onnx", MODEL_RETRY_SECONDS="0.3", **moto_s3.env())
    svc.wait_ready(expect=503)
    _upload(moto_s3, "models-late", "d", demo_model)
    svc.wait_ready(expect=200, timeout=30)


def test_unreachable_object_storage_is_unreadable_not_a_crash(services, model_copy: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.service.helpers import free_port

    svc = services(
        wait=False,
        MODEL_URI="s3://models/d/model.onnx",
        S3_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}",
        S3_CONNECT_TIMEOUT="0.5",
        AWS_ACCESS_KEY_ID="x",
        AWS_SECRET_ACCESS_KEY="y",
    )
    svc.wait_ready(expect=503)
    reason = wait_until(
        lambda: httpx.get(f"{svc.base}/readyz").json().get("reason", "").startswith("unreadable"),
        what="unreadable reason",
    )
    assert reason
