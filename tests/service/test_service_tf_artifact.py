"""The TensorFlow SavedModel: written by ``stagectl model build``, equal to ONNX Runtime's answers.

TensorFlow runs in its own virtualenv (``.venv-tf``, ``scripts/tf-venv.sh``): these tests load the
SavedModel there through a subprocess. Without ``.venv-tf`` they fail and say how to create it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from stagectl import model as model_cmd
from stagectl.tf_export import MAX_ABS_DIFF, TfExportError, export_saved_model, extract_layers
from tests.service.tfserving_fake import built_model_with_tf, require_tf_python

ROOT = Path(__file__).resolve().parents[2]

_LOAD_AND_RUN = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf

    path, data, out = sys.argv[1:4]
    loaded = tf.saved_model.load(path)
    serve = loaded.signatures["serving_default"]
    _, inputs = serve.structured_input_signature
    outputs = serve.structured_outputs
    x = np.load(data)["x"]
    result = serve(**{name: tf.constant(x) for name in inputs})
    np.savez(out, **{name: value.numpy() for name, value in result.items()})
    print(json.dumps({
        "inputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in inputs.items()},
        "outputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in outputs.items()},
    }))
    """
)


def _run_saved_model(saved_model: Path, x: np.ndarray, tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load the SavedModel with TensorFlow (in .venv-tf) and run its serving signature on ``x``."""
    python = require_tf_python()
    script, data, out = tmp_path / "run.py", tmp_path / "x.npz", tmp_path / "out.npz"
    script.write_text(_LOAD_AND_RUN)
    np.savez(data, x=x)
    proc = subprocess.run(
        [str(python), str(script), str(saved_model), str(data), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    signature = json.loads(proc.stdout.strip().splitlines()[-1])
    with np.load(out) as result:
        return signature, {k: result[k] for k in result.files}


def _onnx_run(model: Path | bytes, x: np.ndarray, outputs: list[str], input_name: str = "float_input") -> list:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    source = str(model) if isinstance(model, Path) else model
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return session.run(outputs, {input_name: x})


@pytest.mark.slow
def test_saved_model_equals_onnx_runtime_on_the_held_out_set(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, digits: tuple
) -> None:
    built = built_model_with_tf(tmp_path_factory)
    saved_model = built / "tf" / "1"
    # TF Serving's layout: an integer version directory holding saved_model.pb and variables/
    assert (saved_model / "saved_model.pb").is_file()
    assert (saved_model / "variables" / "variables.index").is_file()
    assert sorted(p.name for p in (built / "tf").iterdir()) == ["1"]

    x_test, y_test = digits
    signature, tf_out = _run_saved_model(saved_model, x_test, tmp_path)
    assert signature == {
        "inputs": {"float_input": ["float32", [None, 64]]},
        "outputs": {"probabilities": ["float32", [None, 10]], "label": ["int64", [None]]},
    }
    labels, probabilities = _onnx_run(built / "model.onnx", x_test, ["label", "probabilities"])
    diff = float(np.max(np.abs(tf_out["probabilities"] - probabilities)))
    print(f"max |TensorFlow - ONNX Runtime| on {len(x_test)} held-out rows: {diff:.3g}")
    assert tf_out["probabilities"].shape == (len(x_test), 10)
    assert diff <= MAX_ABS_DIFF
    assert np.array_equal(tf_out["label"], labels)
    assert float((tf_out["label"] == y_test).mean()) == pytest.approx(
        json.loads((built / "card.json").read_text())["accuracy"], abs=1e-4
    )


def test_the_released_saved_model_answers_as_the_released_onnx_model(tmp_path: Path) -> None:
    """models/<name>/tf/ is committed with the release (prod uploads it as it is): it must be the
    conversion of the committed model.onnx, which the golden rows check against ONNX Runtime."""
    release = ROOT / "models" / "digits"
    golden = json.loads((release / "golden.json").read_text())
    x = np.asarray(golden["instances"], dtype=np.float32)
    _, tf_out = _run_saved_model(release / "tf" / "1", x, tmp_path)
    labels, probabilities = _onnx_run(release / "model.onnx", x, ["label", "probabilities"])
    assert float(np.max(np.abs(tf_out["probabilities"] - probabilities))) <= MAX_ABS_DIFF
    assert np.array_equal(tf_out["label"], labels)
    assert tf_out["label"].tolist() == golden["labels"]


def test_build_without_the_tf_virtualenv_writes_onnx_and_says_the_tf_artifact_was_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TF_PYTHON", str(tmp_path / "no-venv-tf" / "bin" / "python"))
    parser = argparse.ArgumentParser(prog="stagectl")
    model_cmd.add_commands(parser.add_subparsers(dest="command"))
    # no release to compare with: this is about the TF step, not about reproducing the release's bytes
    (tmp_path / "no-release").mkdir()
    args = parser.parse_args(
        ["model", "build", "--out", str(tmp_path / "m"), "--release", str(tmp_path / "no-release")])
    assert args.func(args) == 0
    err = capsys.readouterr().err
    assert (tmp_path / "m" / "model.onnx").is_file() and (tmp_path / "m" / "card.json").is_file()
    assert not (tmp_path / "m" / "tf" / "1").exists()
    assert "TF SavedModel skipped" in err
    assert "scripts/tf-venv.sh" in err and "stagectl model export-tf" in err


def _card(n_in: int, n_out: int) -> dict[str, Any]:
    return {
        "name": "gemm-mlp",
        "sha256": "0" * 64,
        "inputs": [{"name": "x", "shape": [-1, n_in], "dtype": "float32", "range": [-3.0, 3.0]}],
        "outputs": [
            {"name": "label", "shape": [-1], "dtype": "int64"},
            {"name": "probs", "shape": [-1, n_out], "dtype": "float32"},
        ],
        "probabilities_output": "probs",
        "classes": [10 + i for i in range(n_out)],
    }


def _gemm_mlp(tmp_path: Path, extra_op: str | None = None) -> Path:
    """A dense MLP written with ONNX ops skl2onnx does not use (Gemm with transB, Tanh, Sub)."""
    rng = np.random.default_rng(7)
    w1, b1 = rng.normal(size=(16, 8)).astype(np.float32), rng.normal(size=16).astype(np.float32)
    w2, b2 = rng.normal(size=(16, 5)).astype(np.float32), rng.normal(size=5).astype(np.float32)
    mean = rng.normal(size=8).astype(np.float32)
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["centred"]),
        helper.make_node("Gemm", ["centred", "w1", "b1"], ["h1"], transB=1),
        helper.make_node(extra_op or "Tanh", ["h1"], ["a1"]),
        helper.make_node("Gemm", ["a1", "w2", "b2"], ["logits"], alpha=0.5),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "gemm-mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, 5])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"), (mean, "mean"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    out = tmp_path / "gemm"
    out.mkdir()
    (out / "model.onnx").write_bytes(model.SerializeToString())
    (out / "card.json").write_text(json.dumps(_card(8, 5)))
    return out


def test_an_unsupported_op_is_refused_by_name(tmp_path: Path) -> None:
    model_dir = _gemm_mlp(tmp_path, extra_op="Exp")
    with pytest.raises(TfExportError, match=r"op Exp .*not supported"):
        extract_layers(model_dir / "model.onnx", _card(8, 5))


@pytest.mark.slow
def test_any_dense_onnx_mlp_with_a_card_converts(tmp_path: Path) -> None:
    """Weights come from the ONNX initializers, not from scikit-learn: a hand-written Gemm MLP works."""
    model_dir = _gemm_mlp(tmp_path)
    x = np.random.default_rng(1).uniform(-3, 3, size=(200, 8)).astype(np.float32)
    result = export_saved_model(model_dir, check_x=x)
    assert result.path == model_dir / "tf" / "1" and result.max_abs_diff <= MAX_ABS_DIFF
    _, tf_out = _run_saved_model(result.path, x, tmp_path)
    (probs,) = _onnx_run(model_dir / "model.onnx", x, ["probs"], input_name="x")
    assert np.max(np.abs(tf_out["probs"] - probs)) <= MAX_ABS_DIFF
    assert np.array_equal(tf_out["label"], 10 + probs.argmax(axis=1))  # the card's classes
