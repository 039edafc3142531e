"""The ASGI entry point's hot path and the FastAPI routes give the same answers (in process)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from service.app import create_app
from service.settings import Settings


def test_hot_path_and_fastapi_routes_answer_alike(demo_model: Path, digits: tuple, tmp_path: Path) -> None:
    app = create_app(
        Settings(model_uri=str(demo_model / "model.onnx"), store_path=tmp_path / "st", spool_dir=tmp_path / "sp")
    )
    rows = digits[0][:3].tolist()
    v2 = {"inputs": [{"name": "float_input", "shape": [3, 64], "datatype": "FP32", "data": rows}]}
    requests = [
        ("POST", "/v1/predict", {"instances": rows}),
        ("POST", "/v1/predict", {"instances": [[1, 2]]}),
        ("POST", "/v1/predict", {"instances": []}),
        ("POST", "/v2/models/digits-mlp/infer", v2),
        ("POST", "/v2/models/digits-mlp/versions/0/infer", v2),
        ("POST", "/v2/models/other/infer", v2),
        ("GET", "/readyz", None),
        ("GET", "/healthz", None),
        ("GET", "/v2/health/ready", None),
        ("GET", "/v2/health/live", None),
    ]

    async def go() -> list[tuple[httpx.Response, httpx.Response]]:
        await app.service.start()
        try:
            pairs = []
            hot = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc")
            routed = httpx.AsyncClient(transport=httpx.ASGITransport(app=app.fastapi), base_url="http://svc")
            async with hot, routed:
                for method, path, body in requests:
                    headers = {"X-Request-ID": "same-id"}
                    a = await hot.request(method, path, json=body, headers=headers)
                    b = await routed.request(method, path, json=body, headers=headers)
                    pairs.append((a, b))
            return pairs
        finally:
            await app.service.stop()

    for (method, path, _), (hot, routed) in zip(requests, asyncio.run(go()), strict=True):
        assert hot.status_code == routed.status_code, (method, path)
        if hot.content:
            hot_body, routed_body = hot.json(), routed.json()
            if isinstance(hot_body, dict):  # the FastAPI app alone has no request-id layer
                hot_body.pop("request_id", None)
                routed_body.pop("request_id", None)
            assert hot_body == routed_body, (method, path)
        else:
            assert routed.content == b""
