"""Request parsing on the hot path: orjson + numpy, with errors that name the field and the rule.

The published OpenAPI schema (``service.schemas``) describes the same rules; parsing by hand is
about twice as fast as a pydantic body model for these number arrays. The fast path converts the
whole array with one numpy call; only when that fails (or the body holds strings or ``true`` /
``false``) does the slow path walk the input to find and name the first offending element.

The rules for the numbers: JSON numbers (not booleans, strings or null), finite, within float32,
and within the model's input range when its card declares one (``inputs[0].range``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from service.errors import ApiError

F32_MAX = float(np.finfo(np.float32).max)
_minimum, _maximum = np.minimum.reduce, np.maximum.reduce  # arr.min()/max() without their Python wrappers

# Open Inference Protocol datatypes accepted for the input tensor (converted to float32).
NUMERIC_DATATYPES = frozenset(
    ["FP32", "FP64", "FP16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"]
)


@dataclass(frozen=True)
class InputRules:
    """What a valid input row is for the served model."""

    n_features: int
    max_rows: int
    low: float = -F32_MAX
    high: float = F32_MAX

    @property
    def ranged(self) -> bool:
        return self.low > -F32_MAX or self.high < F32_MAX


def parse_json(body: bytes) -> Any:
    if not body:
        raise ApiError(400, "body", "required", "the request body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "body", "json", f"invalid JSON ({exc}); NaN and Infinity are not JSON") from None


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _check_number(value: Any, field: str, rules: InputRules) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(422, field, "type", f"expected a number, got {_type_name(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ApiError(422, field, "finite", "must be a finite number")
    if abs(value) > F32_MAX:
        raise ApiError(422, field, "float32_range", f"must be within +-{F32_MAX:.6g} (float32)")
    if not rules.low <= value <= rules.high:
        raise ApiError(
            422,
            field,
            "range",
            f"must be within [{rules.low:g}, {rules.high:g}] (the model's input range), got {value:g}",
        )


def _explain_matrix(value: list[Any], field: str, rules: InputRules) -> None:
    """Raise the precise error for a value that is not an [n, n_features] array of valid numbers."""
    n_features = rules.n_features
    for i, row in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(row, list):
            raise ApiError(422, where, "type", f"expected an array of {n_features} numbers, got {_type_name(row)}")
        if len(row) != n_features:
            raise ApiError(422, where, "length", f"expected {n_features} numbers, got {len(row)}")
        for j, item in enumerate(row):
            _check_number(item, f"{where}[{j}]", rules)


def _explain_flat(value: list[Any], field: str, rules: InputRules) -> None:
    for i, item in enumerate(value):
        _check_number(item, f"{field}[{i}]", rules)


def _within(arr: np.ndarray, rules: InputRules) -> bool:
    """All values finite and inside the rules' range (NaN fails every comparison)."""
    low, high = _minimum(arr, axis=None), _maximum(arr, axis=None)
    return bool(rules.low <= low and high <= rules.high)


def _convert(value: list[Any], field: str, rules: InputRules, flat: bool) -> np.ndarray:
    """Slow path: name the first bad element, else convert exactly (e.g. integers beyond int64)."""
    if flat:
        _explain_flat(value, field, rules)
    else:
        _explain_matrix(value, field, rules)
    return np.array(value, dtype=np.float64)


