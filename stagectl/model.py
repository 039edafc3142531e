"""``stagectl model build``: the demo model the inference service ships with.

Trains a small, deterministic classifier (standard scaler + MLP) on scikit-learn's bundled digits
data set (8x8 images flattened to 64 floats, 10 classes; nothing is downloaded), exports it to ONNX
with skl2onnx (no ZipMap, so the probabilities come out as a plain ``float32 [N, 10]`` tensor) and
writes a model card beside it. The service needs only ONNX Runtime and the card at run time.

The card is the contract between a model and the service (see ``service/README.md``)::

    {
      "name": "digits-mlp",
      "version": "<first 12 hex chars of sha256>",
      "sha256": "<sha256 of model.onnx>",
      "format": "onnx",
      "inputs":  [{"name": "float_input", "shape": [-1, 64], "dtype": "float32", "range": [0.0, 16.0]}],
      "outputs": [{"name": "label", "shape": [-1], "dtype": "int64"},
                  {"name": "probabilities", "shape": [-1, 10], "dtype": "float32"}],
      "probabilities_output": "probabilities",
      "classes": [0, 1, ..., 9],
      "accuracy": 0.97,
      ...
    }
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

MODEL_NAME = "digits-mlp"
MODEL_FILE = "model.onnx"
CARD_FILE = "card.json"
DEFAULT_OUT = Path("models") / "digits"
INPUT_NAME = "float_input"
SEED = 0
TEST_SIZE = 0.25
# Opsets old enough for every ONNX Runtime the service accepts (service/requirements.txt).
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The deterministic train/held-out split: ``(x_train, x_test, y_train, y_test)``, float32 inputs."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = np.asarray(data.data, dtype=np.float32)
    y = np.asarray(data.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=TEST_SIZE, random_state=SEED, stratify=y)
    return x_train, x_test, y_train, y_test


def held_out_sample(index: int = 0) -> tuple[list[float], int]:
    """One real digit from the held-out split (64 pixel intensities) and its true label."""
    _, x_test, _, y_test = digits_split()
    return [float(v) for v in x_test[index]], int(y_test[index])


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _train() -> tuple[Any, float, int, int]:
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, x_test, y_train, y_test = digits_split()
    clf = MLPClassifier(
        hidden_layer_sizes=(64,),
        max_iter=400,
        random_state=SEED,
        tol=1e-5,
        n_iter_no_change=20,
    )
    pipeline = make_pipeline(StandardScaler(), clf)
    pipeline.fit(x_train, y_train)
    accuracy = float((pipeline.predict(x_test) == y_test).mean())
    return pipeline, accuracy, len(x_train), len(x_test)


def _export(pipeline: Any, path: Path) -> None:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(
        pipeline,
        name=MODEL_NAME,
        initial_types=[(INPUT_NAME, FloatTensorType([None, 64]))],
        options={id(pipeline.steps[-1][1]): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    path.write_bytes(onx.SerializeToString())


def _check_onnx(path: Path, pipeline: Any) -> None:
    """The exported graph must agree with scikit-learn on the held-out split."""
    import onnxruntime as ort

    _, x_test, _, _ = digits_split()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    labels, probabilities = session.run(["label", "probabilities"], {INPUT_NAME: x_test})
    expected = pipeline.predict_proba(x_test)
    if not np.array_equal(labels, pipeline.predict(x_test)) or not np.allclose(probabilities, expected, atol=1e-4):
        raise RuntimeError(f"ONNX export of {MODEL_NAME} disagrees with scikit-learn")


def build_demo_model(out_dir: Path) -> dict[str, Any]:
    """Train, export and describe the demo model; writes ``model.onnx`` and ``card.json``; returns the card."""
    import onnx
    import onnxruntime
    import skl2onnx
    import sklearn

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipeline, accuracy, n_train, n_test = _train()
    model_path = out_dir / MODEL_FILE
    tmp_path = out_dir / (MODEL_FILE + ".tmp")
    _export(pipeline, tmp_path)
    _check_onnx(tmp_path, pipeline)
    tmp_path.replace(model_path)
    sha256 = sha256_file(model_path)
    classes = [int(c) for c in pipeline.classes_]
    card: dict[str, Any] = {
        "name": MODEL_NAME,
        "version": sha256[:12],
        "sha256": sha256,
        "format": "onnx",
        "description": "StandardScaler + MLP(64) on scikit-learn's digits (8x8 grey levels 0..16, flattened)",
        "inputs": [{"name": INPUT_NAME, "shape": [-1, 64], "dtype": "float32", "range": [0.0, 16.0]}],
        "outputs": [
            {"name": "label", "shape": [-1], "dtype": "int64"},
            {"name": "probabilities", "shape": [-1, len(classes)], "dtype": "float32"},
        ],
        "probabilities_output": "probabilities",
        "classes": classes,
        "accuracy": round(accuracy, 4),
        "evaluation": {
            "dataset": "sklearn.datasets.load_digits",
            "split": f"stratified hold-out, test_size={TEST_SIZE}, random_state={SEED}",
            "train_samples": n_train,
            "test_samples": n_test,
        },
        "size_bytes": model_path.stat().st_size,
        "built_with": {
            "scikit-learn": sklearn.__version__,
            "skl2onnx": skl2onnx.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "opset": TARGET_OPSET[""],
        },
    }
    card_tmp = out_dir / (CARD_FILE + ".tmp")
    card_tmp.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    card_tmp.replace(out_dir / CARD_FILE)
    write_golden(out_dir, card)
    from components.triton_repo import write_layout

    write_layout(out_dir)  # the Triton model repository (partner) next to the ONNX file
    return card


GOLDEN_FILE = "golden.json"
GOLDEN_ROWS = 8


def write_golden(out_dir: Path, card: dict[str, Any]) -> Path:
    """The promotion smoke test's input: held-out rows and the labels this very model gives them."""
    import onnxruntime

    _, x_test, _, _ = digits_split()
    rows = x_test[:GOLDEN_ROWS]
    session = onnxruntime.InferenceSession(str(out_dir / MODEL_FILE), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run([card["probabilities_output"]], {card["inputs"][0]["name"]: rows})
    golden = {"model_sha256": card["sha256"], "instances": rows.tolist(),
              "labels": [int(i) for i in np.argmax(probabilities, axis=1)]}
    path = out_dir / GOLDEN_FILE
    path.write_text(json.dumps(golden) + "\n", encoding="utf-8")
    return path


def _cmd_build(args: argparse.Namespace) -> int:
    try:
        card = build_demo_model(Path(args.out))
    except ImportError as exc:
        print(
            f"stagectl model build: {exc.name or exc} is not installed; "
            "install the model extra: pip install -e '.[model]'",
            file=sys.stderr,
        )
        return 2
    print(json.dumps(card, indent=2))
    print(f"wrote {Path(args.out) / MODEL_FILE}, {CARD_FILE}, {GOLDEN_FILE} and the Triton layout", file=sys.stderr)
    if getattr(args, "no_tf", False):
        return 0
    from stagectl.tf_export import write_tf_artifact

    # the TensorFlow SavedModel for TF Serving (prod), checked against ONNX Runtime on the held-out split
    return write_tf_artifact(Path(args.out), check_x=digits_split()[1])


def _cmd_usage(parser: argparse.ArgumentParser) -> Any:
    def handler(_args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return handler


def add_commands(subparsers: Any) -> None:
    """Register ``stagectl model build [--out DIR]`` on the top-level ``stagectl`` sub-parsers."""
    model = subparsers.add_parser("model", help="build the demo model and its card")
    model.set_defaults(func=_cmd_usage(model))
    actions = model.add_subparsers(dest="model_action", metavar="ACTION")
    build = actions.add_parser(
        "build",
        help="train the digits demo model, export ONNX and write its card",
        description="Train the deterministic digits demo model (scikit-learn), export it to ONNX "
        "without ZipMap and write model.onnx + card.json into DIR.",
    )
    build.add_argument(
        "--out",
        default=str(DEFAULT_OUT),
        metavar="DIR",
        help=f"output directory (default: {DEFAULT_OUT}, relative to the current directory)",
    )
    build.add_argument("--no-tf", action="store_true", help="do not write the TensorFlow SavedModel (tf/<version>/)")
    build.set_defaults(func=_cmd_build)
    from stagectl import model_publish, tf_export

    tf_export.add_command(actions)
    model_publish.add_command(actions)
