"""The FastAPI application: every route, the exception handlers and the published OpenAPI schema.

The routes answer from the same ``Service`` methods as the ASGI entry point's hot path
(``service.asgi``), so a request gets the same answer whichever way it is dispatched. Request bodies
are parsed by ``service.validation``; the schema of each body comes from ``service.schemas`` and is
attached here, with the model's real feature count once the model is loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from service import __version__
from service.errors import ApiError, BodyTooLarge, error_bytes, too_large
from service.schemas import api_models, component_schemas
from service.validation import F32_MAX
from service.wire import Wire

if TYPE_CHECKING:
    from service.app import Service

JSON = "application/json"
REF = "#/components/schemas/{model}"
TITLE = "yc-aistack inference service"
DESCRIPTION = (
    "Predictions from the served model (`/v1/predict`) and the Open Inference Protocol (KServe v2) "
    "REST endpoints. Every 4xx body is `{error, field, rule, request_id}`: it names the field and the "
    "rule broken. With `API_KEY` set, the two prediction endpoints require the `X-API-Key` header."
)

_ERRORS_BODY = {
    "400": ("invalid JSON or an empty body", "ErrorResponse"),
    "401": ("missing or wrong X-API-Key (only when API_KEY is set)", "ErrorResponse"),
    "413": ("body larger than MAX_BODY_BYTES", "ErrorResponse"),
    "422": (
        "the body breaks a rule of the schema, or the model cannot compute a finite answer for a row "
        "(the field and rule are named)",
        "ErrorResponse",
    ),
    "503": ("the model is not loaded", "ErrorResponse"),
}
#: responses (and request bodies) of each operation, as published in OpenAPI
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/v1/predict"): {
        "body": "PredictRequest",
        "secured": True,
        "responses": {"200": ("one prediction per instance", "PredictResponse"), **_ERRORS_BODY},
    },
    ("get", "/v1/model"): {
        "responses": {
            "200": ("the model card of the served model", None),
            "503": ("the model is not loaded", "ErrorResponse"),
        }
    },
    ("post", "/v2/models/{name}/infer"): {
        "body": "InferRequest",
        "secured": True,
        "responses": {
            "200": ("inference response", "InferResponse"),
            **_ERRORS_BODY,
            "404": ("unknown model name", "ErrorResponse"),
        },
    },
    ("post", "/v2/models/{name}/versions/{version}/infer"): {
        "body": "InferRequest",
        "secured": True,
        "responses": {
            "200": ("inference response", "InferResponse"),
            **_ERRORS_BODY,
            "404": ("unknown model name or version", "ErrorResponse"),
        },
    },
    ("get", "/v2/models/{name}"): {
        "responses": {
            "200": ("model metadata", "ModelMetadata"),
            "404": ("unknown model", "ErrorResponse"),
            "503": ("the model is not loaded", "ErrorResponse"),
        }
    },
    ("get", "/v2/models/{name}/versions/{version}"): {
        "responses": {
            "200": ("model metadata", "ModelMetadata"),
            "404": ("unknown model or version", "ErrorResponse"),
            "503": ("the model is not loaded", "ErrorResponse"),
        }
    },
    ("get", "/v2/models/{name}/ready"): {
        "responses": {
            "200": ('the model is ready: {"name": ..., "ready": true}', "ModelReady"),
            "400": ('the model is not ready: {"name": ..., "ready": false}', "ModelReady"),
            "404": ("unknown model", "ErrorResponse"),
        }
    },
    ("get", "/v2/models/{name}/versions/{version}/ready"): {
        "responses": {
            "200": ('the model version is ready: {"name": ..., "ready": true}', "ModelReady"),
            "400": ('the model is not ready: {"name": ..., "ready": false}', "ModelReady"),
            "404": ("unknown model or version", "ErrorResponse"),
        }
    },
    ("get", "/v2"): {"responses": {"200": ("server metadata", "ServerMetadata")}},
    ("get", "/v2/health/live"): {"responses": {"200": ('the server is live: {"live": true}', "ServerLive")}},
    ("get", "/v2/health/ready"): {
        "responses": {
            "200": ('the server is ready: {"ready": true}', "ServerReady"),
            "400": ('not ready: {"ready": false}', "ServerReady"),
        }
    },
    ("get", "/healthz"): {"responses": {"200": ("the process is alive", "Health")}},
    ("get", "/readyz"): {
        "responses": {"200": ("ready", "Readiness"), "503": ("not ready, with the reason", "Readiness")}
    },
    ("get", "/metrics"): {"responses": {"200": ("Prometheus text exposition format", "text/plain")}},
}


def _response(description: str, schema: str | None) -> dict[str, Any]:
    if schema is None:
        return {"description": description}
    if schema == "text/plain":
        return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}
    return {"description": description, "content": {JSON: {"schema": {"$ref": REF.format(model=schema)}}}}


def _answer(answer: tuple[int, bytes] | tuple[int, bytes, list[tuple[bytes, bytes]] | None]) -> Response:
    status, body = answer[0], answer[1]
    extra = answer[2] if len(answer) == 3 else None
    if not body:
        return Response(status_code=status)
    response = Response(body, status_code=status, media_type=JSON)
    for name, value in extra or ():
        key = name.decode("latin-1")
        if key == "content-type":
            del response.headers[key]
        response.headers.append(key, value.decode("latin-1"))
    return response


def _wire(request: Request) -> Wire | None:
    headers = request.headers
    length = headers.get("inference-header-content-length")
    coding = headers.get("content-encoding")
    accept = headers.get("accept-encoding")
    if length is None and coding is None and accept is None:
        return None
    return Wire(
        length.encode("latin-1") if length is not None else None,
        coding.encode("latin-1") if coding is not None else None,
        accept.encode("latin-1") if accept is not None else None,
    )


def _rid(request: Request) -> str:
    return str(request.scope.get("request_id", ""))


def _key(request: Request) -> bytes | None:
    value = request.headers.get("x-api-key")
    return value.encode("latin-1") if value is not None else None


def _error(exc: ApiError, request: Request) -> Response:
    return Response(
        error_bytes(exc.field, exc.rule, exc.message, _rid(request) or None), status_code=exc.status, media_type=JSON
    )


def openapi_schema(app: FastAPI, svc: Service) -> dict[str, Any]:
    """The OpenAPI document; request schemas carry the loaded model's shapes (cached once loaded)."""
    model = svc.model
    if model is not None and app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(title=TITLE, version=__version__, description=DESCRIPTION, routes=app.routes)
    models = api_models(
        model.n_features if model else None,
        svc.settings.max_instances,
        model.input_name if model else None,
        model.output_names if model else None,
        (model.rules.low, model.rules.high) if model else (-F32_MAX, F32_MAX),
    )
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas.update(component_schemas(models))
    secured = svc.settings.api_key is not None
    if secured:
        components["securitySchemes"] = {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}
    for path, methods in schema.get("paths", {}).items():
        for method, operation in methods.items():
            spec = OPERATIONS.get((method, path))
            if spec is None:
                continue
            operation["responses"] = {code: _response(*resp) for code, resp in spec["responses"].items()}
            if "body" in spec:
                operation["requestBody"] = {
                    "required": True,
                    "content": {JSON: {"schema": {"$ref": REF.format(model=spec["body"])}}},
                }
            if spec.get("secured") and secured:
                operation["security"] = [{"ApiKey": []}]
    if model is not None:
        app.openapi_schema = schema
    return schema


