"""The TensorFlow SavedModel of a model: what TensorFlow Serving (the ``prod`` stage) serves.

The weights come from the ONNX file itself (its initializers), not from scikit-learn, so any dense
feed-forward ONNX model with a card converts, not only the demo: the graph is walked backwards from
the card's probabilities output to its input through the ops a dense MLP uses (``Scaler``,
``Cast``, ``Identity``, ``MatMul``, ``Gemm``, ``Add``/``Sub``/``Mul``/``Div`` with a constant,
``Relu``, ``LeakyRelu``, ``Tanh``, ``Sigmoid``, ``Softmax``); anything else is refused with the op's
name. The label is ``classes[argmax(probabilities)]``, as in the ONNX graph.

TensorFlow pulls protobuf 7.x while the main virtualenv pins protobuf 5.x, so TensorFlow lives in
its own virtualenv, ``.venv-tf`` (``scripts/tf-venv.sh`` creates it). This module runs in both:

* in the main virtualenv (no TensorFlow import): :func:`export_saved_model` extracts the layers
  and weights into an ``.npz`` and runs this same file with ``.venv-tf``'s interpreter;
* under ``.venv-tf`` (``python stagectl/tf_export.py save WEIGHTS.npz OUT_DIR``): builds a
  ``tf.Module`` from the ``.npz``, saves it with a ``serving_default`` signature and runs it once
  more on the check rows, so that the build compares TensorFlow's answers with ONNX Runtime's.

Layout (the one TF Serving expects below ``--model_base_path``)::

    <model dir>/tf/<version>/saved_model.pb
    <model dir>/tf/<version>/variables/variables.{index,data-00000-of-00001}

Signature ``serving_default``: input ``<card input name>`` (``float32 [N, n_features]``), outputs
``<card probabilities name>`` (``float32 [N, n_classes]``) and ``<card label name>``
(``int64 [N]``): the names of the model card, so a TF Serving client needs nothing else.

When run by path under ``.venv-tf`` this file imports only the standard library, NumPy and
TensorFlow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TF_DIR = "tf"
DEFAULT_VERSION = 1
SIGNATURE = "serving_default"
TF_VENV = ROOT / ".venv-tf"
#: The largest difference between TensorFlow's and ONNX Runtime's probabilities the build accepts.
MAX_ABS_DIFF = 1e-5
SETUP_HINT = "run scripts/tf-venv.sh (creates .venv-tf with TensorFlow, about 1.5 minutes), then"

_SUPPORTED_OPS = (
    "Scaler",
    "Cast",
    "Identity",
    "MatMul",
    "Gemm",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Relu",
    "LeakyRelu",
    "Tanh",
    "Sigmoid",
    "Softmax",
)
_FLOAT = 1  # onnx.TensorProto.FLOAT


class TfExportError(Exception):
    """The SavedModel could not be written (unsupported graph, TensorFlow failure, mismatch)."""


class TfUnavailable(TfExportError):
    """``.venv-tf`` (TensorFlow) is not there."""


@dataclass(frozen=True)
class TfExport:
    """What :func:`export_saved_model` wrote."""

    #: ``<out>/tf/<version>``
    path: Path
    version: int
    #: max |TensorFlow - ONNX Runtime| over the check rows' probabilities
    max_abs_diff: float
    check_rows: int
    tensorflow: str


# --- main virtualenv side: ONNX -> layers + weights --------------------------------------------------


def tf_python() -> Path | None:
    """The interpreter of the TensorFlow virtualenv: ``TF_PYTHON`` if set, else ``.venv-tf/bin/python``."""
    override = os.environ.get("TF_PYTHON")
    if override:
        return Path(override)
    candidate = TF_VENV / "bin" / "python"
    return candidate if candidate.exists() else None


def _card_names(card: dict[str, Any]) -> tuple[str, int, str, str, list[int]]:
    """``(input name, n_features, probabilities name, label name, classes)`` from a card dict."""
    try:
        spec = card["inputs"][0]
        input_name, n_features = str(spec["name"]), int(spec["shape"][1])
        outputs = card["outputs"]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise TfExportError(f"the model card lacks inputs[0].name/shape or outputs: {exc}") from None
    probs_name = card.get("probabilities_output")
    if probs_name is None:
        floats = [o for o in outputs if len(o.get("shape", [])) == 2 and o.get("dtype") in ("float32", "float64")]
        if len(floats) != 1:
            raise TfExportError("the model card names no probabilities output (set probabilities_output)")
        probs_name = floats[0]["name"]
    probs = next((o for o in outputs if o.get("name") == probs_name), None)
    if probs is None:
        raise TfExportError(f"probabilities_output {probs_name!r} is not among the card's outputs")
    label_name = next(
        (str(o["name"]) for o in outputs if len(o.get("shape", [])) == 1 and o.get("dtype") in ("int64", "int32")),
        "label",
    )
    n_classes = probs["shape"][1]
    classes = card.get("classes") or (list(range(n_classes)) if isinstance(n_classes, int) and n_classes > 0 else None)
    if classes is None:
        raise TfExportError("the model card gives neither classes nor a fixed number of classes")
    return input_name, n_features, str(probs_name), label_name, [int(c) for c in classes]


def extract_layers(onnx_path: Path, card: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """The chain of operations from the card's input to its probabilities output, and their constants.

    Each layer is ``{"op": ..., ...}`` whose array-valued parameters name entries of the returned
    dict (``"w": "a3"``). Raises :class:`TfExportError` naming the first unsupported op.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    input_name, _, probs_name, _, _ = _card_names(card)
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:  # Constant nodes are constants too
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    constants[node.output[0]] = numpy_helper.to_array(attr.t)
    producers = {out: node for node in graph.node for out in node.output}
    default_opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)

    chain: list[Any] = []
    tensor = probs_name
    while tensor != input_name:
        node = producers.get(tensor)
        if node is None:
            raise TfExportError(f"tensor {tensor!r} is produced by no node and is not the input {input_name!r}")
        if node.op_type == "Constant":
            raise TfExportError(f"the probabilities do not depend on the input {input_name!r}")
        dynamic = [name for name in node.input if name and name not in constants]
        if len(dynamic) != 1:
            raise TfExportError(
                f"node {node.name or node.op_type!r} ({node.op_type}) has {len(dynamic)} non-constant inputs; "
                "only a chain of dense layers converts"
            )
        chain.append(node)
        tensor = dynamic[0]
        if len(chain) > 10_000:
            raise TfExportError("the graph has a cycle")
    chain.reverse()

    arrays: dict[str, np.ndarray] = {}

    def keep(value: np.ndarray, dtype: Any = np.float32) -> str:
        key = f"a{len(arrays)}"
        arrays[key] = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        return key

    layers: list[dict[str, Any]] = []
    for node in chain:
        op = node.op_type
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if op not in _SUPPORTED_OPS or node.domain not in ("", "ai.onnx", "ai.onnx.ml"):
            raise TfExportError(
                f"op {node.domain + '.' if node.domain else ''}{op} (node {node.name!r}) is not supported by the "
                f"TensorFlow export; supported: {', '.join(_SUPPORTED_OPS)}"
            )
        if op == "Scaler":
            offset = np.asarray(attrs.get("offset", [0.0]), dtype=np.float32)
            scale = np.asarray(attrs.get("scale", [1.0]), dtype=np.float32)
            layers.append({"op": "scaler", "offset": keep(offset), "scale": keep(scale)})
        elif op == "Cast":
            if attrs.get("to") != _FLOAT:
                raise TfExportError(f"Cast to ONNX type {attrs.get('to')} on the probabilities path is not supported")
        elif op == "Identity":
            continue
        elif op == "MatMul":
            if node.input[0] in constants:
                raise TfExportError("MatMul with a constant left operand is not supported")
            layers.append({"op": "matmul", "w": keep(constants[node.input[1]])})
        elif op == "Gemm":
            if attrs.get("transA", 0) or node.input[0] in constants:
                raise TfExportError("Gemm with transA or a constant A is not supported")
            w = constants[node.input[1]]
            if attrs.get("transB", 0):
                w = w.T
            layers.append({"op": "matmul", "w": keep(w)})
            if float(attrs.get("alpha", 1.0)) != 1.0:
                layers.append({"op": "mul", "c": keep(np.asarray(attrs["alpha"])), "const_first": False})
            if len(node.input) > 2 and node.input[2]:
                bias = constants[node.input[2]] * np.float32(attrs.get("beta", 1.0))
                layers.append({"op": "add", "c": keep(bias), "const_first": False})
        elif op in ("Add", "Sub", "Mul", "Div"):
            const_first = node.input[0] in constants
            const = constants[node.input[0] if const_first else node.input[1]]
            layers.append({"op": op.lower(), "c": keep(const), "const_first": const_first})
        elif op == "Relu":
            layers.append({"op": "relu"})
        elif op == "LeakyRelu":
            layers.append({"op": "leaky_relu", "alpha": float(attrs.get("alpha", 0.01))})
        elif op == "Tanh":
            layers.append({"op": "tanh"})
        elif op == "Sigmoid":
            layers.append({"op": "sigmoid"})
        elif op == "Softmax":
            axis = int(attrs.get("axis", -1 if default_opset >= 13 else 1))
            if axis not in (1, -1):
                raise TfExportError(f"Softmax over axis {axis} is not supported (expected the class axis)")
            layers.append({"op": "softmax"})
    return layers, arrays


