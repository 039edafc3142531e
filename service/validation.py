"""Request parsing on the hot path: orjson + numpy, with errors that name the field and the rule.

The published OpenAPI schema (``service.schemas``) describes the same rules; parsing by hand is
about twice as fast as a pydantic body model for these number arrays. The fast path converts the
whole array with one numpy call; only when that fails (or the body holds strings or ``true`` /
``false``) does the slow path walk the input to find and name the first offending element.

The rules for the numbers: JSON numbers (not booleans, strings or null), finite, within float32,
and within the model's input range when its card declares one (``inputs[0].range``).
"""

from __future__ import annotations

import json
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


_NON_JSON_NUMBERS = (b"NaN", b"nan", b"Infinity", b"infinity", b"inf", b"Inf")
_MAX_DEPTH = 1024  # orjson's limit


def parse_json(body: bytes, hint: str = "") -> Any:
    """``body`` parsed; a 400 whose message names the actual fault (position, depth, UTF-8,
    NaN/Infinity) otherwise. ``hint`` is appended to syntax errors after the end of a document."""
    if not body:
        raise ApiError(400, "body", "required", "the request body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "body", "json", json_fault(body, exc, hint)) from None


def json_fault(body: bytes, exc: orjson.JSONDecodeError, hint: str = "") -> str:
    """What is wrong with ``body``, in words a client can act on."""
    msg, pos = exc.msg, exc.pos
    if hint and _document_then_more(body):
        return f"invalid JSON: bytes follow the end of the JSON document; {hint}"
    if "UTF-8" in msg or "surrogate" in msg:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as bad:
            return f"invalid JSON: the body is not valid UTF-8 (byte {bad.start}: {bad.reason})"
        if "BOM" in msg:
            return "invalid JSON: the body starts with a UTF-8 byte order mark; send it without"
        return f"invalid JSON: {msg} at line {exc.lineno} column {exc.colno} (char {pos})"
    if "depth" in msg:
        return f"invalid JSON: nested deeper than {_MAX_DEPTH} levels (at char {pos})"
    where = f"line {exc.lineno} column {exc.colno} (char {pos})"
    if "infinity when parsed" in msg:
        return f"invalid JSON: a number is beyond the range of a double (+-1.8e308) at {where}"
    start = pos - 1 if pos > 0 and body[pos - 1 : pos] in (b"-", b"+") else pos
    if body[start:].lstrip(b"+-").startswith(_NON_JSON_NUMBERS):
        return f"invalid JSON: NaN and Infinity are not JSON numbers (at {where})"
    if "after document" in msg and hint:
        return f"invalid JSON: {msg} at {where}; {hint}"
    return f"invalid JSON: {msg} at {where}"


_DECODER = json.JSONDecoder()


def _document_then_more(body: bytes) -> bool:
    """Whether ``body`` starts with a whole JSON document and has more after it (binary data sent
    without its framing header)."""
    text = body.decode("utf-8", "replace").lstrip()
    try:
        _, end = _DECODER.raw_decode(text)
    except ValueError:
        return False
    return bool(text[end:].strip())


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


_INFER_FIELDS = frozenset(["id", "model_name", "parameters", "inputs", "outputs"])
_INPUT_FIELDS = frozenset(["name", "shape", "datatype", "data", "parameters"])
_OUTPUT_FIELDS = frozenset(["name", "parameters"])
BINARY_DTYPES = {
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "FP16": np.dtype("<f2"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
}
_EMPTY = memoryview(b"")


class InferRequest:
    """A parsed Open Inference Protocol (KServe v2) inference request: the rows, the request id,
    and the requested outputs as ``(name, binary)`` (None: all outputs, each binary when
    ``binary_output``)."""

    __slots__ = ("binary_output", "id", "outputs", "rows")

    def __init__(
        self,
        rows: np.ndarray,
        request_id: str | None,
        outputs: list[tuple[str, bool]] | None,
        binary_output: bool = False,
    ) -> None:
        self.rows = rows
        self.id = request_id
        self.outputs = outputs
        self.binary_output = binary_output


def _shape(value: Any, field: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise ApiError(422, field, "type", "expected an array of integers")
    return value


def _flag(params: dict[str, Any], key: str, field: str) -> bool | None:
    value = params.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise ApiError(422, f"{field}.{key}", "type", f"expected true or false, got {_type_name(value)}")
    return value


_TRAILING_HINT = (
    "a body with binary tensor data needs the Inference-Header-Content-Length header (the length of its JSON part)"
)


def parse_infer(
    body: bytes,
    input_name: str,
    rules: InputRules,
    output_names: list[str],
    binary: memoryview = _EMPTY,
    model_name: str | None = None,
) -> InferRequest:
    """``POST /v2/models/{name}/infer`` body -> rows + requested outputs. ``body`` is the JSON part;
    ``binary`` what followed it (binary tensor data extension)."""
    obj = _require_object(parse_json(body, _TRAILING_HINT), "body")
    _reject_unknown(obj, _INFER_FIELDS, "")
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ApiError(422, "id", "type", f"expected a string, got {_type_name(request_id)}")
    named = obj.get("model_name")
    if named is not None:
        if not isinstance(named, str):
            raise ApiError(422, "model_name", "type", f"expected a string, got {_type_name(named)}")
        if model_name is not None and named != model_name:
            raise ApiError(422, "model_name", "model_name", f"the body names model {named!r}, the path {model_name!r}")
    binary_output = False
    if "parameters" in obj:
        params = _require_object(obj["parameters"], "parameters")
        binary_output = bool(_flag(params, "binary_data_output", "parameters"))
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
    binary_size: int | None = None
    if "parameters" in tensor:
        tparams = _require_object(tensor["parameters"], "inputs[0].parameters")
        if "binary_data_size" in tparams:
            size = tparams["binary_data_size"]
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ApiError(
                    400,
                    "inputs[0].parameters.binary_data_size",
                    "binary_framing",
                    f"must be a non-negative integer (bytes), got {size!r}",
                )
            binary_size = size
    for key in ("name", "shape", "datatype"):
        if key not in tensor:
            raise ApiError(422, f"inputs[0].{key}", "required", "the field is required")
    if binary_size is None and "data" not in tensor:
        raise ApiError(
            422, "inputs[0].data", "required", "the field is required (or parameters.binary_data_size with binary data)"
        )
    if binary_size is not None and "data" in tensor:
        raise ApiError(
            400,
            "inputs[0].data",
            "binary_framing",
            "the input has both data and parameters.binary_data_size; send one of them",
        )
    if binary_size is None and len(binary):
        raise ApiError(
            400,
            "Inference-Header-Content-Length",
            "binary_framing",
            f"{len(binary)} bytes follow the JSON part but no input has parameters.binary_data_size",
        )
    if binary_size is not None:
        if binary_size > len(binary):
            raise ApiError(
                400,
                "inputs[0].parameters.binary_data_size",
                "binary_framing",
                f"is {binary_size} bytes, but only {len(binary)} bytes of binary data follow the JSON part"
                + ("" if len(binary) else " (is the Inference-Header-Content-Length header missing?)"),
            )
        if binary_size < len(binary):
            raise ApiError(
                400,
                "Inference-Header-Content-Length",
                "binary_framing",
                f"{len(binary) - binary_size} bytes of binary data are left over after the inputs' "
                f"binary_data_size ({binary_size} bytes)",
            )
    if tensor["name"] != input_name:
        raise ApiError(
            422, "inputs[0].name", "unknown_input", f"the model's input is {input_name!r}, got {tensor['name']!r}"
        )
    datatype = tensor["datatype"]
    if datatype not in NUMERIC_DATATYPES:
        raise ApiError(
            422, "inputs[0].datatype", "enum", f"expected a numeric datatype (FP32, FP64, INT64, ...), got {datatype!r}"
        )
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
    if binary_size is not None:
        rows = _binary_rows(binary, datatype, shape, rules)
    else:
        rows = _json_rows(tensor["data"], shape, rules, _no_booleans(body))
    outputs: list[tuple[str, bool]] | None = None
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
            as_binary = binary_output
            if "parameters" in out:
                oparams = _require_object(out["parameters"], f"outputs[{i}].parameters")
                if oparams.get("classification"):
                    raise ApiError(
                        422,
                        f"outputs[{i}].parameters.classification",
                        "unsupported",
                        "the classification extension is not supported; the label output holds the class",
                    )
                flag = _flag(oparams, "binary_data", f"outputs[{i}].parameters")
                if flag is not None:
                    as_binary = flag
            outputs.append((name, as_binary))
    return InferRequest(rows, request_id, outputs, binary_output)


def _json_rows(data: Any, shape: list[int], rules: InputRules, fast: bool) -> np.ndarray:
    n, n_features = shape
    if not isinstance(data, list):
        raise ApiError(422, "inputs[0].data", "type", f"expected an array of numbers, got {_type_name(data)}")
    # strings are expected in this body (name, datatype, ...)
    if data and isinstance(data[0], list):
        rows = rows_from_instances(data, "inputs[0].data", rules, fast)
        if rows.shape[0] != n:
            raise ApiError(422, "inputs[0].data", "shape", f"the data has {rows.shape[0]} rows, the shape says {n}")
        return rows
    arr = _fast_array(data, strings_possible=True) if fast else None
    if arr is None or arr.ndim != 1 or (arr.size and not _within(arr, rules)):
        arr = _convert(data, "inputs[0].data", rules, flat=True)
    if arr.size != n * n_features:
        raise ApiError(422, "inputs[0].data", "length", f"shape {shape} needs {n * n_features} values, got {arr.size}")
    return arr.astype(np.float32).reshape(n, n_features)


def _binary_rows(binary: memoryview, datatype: str, shape: list[int], rules: InputRules) -> np.ndarray:
    dtype = BINARY_DTYPES[datatype]
    n, n_features = shape
    need = n * n_features * dtype.itemsize
    if len(binary) != need:
        raise ApiError(
            422,
            "inputs[0].parameters.binary_data_size",
            "length",
            f"shape {shape} of {datatype} needs {need} bytes of binary data, got {len(binary)}",
        )
    arr = np.frombuffer(binary, dtype=dtype).reshape(n, n_features)
    if not _within(arr, rules):
        flat = arr.reshape(-1)
        for i, value in enumerate(flat.tolist()):
            _check_number(value, f"inputs[0].binary_data[{i}]", rules)
    # a copy: aligned (the data starts wherever the JSON part ends), writable, native float32
    return np.array(arr, dtype=np.float32)