def _fast_array(value: list[Any], strings_possible: bool) -> np.ndarray | None:
    """One numpy conversion, or None when it fails or could have accepted a non-number."""
    try:
        if strings_possible:  # let numpy infer: strings give a text dtype, nulls an object one
            arr = np.array(value)
            return arr.astype(np.float64, copy=False) if arr.dtype.kind in "iuf" else None
        return np.array(value, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        return None


def rows_from_instances(
    value: Any, field: str, rules: InputRules, fast: bool, strings_possible: bool = True
) -> np.ndarray:
    """``[[n_features numbers], ...]`` -> ``float32 [n, n_features]``. ``fast``: the body has no
    boolean token (numpy would take ``true`` for 1.0); ``strings_possible``: it may hold strings."""
    if not isinstance(value, list):
        raise ApiError(422, field, "type", f"expected an array of instances, got {_type_name(value)}")
    n = len(value)
    if n == 0:
        raise ApiError(422, field, "min_items", "must contain at least 1 instance")
    if n > rules.max_rows:
        raise ApiError(
            422, field, "max_items", f"at most {rules.max_rows} instances per request (MAX_INSTANCES), got {n}"
        )
    arr = _fast_array(value, strings_possible) if fast else None
    if arr is None or arr.shape != (n, rules.n_features) or not _within(arr, rules):
        arr = _convert(value, field, rules, flat=False)
    return arr.astype(np.float32)


def _require_object(obj: Any, field: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ApiError(422, field, "type", f"expected a JSON object, got {_type_name(obj)}")
    return obj


def _reject_unknown(obj: dict[str, Any], allowed: frozenset[str], prefix: str) -> None:
    for key in obj:
        if key not in allowed:
            name = key if key else '""'
            raise ApiError(422, f"{prefix}{name}", "unknown_field", f"unknown field; allowed: {sorted(allowed)}")


def _no_booleans(body: bytes) -> bool:
    return b"true" not in body and b"false" not in body


_PREDICT_FIELDS = frozenset(["instances"])


def parse_predict(body: bytes, rules: InputRules) -> np.ndarray:
    """``POST /v1/predict`` body -> ``float32 [n, n_features]``."""
    obj = _require_object(parse_json(body), "body")
    if "instances" not in obj:
        _reject_unknown(obj, _PREDICT_FIELDS, "")
        raise ApiError(422, "instances", "required", "the field is required")
    if len(obj) != 1:
        _reject_unknown(obj, _PREDICT_FIELDS, "")
    # the only quotes of a well-formed body are those around "instances": no strings anywhere
    strings_possible = body.count(b'"') != 2
    return rows_from_instances(obj["instances"], "instances", rules, _no_booleans(body), strings_possible)


_INFER_FIELDS = frozenset(["id", "parameters", "inputs", "outputs"])
_INPUT_FIELDS = frozenset(["name", "shape", "datatype", "data", "parameters"])
_OUTPUT_FIELDS = frozenset(["name", "parameters"])


class InferRequest:
    """A parsed Open Inference Protocol (KServe v2) inference request."""

    __slots__ = ("id", "outputs", "rows")

    def __init__(self, rows: np.ndarray, request_id: str | None, outputs: list[str] | None) -> None:
        self.rows = rows
        self.id = request_id
        self.outputs = outputs


def _shape(value: Any, field: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise ApiError(422, field, "type", "expected an array of integers")
    return value


def parse_infer(body: bytes, input_name: str, rules: InputRules, output_names: list[str]) -> InferRequest:
    """``POST /v2/models/{name}/infer`` body -> rows + requested outputs."""
    obj = _require_object(parse_json(body), "body")
    _reject_unknown(obj, _INFER_FIELDS, "")
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ApiError(422, "id", "type", f"expected a string, got {_type_name(request_id)}")
    if "parameters" in obj:
        _require_object(obj["parameters"], "parameters")
    if "inputs" not in obj:
        raise ApiError(422, "inputs", "required", "the field is required")
    inputs = obj["inputs"]
    if not isinstance(inputs, list):
        raise ApiError(422, "inputs", "type", f"expected an array of input tensors, got {_type_name(inputs)}")
    if len(inputs) != 1:
        raise ApiError(
            422, "inputs", "length", f"the model takes exactly 1 input tensor ({input_name!r}), got {len(inputs)}"
        )
    tensor = _require_object(inputs[0], "inputs[0]")
    _reject_unknown(tensor, _INPUT_FIELDS, "inputs[0].")
    for key in ("name", "shape", "datatype", "data"):
        if key not in tensor:
            raise ApiError(422, f"inputs[0].{key}", "required", "the field is required")
    if tensor["name"] != input_name:
        raise ApiError(
            422, "inputs[0].name", "unknown_input", f"the model's input is {input_name!r}, got {tensor['name']!r}"
        )
    datatype = tensor["datatype"]
    if datatype not in NUMERIC_DATATYPES:
        raise ApiError(
            422, "inputs[0].datatype", "enum", f"expected a numeric datatype (FP32, FP64, INT64, ...), got {datatype!r}"
        )
    if "parameters" in tensor:
        _require_object(tensor["parameters"], "inputs[0].parameters")
    shape = _shape(tensor["shape"], "inputs[0].shape")
    n_features = rules.n_features
    if len(shape) != 2 or shape[1] != n_features:
        raise ApiError(422, "inputs[0].shape", "shape", f"expected [n, {n_features}], got {shape}")
    n = shape[0]
    if n < 1:
        raise ApiError(422, "inputs[0].shape", "min_items", "the batch dimension must be at least 1")
    if n > rules.max_rows:
        raise ApiError(
            422, "inputs[0].shape", "max_items", f"at most {rules.max_rows} rows per request (MAX_INSTANCES), got {n}"
        )
    data = tensor["data"]
    if not isinstance(data, list):
        raise ApiError(422, "inputs[0].data", "type", f"expected an array of numbers, got {_type_name(data)}")
    fast = _no_booleans(body)  # strings are expected in this body (name, datatype, ...)
    if data and isinstance(data[0], list):
        rows = rows_from_instances(data, "inputs[0].data", rules, fast)
        if rows.shape[0] != n:
            raise ApiError(422, "inputs[0].data", "shape", f"the data has {rows.shape[0]} rows, the shape says {n}")
    else:
        arr = _fast_array(data, strings_possible=True) if fast else None
        if arr is None or arr.ndim != 1 or (arr.size and not _within(arr, rules)):
            arr = _convert(data, "inputs[0].data", rules, flat=True)
        if arr.size != n * n_features:
            raise ApiError(
                422, "inputs[0].data", "length", f"shape {shape} needs {n * n_features} values, got {arr.size}"
            )
        rows = arr.astype(np.float32).reshape(n, n_features)
    outputs: list[str] | None = None
    if "outputs" in obj:
        requested = obj["outputs"]
        if not isinstance(requested, list):
            raise ApiError(422, "outputs", "type", f"expected an array, got {_type_name(requested)}")
        outputs = []
        for i, out in enumerate(requested):
            out = _require_object(out, f"outputs[{i}]")
            _reject_unknown(out, _OUTPUT_FIELDS, f"outputs[{i}].")
            name = out.get("name")
            if name not in output_names:
                raise ApiError(
                    422, f"outputs[{i}].name", "unknown_output", f"expected one of {output_names}, got {name!r}"
                )
            outputs.append(name)
    return InferRequest(rows, request_id, outputs)
