"""Property-based tests of the HTTP API: schemathesis from the published OpenAPI schema, and
hypothesis-generated arbitrary JSON and bytes. The property: never a server error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.service.helpers import ServiceProcess, metric_value, start_service


@pytest.fixture(scope="module")
def fuzz_service(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    svc = start_service(tmp_path_factory.mktemp("fuzz"), MODEL_URI=str(demo_model / "model.onnx"))
    yield svc
    assert svc.stop() == 0, svc.log_tail()


@pytest.fixture(scope="module")
def api_schema(fuzz_service: ServiceProcess) -> Any:
    return schemathesis.openapi.from_url(f"{fuzz_service.base}/openapi.json")


OPERATIONS = [
    ("POST", "/v1/predict"),
    ("GET", "/v1/model"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/v2"),
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
    ("GET", "/v2/models/{name}"),
    ("GET", "/v2/models/{name}/versions/{version}"),
    ("GET", "/v2/models/{name}/ready"),
    ("GET", "/v2/models/{name}/versions/{version}/ready"),
    ("POST", "/v2/models/{name}/infer"),
    ("POST", "/v2/models/{name}/versions/{version}/infer"),
]


def test_the_schema_lists_exactly_these_operations(api_schema: Any) -> None:
    published = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert published == set(OPERATIONS)


CASES = [(m, p, "positive") for m, p in OPERATIONS] + [(m, p, "negative") for m, p in OPERATIONS if m == "POST"]


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_openapi_operations(api_schema: Any, fuzz_service: ServiceProcess, method: str, path: str, mode: str) -> None:
    """Requests generated from the schema (valid ones; for bodies also ones that break it): no 5xx,
    and every response matches what the schema documents for its status code."""
    operation = api_schema[path][method]
    strategy = operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode))

    @given(case=strategy)
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        response = case.call(base_url=fuzz_service.base)
        assert response.status_code < 500, (
            f"{case.method} {case.formatted_path}: {response.status_code} {response.text}"
        )
        case.validate_response(response)

    run()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=80,
)
rows = st.lists(
    st.one_of(
        st.floats(allow_nan=False, allow_infinity=False), st.integers(), st.booleans(), st.none(), st.text(max_size=3)
    ),
    min_size=0,
    max_size=70,
)


@given(
    body=st.one_of(
        json_values, st.fixed_dictionaries({"instances": st.one_of(json_values, st.lists(rows, max_size=4))})
    )
)
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
def test_predict_never_fails_on_arbitrary_json(fuzz_service: ServiceProcess, body: Any) -> None:
    response = httpx.post(f"{fuzz_service.base}/v1/predict", json=body, timeout=30)
    assert response.status_code in (200, 400, 422), response.text
    if response.status_code != 200:
        error = response.json()
        assert error["field"] and error["rule"] and error["error"]


@given(raw=st.binary(max_size=512))
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
def test_infer_never_fails_on_arbitrary_bytes(fuzz_service: ServiceProcess, raw: bytes) -> None:
    response = httpx.post(f"{fuzz_service.base}/v2/models/digits-mlp/infer", content=raw, timeout=30)
    assert response.status_code in (400, 422), response.text


def test_no_server_error_was_ever_served(fuzz_service: ServiceProcess) -> None:
    text = httpx.get(f"{fuzz_service.base}/metrics").text
    served = [line for line in text.splitlines() if line.startswith("http_requests_total{")]
    assert served, "the fuzz tests above did not run"
    assert not [line for line in served if 'status="5' in line], served
    assert metric_value(text, "model_ready") == 1
