"""``stagectl model build``: deterministic training, ONNX export without ZipMap, the model card."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from stagectl import model as model_cmd


def test_card_describes_the_exported_model(demo_model: Path) -> None:
    card = json.loads((demo_model / "card.json").read_text())
    data = (demo_model / "model.onnx").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    assert card["sha256"] == sha
    assert card["version"] == sha[:12]
    assert card["name"] == "digits-mlp"
    assert card["inputs"] == [{"name": "float_input", "shape": [-1, 64], "dtype": "float32", "range": [0.0, 16.0]}]
    assert {"name": "probabilities", "shape": [-1, 10], "dtype": "float32"} in card["outputs"]
    assert card["probabilities_output"] == "probabilities"
    assert card["classes"] == list(range(10))
    assert 0.9 <= card["accuracy"] <= 1.0
    assert card["evaluation"]["test_samples"] + card["evaluation"]["train_samples"] == 1797
    assert card["size_bytes"] == len(data)


def test_onnx_graph_has_no_zipmap_and_plain_outputs(demo_model: Path) -> None:
    graph = onnx.load(str(demo_model / "model.onnx")).graph
    assert "ZipMap" not in {node.op_type for node in graph.node}
    outputs = {o.name: o.type for o in graph.output}
    assert set(outputs) == {"label", "probabilities"}
    assert outputs["probabilities"].tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_card_accuracy_is_the_onnx_models_held_out_accuracy(demo_model: Path, digits: tuple) -> None:
    x_test, y_test = digits
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(demo_model / "model.onnx"), options, providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(["probabilities"], {"float_input": x_test})
    accuracy = float((probabilities.argmax(axis=1) == y_test).mean())
    card = json.loads((demo_model / "card.json").read_text())
    assert accuracy == pytest.approx(card["accuracy"], abs=1e-4)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_cli_build_is_deterministic_and_prints_the_card(
    demo_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="stagectl")
    model_cmd.add_commands(parser.add_subparsers(dest="command"))
    out = tmp_path / "again"
    args = parser.parse_args(["model", "build", "--out", str(out)])
    assert args.func(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "card.json").read_text())
    # same data, same seed, same libraries: byte-identical model
    assert (out / "model.onnx").read_bytes() == (demo_model / "model.onnx").read_bytes()
    assert printed["sha256"] == json.loads((demo_model / "card.json").read_text())["sha256"]


def test_cli_defaults_to_models_digits_relative_to_cwd() -> None:
    parser = argparse.ArgumentParser(prog="stagectl")
    model_cmd.add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["model", "build"])
    assert Path(args.out) == Path("models/digits")
    bare = parser.parse_args(["model"])
    assert bare.func(bare) == 2  # no action: usage, not a crash


def test_held_out_sample_is_a_real_digit(digits: tuple) -> None:
    x_test, y_test = digits
    pixels, label = model_cmd.held_out_sample(3)
    assert pixels == [float(v) for v in x_test[3]]
    assert label == int(y_test[3])
    assert len(pixels) == 64 and all(0.0 <= v <= 16.0 for v in pixels)
