"""The released demo model and ``stagectl model build``: the release is the pinned file, a rebuild in
the locked environment reproduces it bit for bit, ONNX export without ZipMap, the model card."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import numpy_helper

from stagectl import model as model_cmd

ROOT = Path(__file__).resolve().parents[2]
STACKS = ("mvp", "partner", "prod")


def _pinned_sha(stack: str) -> str:
    config = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
    return str(config["aistack:release"]["modelSha256"])


@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_pins_the_released_model(stack: str) -> None:
    release = ROOT / model_cmd.RELEASE_DIR
    sha = hashlib.sha256((release / "model.onnx").read_bytes()).hexdigest()
    card = json.loads((release / "card.json").read_text())
    golden = json.loads((release / "golden.json").read_text())
    assert _pinned_sha(stack) == sha == card["sha256"] == golden["model_sha256"], stack


def test_a_rebuild_in_the_locked_environment_reproduces_the_release(rebuilt_model: Path) -> None:
    """Same data, seeds, library versions (requirements/dev.txt) and BLAS kernels: the same bytes."""
    rebuilt = hashlib.sha256((rebuilt_model / "model.onnx").read_bytes()).hexdigest()
    card = json.loads((rebuilt_model / "card.json").read_text())
    assert rebuilt == _pinned_sha("mvp"), (
        f"the model built from the locked environment has sha256 {rebuilt}, the stacks pin {_pinned_sha('mvp')} "
        f"(built with {card['built_with']})")
    for name in ("card.json", "golden.json"):
        assert (rebuilt_model / name).read_bytes() == (ROOT / model_cmd.RELEASE_DIR / name).read_bytes(), name


def test_training_runs_on_pinned_blas_kernels_in_one_thread() -> None:
    env = model_cmd.training_environment()
    assert env["OPENBLAS_NUM_THREADS"] == env["OMP_NUM_THREADS"] == "1"
    if model_cmd._cpu_has_avx2():
        assert env["OPENBLAS_CORETYPE"] == "Haswell"
    card = json.loads((ROOT / model_cmd.RELEASE_DIR / "card.json").read_text())
    assert card["built_with"]["blas"] == "openblas Haswell, 1 thread"


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stagectl")
    model_cmd.add_commands(parser.add_subparsers(dest="command"))
    return parser


def test_cli_build_verifies_the_release_and_prints_the_card(
    demo_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "again"
    args = _parser().parse_args(["model", "build", "--out", str(out), "--release", str(demo_model)])
    assert args.func(args) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed == json.loads((out / "card.json").read_text())
    assert (out / "model.onnx").read_bytes() == (demo_model / "model.onnx").read_bytes()
    assert f"reproduces the release {demo_model / 'model.onnx'} bit for bit (sha256 {printed['sha256']})" \
        in captured.err


def test_cli_build_says_how_a_rebuild_differs_and_fails(
    demo_model: Path, rebuilt_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A release whose weights differ in the last bits (what another BLAS kernel gives): exit 1, and
    the message gives both sha256s and how far the answers are apart."""
    release = tmp_path / "release"
    shutil.copytree(demo_model, release)
    graph = onnx.load(str(release / "model.onnx"))
    weights = next(t for t in graph.graph.initializer if t.dims and len(t.dims) == 2)
    values = numpy_helper.to_array(weights).copy()
    values.flat[0] = np.nextafter(values.flat[0], np.float32(np.inf))
    weights.CopyFrom(numpy_helper.from_array(values, weights.name))
    onnx.save(graph, str(release / "model.onnx"))
    sha = hashlib.sha256((release / "model.onnx").read_bytes()).hexdigest()
    args = _parser().parse_args(["model", "build", "--no-tf", "--out", str(tmp_path / "out"),
                                 "--release", str(release)])
    assert args.func(args) == 1
    err = capsys.readouterr().err
    assert f"sha256 {sha} (released) vs {json.loads((rebuilt_model / 'card.json').read_text())['sha256']} (rebuilt)" \
        in err
    assert "8/8 labels agree" in err and "the same libraries and kernels (another CPU or platform)" in err


def test_cli_build_into_the_release_directory_makes_a_new_release(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    release = tmp_path / "models" / "digits"
    args = _parser().parse_args(["model", "build", "--no-tf", "--out", str(release), "--release", str(release)])
    assert args.func(args) == 0
    sha = json.loads((release / "card.json").read_text())["sha256"]
    assert f"new release in {release}: pin release.modelSha256: {sha}" in capsys.readouterr().err


def test_cli_defaults_build_apart_from_the_release() -> None:
    args = _parser().parse_args(["model", "build"])
    assert Path(args.out) == Path("build/models/digits") and Path(args.release) == Path("models/digits")
    bare = _parser().parse_args(["model"])
    assert bare.func(bare) == 2  # no action: usage, not a crash


def test_build_without_the_model_toolchain_names_what_to_install(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    stub = tmp_path / "stub"
    (stub / "sklearn").mkdir(parents=True)
    (stub / "sklearn" / "__init__.py").write_text("raise ImportError('no scikit-learn here', name='sklearn')\n")
    monkeypatch.setenv("PYTHONPATH", str(stub))
    with pytest.raises(model_cmd.ModelBuildError, match="sklearn is not installed: the model build needs the model"):
        model_cmd.build_demo_model(tmp_path / "out")


def test_held_out_sample_is_a_real_digit(digits: tuple) -> None:
    x_test, y_test = digits
    pixels, label = model_cmd.held_out_sample(3)
    assert pixels == [float(v) for v in x_test[3]]
    assert label == int(y_test[3])
    assert len(pixels) == 64 and all(0.0 <= v <= 16.0 for v in pixels)