def write_weights(
    path: Path, onnx_path: Path, card: dict[str, Any], version: int, check_x: np.ndarray | None = None
) -> None:
    """The ``.npz`` the TensorFlow side reads: layers (JSON), constants, classes, check rows."""
    layers, arrays = extract_layers(onnx_path, card)
    input_name, n_features, probs_name, label_name, classes = _card_names(card)
    spec = {
        "name": card.get("name", "model"),
        "input": input_name,
        "n_features": n_features,
        "probabilities": probs_name,
        "label": label_name,
        "version": version,
        "layers": layers,
    }
    payload: dict[str, Any] = {
        **arrays,
        "__spec__": np.array(json.dumps(spec)),
        "__classes__": np.asarray(classes, dtype=np.int64),
    }
    if check_x is not None:
        payload["__check_x__"] = np.asarray(check_x, dtype=np.float32)
    np.savez(path, **payload)


def _onnx_reference(onnx_path: Path, input_name: str, probs_name: str, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run([probs_name], {input_name: x})[0], dtype=np.float32)


def export_saved_model(
    model_dir: Path,
    *,
    out_dir: Path | None = None,
    version: int = DEFAULT_VERSION,
    check_x: np.ndarray | None = None,
    python: Path | None = None,
    timeout: float = 600.0,
) -> TfExport:
    """Write ``<out_dir>/<version>/`` (default ``<model_dir>/tf/<version>/``) from ``model_dir``'s
    ``model.onnx`` + ``card.json`` and check it against ONNX Runtime on ``check_x`` (default: 256
    rows drawn uniformly from the card's input range).

    Raises :class:`TfUnavailable` when there is no ``.venv-tf`` and :class:`TfExportError` when the
    graph does not convert, TensorFlow fails, or TensorFlow's probabilities differ from ONNX
    Runtime's by more than :data:`MAX_ABS_DIFF`. An existing version directory is replaced only
    once the new one passed that check.
    """
    model_dir = Path(model_dir)
    if version < 1:
        raise TfExportError(f"TF Serving versions are positive integers, got {version}")
    interpreter = python or tf_python()
    if interpreter is None or not Path(interpreter).exists():
        missing = f"TF_PYTHON={interpreter} does not exist" if interpreter else f"{TF_VENV} is missing"
        raise TfUnavailable(
            f"no TensorFlow virtualenv ({missing}): {SETUP_HINT} `stagectl model export-tf --model-dir {model_dir}`"
        )
    onnx_path = model_dir / "model.onnx"
    try:
        card = json.loads((model_dir / "card.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TfExportError(f"cannot read the model card in {model_dir}: {exc}") from None
    input_name, n_features, probs_name, _, _ = _card_names(card)
    if check_x is None:
        low, high = (card["inputs"][0].get("range") or [-1.0, 1.0])[:2]
        check_x = np.random.default_rng(0).uniform(low, high, size=(256, n_features)).astype(np.float32)
    check_x = np.asarray(check_x, dtype=np.float32)

    base = Path(out_dir) if out_dir is not None else model_dir / TF_DIR
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tf-export-", dir=base) as tmp:
        work = Path(tmp)
        weights, staged, result = work / "weights.npz", work / "saved", work / "check.npz"
        write_weights(weights, onnx_path, card, version, check_x)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
        env.pop("PYTHONPATH", None)  # .venv-tf must not see the main virtualenv's packages
        try:
            proc = subprocess.run(
                [str(interpreter), str(Path(__file__).resolve()), "save", str(weights), str(staged), str(result)],
                capture_output=True,
                text=True,
                timeout=timeout,
                env=env,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TfExportError(f"running {interpreter} failed: {exc}") from None
        if proc.returncode != 0:
            raise TfExportError(f"TensorFlow export failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        with np.load(result) as data:
            tf_probs = np.asarray(data["probabilities"], dtype=np.float32)
            tf_version = str(data["tensorflow"])
        expected = _onnx_reference(onnx_path, input_name, probs_name, check_x)
        if tf_probs.shape != expected.shape:
            raise TfExportError(f"TensorFlow's probabilities have shape {tf_probs.shape}, ONNX's {expected.shape}")
        diff = float(np.max(np.abs(tf_probs - expected))) if expected.size else 0.0
        if not diff <= MAX_ABS_DIFF:
            raise TfExportError(f"TensorFlow and ONNX Runtime disagree by {diff:.3g} (> {MAX_ABS_DIFF})")
        target = base / str(version)
        if target.exists():
            shutil.rmtree(target)
        staged.replace(target)
    return TfExport(target, version, diff, len(check_x), tf_version)


# --- stagectl model build / export-tf ---------------------------------------------------------------


def write_tf_artifact(model_dir: Path, check_x: np.ndarray | None = None, version: int = DEFAULT_VERSION) -> int:
    """The TF step of ``stagectl model build``: write ``<model_dir>/tf/<version>/`` and say so on
    stderr, or say plainly that it was skipped (no ``.venv-tf``) and how to get it. Returns an exit
    code: 0 written or skipped, 1 when the export failed."""
    try:
        result = export_saved_model(Path(model_dir), version=version, check_x=check_x)
    except TfUnavailable as exc:
        print(f"TF SavedModel skipped: {exc}", file=sys.stderr)
        return 0
    except TfExportError as exc:
        print(f"TF SavedModel not written: {exc}", file=sys.stderr)
        return 1
    print(
        f"wrote {result.path} (TensorFlow {result.tensorflow} SavedModel, signature {SIGNATURE}; "
        f"max |TF - ONNX Runtime| = {result.max_abs_diff:.3g} on {result.check_rows} rows)",
        file=sys.stderr,
    )
    return 0


def _cmd_export(args: Any) -> int:
    model_dir = Path(args.model_dir)
    if not (model_dir / "model.onnx").is_file() or not (model_dir / "card.json").is_file():
        print(
            f"stagectl model export-tf: {model_dir} has no model.onnx + card.json; run `stagectl model build`",
            file=sys.stderr,
        )
        return 2
    try:
        result = export_saved_model(model_dir, version=args.version)
    except TfUnavailable as exc:
        print(f"stagectl model export-tf: {exc}", file=sys.stderr)
        return 2
    except TfExportError as exc:
        print(f"stagectl model export-tf: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {result.path} (max |TF - ONNX Runtime| = {result.max_abs_diff:.3g} on {result.check_rows} rows)")
    return 0


def add_command(actions: Any) -> None:
    """Register ``stagectl model export-tf [--model-dir DIR] [--version N]``."""
    export = actions.add_parser(
        "export-tf",
        help="write the TensorFlow SavedModel (TF Serving layout) of a built model",
        description="Convert DIR/model.onnx (a dense MLP described by DIR/card.json) into a TensorFlow "
        "SavedModel at DIR/tf/<version>/ with TensorFlow from .venv-tf (scripts/tf-venv.sh), and check it "
        f"against ONNX Runtime (max abs difference <= {MAX_ABS_DIFF}).",
    )
    export.add_argument("--model-dir", default="models/digits", metavar="DIR", help="default: models/digits")
    export.add_argument("--version", type=int, default=DEFAULT_VERSION, help="TF Serving version directory (default 1)")
    export.set_defaults(func=_cmd_export)


# --- .venv-tf side: layers + weights -> SavedModel -----------------------------------------------------


def _tensorflow() -> Any:  # pragma: no cover - runs under .venv-tf
    import tensorflow  # type: ignore[import-untyped]  # only in .venv-tf

    return tensorflow


def _build_module(data: Any) -> tuple[Any, dict[str, Any]]:  # pragma: no cover - runs under .venv-tf
    tf = _tensorflow()
    spec = json.loads(str(data["__spec__"]))
    module = tf.Module(name="dense_model")
    module.params = {
        key: tf.Variable(data[key], trainable=False, name=key) for key in data.files if not key.startswith("__")
    }
    module.classes = tf.Variable(data["__classes__"], trainable=False, name="classes")
    layers = spec["layers"]

    def forward(x: Any) -> dict[str, Any]:
        h = x
        for layer in layers:
            op = layer["op"]
            if op == "scaler":
                h = (h - module.params[layer["offset"]]) * module.params[layer["scale"]]
            elif op == "matmul":
                h = tf.linalg.matmul(h, module.params[layer["w"]])
            elif op in ("add", "sub", "mul", "div"):
                c = module.params[layer["c"]]
                a, b = (c, h) if layer["const_first"] else (h, c)
                h = {"add": tf.add, "sub": tf.subtract, "mul": tf.multiply, "div": tf.divide}[op](a, b)
            elif op == "relu":
                h = tf.nn.relu(h)
            elif op == "leaky_relu":
                h = tf.nn.leaky_relu(h, alpha=layer["alpha"])
            elif op == "tanh":
                h = tf.math.tanh(h)
            elif op == "sigmoid":
                h = tf.math.sigmoid(h)
            elif op == "softmax":
                h = tf.nn.softmax(h, axis=-1)
            else:
                raise ValueError(f"unknown layer op {op!r}")
        probabilities = tf.cast(h, tf.float32)
        label = tf.gather(module.classes, tf.math.argmax(probabilities, axis=1, output_type=tf.int64))
        return {spec["probabilities"]: tf.identity(probabilities), spec["label"]: tf.cast(label, tf.int64)}

    module.serve = tf.function(
        forward, input_signature=[tf.TensorSpec([None, spec["n_features"]], tf.float32, name=spec["input"])]
    )
    return module, spec


def _tf_save(weights: str, out: str, result: str) -> int:  # pragma: no cover - runs under .venv-tf
    tf = _tensorflow()

    with np.load(weights) as data:
        module, spec = _build_module(data)
        check_x = np.asarray(data["__check_x__"], dtype=np.float32) if "__check_x__" in data.files else None
    tf.saved_model.save(module, out, signatures={SIGNATURE: module.serve.get_concrete_function()})
    # Reload what was written (not the in-memory module) for the check.
    loaded = tf.saved_model.load(out)
    serve = loaded.signatures[SIGNATURE]
    x = check_x if check_x is not None else np.zeros((1, spec["n_features"]), dtype=np.float32)
    outputs = serve(**{spec["input"]: tf.constant(x)})
    np.savez(
        result,
        probabilities=outputs[spec["probabilities"]].numpy(),
        label=outputs[spec["label"]].numpy(),
        tensorflow=np.array(tf.__version__),
    )
    return 0


def _main(argv: Sequence[str]) -> int:  # pragma: no cover - runs under .venv-tf
    if len(argv) == 4 and argv[0] == "save":
        return _tf_save(argv[1], argv[2], argv[3])
    print("usage (under .venv-tf): python stagectl/tf_export.py save WEIGHTS.npz OUT_DIR RESULT.npz", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main(sys.argv[1:]))
