"""Pydantic v2 models of the API, used to publish the OpenAPI schema.

Request bodies are parsed by ``service.validation`` (orjson + numpy) on the hot path; these models
describe exactly the rules it enforces. Their constraints depend on the loaded model (number of
features and classes, input name) and on ``MAX_INSTANCES``, so they are built per model.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.json_schema import models_json_schema

from service.validation import F32_MAX, NUMERIC_DATATYPES


def _number(low: float, high: float) -> Any:
    return Annotated[float, Field(ge=low, le=high, allow_inf_nan=False)]


REF = "#/components/schemas/{model}"


class ModelRef(BaseModel):
    name: str
    version: str = Field(description="first 12 hex characters of the model file's sha256")


class Prediction(BaseModel):
    label: int = Field(description="the most probable class")
    probabilities: list[float] = Field(description="one probability per class, in class order")


class PredictResponse(BaseModel):
    model: ModelRef
    predictions: list[Prediction]


class ErrorResponse(BaseModel):
    error: str = Field(description="'<field>: <message>' (a string, as the Open Inference Protocol requires)")
    field: str = Field(description="the offending field, e.g. instances[3][10], body, X-API-Key")
    rule: str = Field(description="the rule broken, e.g. type, length, finite, max_items, json, max_bytes")
    request_id: str | None = None


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    model: dict[str, Any] | None = None
    backend: str
    reason: str | None = Field(default=None, description="why the model is not loaded (missing, checksum, ...)")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str] = Field(description="binary_tensor_data: the binary tensor data extension")


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    parameters: dict[str, Any] | None = None


class OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[float] | list[int] | None = Field(
        default=None, description="absent when the output is binary (parameters.binary_data_size gives its bytes)"
    )
    parameters: dict[str, Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[OutputTensor]


def api_models(
    n_features: int | None,
    max_instances: int,
    input_name: str | None,
    output_names: list[str] | None,
    value_range: tuple[float, float] = (-F32_MAX, F32_MAX),
) -> dict[str, type[BaseModel]]:
    """The request models for a model with ``n_features`` inputs (None: not loaded yet)."""
    number = _number(*value_range)
    if n_features is not None:
        row: Any = Annotated[list[number], Field(min_length=n_features, max_length=n_features)]  # type: ignore[valid-type]
        shape: Any = tuple[Annotated[int, Field(ge=1, le=max_instances)], Literal[n_features]]  # type: ignore[valid-type]
    else:
        row = list[number]  # type: ignore[valid-type]
        shape = tuple[Annotated[int, Field(ge=1, le=max_instances)], Annotated[int, Field(ge=1)]]
    name_type: Any = Literal[input_name] if input_name else str
    out_name: Any = Literal[tuple(output_names)] if output_names else str
    datatype: Any = Literal[tuple(sorted(NUMERIC_DATATYPES))]
    predict = create_model(
        "PredictRequest",
        __config__=ConfigDict(
            extra="forbid",
            json_schema_extra={"description": "Rows of features; one prediction per row."},
        ),
        instances=(list[row], Field(min_length=1, max_length=max_instances)),
    )
    infer_input = create_model(
        "InferInputTensor",
        __config__=ConfigDict(extra="forbid"),
        name=(name_type, ...),
        shape=(shape, Field(description="[rows, features]")),
        datatype=(datatype, Field(description="converted to FP32")),
        data=(
            list[number] | list[row] | None,  # type: ignore[valid-type]
            Field(
                default=None,
                min_length=1,
                description="row-major flat data or nested rows; absent when parameters.binary_data_size "
                "gives the size of the input's binary data after the JSON (Inference-Header-Content-Length)",
            ),
        ),
        parameters=(dict[str, Any] | None, None),
    )
    requested = create_model(
        "InferRequestedOutput",
        __config__=ConfigDict(extra="forbid"),
        name=(out_name, ...),
        parameters=(dict[str, Any] | None, None),
    )
    infer = create_model(
        "InferRequest",
        __config__=ConfigDict(extra="forbid"),
        id=(str | None, None),
        model_name=(str | None, Field(default=None, description="if given, the model of the path")),
        parameters=(dict[str, Any] | None, None),
        inputs=(list[infer_input], Field(min_length=1, max_length=1)),
        outputs=(list[requested] | None, None),
    )
    return {
        "PredictRequest": predict,
        "InferRequest": infer,
        "PredictResponse": PredictResponse,
        "ErrorResponse": ErrorResponse,
        "Health": Health,
        "Readiness": Readiness,
        "ServerMetadata": ServerMetadata,
        "ServerLive": ServerLive,
        "ServerReady": ServerReady,
        "ModelReady": ModelReady,
        "ModelMetadata": ModelMetadata,
        "InferResponse": InferResponse,
    }


def component_schemas(models: dict[str, type[BaseModel]]) -> dict[str, Any]:
    """JSON schemas of ``models`` (and what they reference), keyed for ``components.schemas``."""
    pairs = [(m, "validation") for m in models.values()]
    _, defs = models_json_schema(pairs, ref_template=REF)  # type: ignore[arg-type]
    return dict(defs.get("$defs", {}))