def build_fastapi(svc: Service) -> FastAPI:
    """The FastAPI app over ``svc`` (its life cycle is driven by ``service.asgi.ServiceASGI``)."""
    app = FastAPI(title=TITLE, version=__version__, description=DESCRIPTION, docs_url="/docs", redoc_url=None)
    app.state.service = svc

    @app.post("/v1/predict", tags=["predict"], summary="Predict classes for rows of features")
    async def predict(request: Request) -> Response:
        return _answer(await svc.predict(request.receive, _key(request), _rid(request), _wire(request)))

    @app.get("/v1/model", tags=["predict"], summary="The card of the served model")
    async def model_card() -> Response:
        return _answer(svc.model_card())

    @app.get("/healthz", tags=["health"], summary="Liveness")
    async def healthz() -> Response:
        return _answer(svc.healthz())

    @app.get("/readyz", tags=["health"], summary="Readiness: the model is loaded and the backend ready")
    async def readyz() -> Response:
        return _answer(await svc.readyz())

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(svc.metrics_text(), media_type=svc.metrics.content_type)

    @app.get("/v2", tags=["v2"], summary="Server metadata")
    async def v2_metadata() -> Response:
        return _answer(svc.server_metadata())

    @app.get("/v2/health/live", tags=["v2"], summary="Server liveness")
    async def v2_live() -> Response:
        return _answer(svc.server_live())

    @app.get("/v2/health/ready", tags=["v2"], summary="Server readiness")
    async def v2_ready() -> Response:
        return _answer(await svc.server_ready())

    @app.get("/v2/models/{name}", tags=["v2"], summary="Model metadata")
    async def v2_model(request: Request, name: str) -> Response:
        return _answer(svc.model_metadata(name, None, _rid(request)))

    @app.get("/v2/models/{name}/versions/{version}", tags=["v2"], summary="Model version metadata")
    async def v2_model_version(request: Request, name: str, version: str) -> Response:
        return _answer(svc.model_metadata(name, version, _rid(request)))

    @app.get("/v2/models/{name}/ready", tags=["v2"], summary="Model readiness")
    async def v2_model_ready(request: Request, name: str) -> Response:
        return _answer(await svc.model_ready(name, None, _rid(request)))

    @app.get("/v2/models/{name}/versions/{version}/ready", tags=["v2"], summary="Model version readiness")
    async def v2_model_version_ready(request: Request, name: str, version: str) -> Response:
        return _answer(await svc.model_ready(name, version, _rid(request)))

    @app.post("/v2/models/{name}/infer", tags=["v2"], summary="Inference (Open Inference Protocol)")
    async def v2_infer(request: Request, name: str) -> Response:
        return _answer(await svc.infer(request.receive, _key(request), _rid(request), name, None, _wire(request)))

    @app.post("/v2/models/{name}/versions/{version}/infer", tags=["v2"], summary="Inference on a model version")
    async def v2_infer_version(request: Request, name: str, version: str) -> Response:
        return _answer(await svc.infer(request.receive, _key(request), _rid(request), name, version, _wire(request)))

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return _error(exc, request)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge) -> Response:
        return _error(too_large(exc.limit), request)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            err = ApiError(404, "path", "not_found", f"no route {request.url.path}")
        elif exc.status_code == 405:
            err = ApiError(
                405, "method", "method_not_allowed", f"{request.method} is not allowed on {request.url.path}"
            )
        else:
            err = ApiError(exc.status_code, "request", "http", str(exc.detail))
        response = _error(err, request)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("request",), "msg": "invalid", "type": "invalid"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "path", "query"))
        err = ApiError(422, where or "request", str(first.get("type", "invalid")), str(first.get("msg", "invalid")))
        return _error(err, request)

    app.openapi = lambda: openapi_schema(app, svc)  # type: ignore[method-assign]
    return app
