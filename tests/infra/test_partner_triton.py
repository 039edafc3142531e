"""Triton model repository: config.pbtxt from the card (parsed as Triton's ModelConfig), layout, upload."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from components.base import ValidationError
from components.triton_repo import (
    TritonOptions,
    TritonRepository,
    TritonRepositoryArgs,
    config_pbtxt,
    repository_prefix,
    s3_repository_url,
    write_layout,
)
from stagectl.plan import PlanError

LABELS = {"project": "aistack", "stage": "partner"}

#: The card `stagectl model build` writes for the demo model (the fields that matter here).
CARD = {
    "name": "digits-mlp",
    "version": "94dd454b771d",
    "sha256": "94dd454b771d8e94d1c7f0edaa5cc7c1b9ed107038dbc32789352a3d83d85d2a",
    "inputs": [{"name": "float_input", "shape": [-1, 64], "dtype": "float32"}],
    "outputs": [{"name": "label", "shape": [-1], "dtype": "int64"},
                {"name": "probabilities", "shape": [-1, 10], "dtype": "float32"}],
}

EXPECTED = '''\
# Generated from the model card of digits-mlp; do not edit.
# model sha256: 94dd454b771d8e94d1c7f0edaa5cc7c1b9ed107038dbc32789352a3d83d85d2a
name: "digits-mlp"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [
  {
    name: "float_input"
    data_type: TYPE_FP32
    dims: [ 64 ]
  }
]
output [
  {
    name: "label"
    data_type: TYPE_INT64
    dims: [ 1 ]
    reshape: { shape: [ ] }
  },
  {
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [ 10 ]
  }
]
dynamic_batching {
  max_queue_delay_microseconds: 500
}
instance_group [
  {
    count: 1
    kind: KIND_GPU
  }
]
version_policy: { specific: { versions: [ 1 ] } }
'''


def parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_config_from_the_demo_card_is_exact():
    assert config_pbtxt(CARD) == EXPECTED


def test_config_parses_as_triton_model_config():
    config = parse(config_pbtxt(CARD, TritonOptions(max_batch_size=128, preferred_batch_sizes=(16, 32),
                                                    max_queue_delay_us=200, instance_count=2)))
    assert config.name == "digits-mlp" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 128
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("float_input", model_config_pb2.TYPE_FP32, [64])]
    label, probabilities = config.output
    assert (label.name, label.data_type, list(label.dims)) == ("label", model_config_pb2.TYPE_INT64, [1])
    assert label.HasField("reshape") and list(label.reshape.shape) == []
    assert (probabilities.name, list(probabilities.dims)) == ("probabilities", [10])
    assert not probabilities.HasField("reshape")
    assert list(config.dynamic_batching.preferred_batch_size) == [16, 32]
    assert config.dynamic_batching.max_queue_delay_microseconds == 200
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_GPU)]
    assert list(config.version_policy.specific.versions) == [1]


def test_python_backend_variant_for_local_triton():
    config = parse(config_pbtxt(CARD, TritonOptions(backend="python", instance_kind="KIND_CPU")))
    assert config.backend == "python" and config.platform == ""
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


@pytest.mark.parametrize(("card", "message"), [
    ({**CARD, "inputs": [{"name": "x", "shape": [-1, 3], "dtype": "complex64"}]},
     "model card input 'x': dtype 'complex64' has no Triton type; allowed: bool, uint8"),
    ({**CARD, "inputs": [{"name": "x", "shape": [3], "dtype": "float32"}]},
     r"model card input 'x': shape \[3\] must start with the batch dimension -1 when max_batch_size > 0"),
    ({**CARD, "inputs": [{"name": "x", "shape": [-1, 0], "dtype": "float32"}]},
     "must be a list of positive sizes or -1"),
    ({**CARD, "outputs": []}, r"model card has no outputs: it needs a list of \{name, shape, dtype\}"),
    ({**CARD, "inputs": [{"name": "x"}]}, "must have name, shape and dtype"),
    ({**CARD, "name": "a/b"}, "model card name 'a/b' cannot name a Triton model directory"),
])
def test_cards_triton_cannot_serve_are_refused(card, message):
    with pytest.raises(ValidationError, match=message):
        config_pbtxt(card)


@pytest.mark.parametrize(("kw", "message"), [
    ({"max_batch_size": 0}, "max_batch_size 0 is out of range: allowed 1-65536"),
    ({"preferred_batch_sizes": (128,)}, r"preferred batch size 128 must be between 1 and max_batch_size \(64\)"),
    ({"instance_kind": "KIND_TPU"}, "instance kind 'KIND_TPU' is invalid: allowed KIND_GPU, KIND_CPU"),
    ({"backend": "tensorrt"}, "backend 'tensorrt' is invalid: allowed onnxruntime, python"),
])
def test_options_are_validated(kw, message):
    with pytest.raises(ValidationError, match=message):
        TritonOptions(**kw)  # type: ignore[arg-type]


def model_dir_with(tmp_path: Path, payload: bytes = b"onnx bytes") -> tuple[Path, str]:
    sha = hashlib.sha256(payload).hexdigest()
    (tmp_path / "model.onnx").write_bytes(payload)
    (tmp_path / "card.json").write_text(json.dumps({**CARD, "sha256": sha}))
    return tmp_path, sha


def test_write_layout_next_to_the_model(tmp_path):
    directory, sha = model_dir_with(tmp_path)
    root = write_layout(directory)
    assert root == directory / "triton"
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == ["digits-mlp/1/model.onnx", "digits-mlp/config.pbtxt"]
    assert (root / "digits-mlp/1/model.onnx").read_bytes() == b"onnx bytes"
    config = (root / "digits-mlp/config.pbtxt").read_text()
    assert config == config_pbtxt({**CARD, "sha256": sha})
    mtime = (root / "digits-mlp/config.pbtxt").stat().st_mtime_ns
    write_layout(directory)
    assert (root / "digits-mlp/config.pbtxt").stat().st_mtime_ns == mtime, "an up-to-date layout is not rewritten"


def test_write_layout_refuses_a_model_its_card_does_not_describe(tmp_path):
    directory, _ = model_dir_with(tmp_path)
    (directory / "model.onnx").write_bytes(b"other bytes")
    with pytest.raises(ValidationError, match=r"has sha256 .* but its card says"):
        write_layout(directory)
    with pytest.raises(ValidationError, match=r"card\.json does not exist: run `stagectl model build` first"):
        write_layout(tmp_path / "missing")


def test_repository_url_for_yandex_object_storage():
    prefix = repository_prefix("models/", "digits", "ab" * 32)
    assert prefix == f"models/digits/{'ab' * 32}/triton/"
    assert s3_repository_url("bucket-1", prefix) == \
        f"s3://https://storage.yandexcloud.net:443/bucket-1/models/digits/{'ab' * 32}/triton"


def test_repository_objects_as_registered(run_component, tmp_path):
    directory, sha = model_dir_with(tmp_path)
    card = json.loads((directory / "card.json").read_text())
    seen: dict[str, str] = {}

    def program() -> None:
        repo = TritonRepository("tr", TritonRepositoryArgs(bucket="bucket-1", model="digits", model_sha256=sha,
                                                           model_dir=str(directory), card=card), LABELS)
        repo.repository_url.apply(lambda url: seen.setdefault("url", url))

    rec = run_component(program)
    objects = {r.name: r.inputs for r in rec.of_type("StorageObject")}
    assert objects["tr-config"]["key"] == f"models/digits/{sha}/triton/digits-mlp/config.pbtxt"
    assert objects["tr-config"]["content"] == config_pbtxt(card)
    assert objects["tr-model"]["key"] == f"models/digits/{sha}/triton/digits-mlp/1/model.onnx"
    assert objects["tr-model"]["source"] == str(directory / "model.onnx")
    assert objects["tr-model"]["sourceHash"] == sha
    assert seen["url"] == f"s3://https://storage.yandexcloud.net:443/bucket-1/models/digits/{sha}/triton"


def test_card_for_another_model_warns_in_preview_and_fails_on_up(run_component, tmp_path):
    directory, _ = model_dir_with(tmp_path)
    card = json.loads((directory / "card.json").read_text())
    args = TritonRepositoryArgs(bucket="b", model="digits", model_sha256="c" * 64, model_dir=str(directory), card=card)
    rec = run_component(lambda: TritonRepository("tr", args, LABELS))
    assert any("but the stack pins release.modelSha256 " + "c" * 64 in w for w in rec.plan.warnings)
    with pytest.raises(PlanError, match="describes sha256"):
        run_component(lambda: TritonRepository("tr", args, LABELS), preview=False)


def test_missing_card_warns_in_preview_and_fails_on_up(run_component, tmp_path):
    args = TritonRepositoryArgs(bucket="b", model="digits", model_sha256="c" * 64, model_dir=str(tmp_path))
    rec = run_component(lambda: TritonRepository("tr", args, LABELS))
    assert any("card.json does not exist" in w for w in rec.plan.warnings)
    with pytest.raises(PlanError, match=r"card\.json does not exist"):
        run_component(lambda: TritonRepository("tr", args, LABELS), preview=False)
