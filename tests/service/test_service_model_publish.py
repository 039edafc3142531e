"""``stagectl model publish`` against a real S3 server (moto): ONNX + card, Triton layout, TF SavedModel."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from components.triton_repo import write_layout
from stagectl import model as model_cmd
from tests.service.helpers import MotoS3
from tests.service.tfserving_fake import built_model_with_tf


def _publish(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # only what publish prints
    parser = argparse.ArgumentParser(prog="stagectl")
    model_cmd.add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["model", "publish", *argv])
    code = args.func(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def _keys(moto: MotoS3, bucket: str) -> dict[str, bytes]:
    s3 = moto.client()
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            found[obj["Key"]] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return found


@pytest.fixture
def s3_env(moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> MotoS3:
    for key, value in moto_s3.env().items():
        monkeypatch.setenv(key, value)
    return moto_s3


@pytest.mark.slow
def test_publish_uploads_model_card_triton_layout_and_saved_model_under_the_sha256_prefix(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, s3_env: MotoS3, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = tmp_path / "digits"
    shutil.copytree(built_model_with_tf(tmp_path_factory), model_dir)
    write_layout(model_dir)  # components.triton_repo: <model dir>/triton/<model>/{config.pbtxt,1/model.onnx}
    s3_env.create_bucket("stage-models")
    sha = json.loads((model_dir / "card.json").read_text())["sha256"]

    code, out, err = _publish(capsys, "--bucket", "stage-models", "--name", "digits", "--model-dir", str(model_dir))
    assert code == 0, err
    summary = json.loads(out)
    prefix = f"models/digits/{sha}/"
    assert summary["model_uri"] == f"s3://stage-models/{prefix}model.onnx"
    assert summary["tf_model_base_path"] == f"s3://stage-models/{prefix}tf"  # what TF Serving's model_base_path is
    assert summary["triton_repository"] == f"s3://stage-models/{prefix}triton"
    assert summary["tf_versions"] == [1]

    local = {
        f"{prefix}model.onnx": model_dir / "model.onnx",
        f"{prefix}card.json": model_dir / "card.json",
    }
    for root, sub in ((model_dir / "tf", "tf"), (model_dir / "triton", "triton")):
        for path in root.rglob("*"):
            if path.is_file():
                local[f"{prefix}{sub}/{path.relative_to(root).as_posix()}"] = path
    uploaded = _keys(s3_env, "stage-models")
    assert set(uploaded) == set(local)
    for key, path in local.items():
        assert uploaded[key] == path.read_bytes(), key
    assert f"{prefix}tf/1/saved_model.pb" in uploaded
    assert f"{prefix}tf/1/variables/variables.index" in uploaded
    assert f"{prefix}triton/digits-mlp/config.pbtxt" in uploaded
    assert hashlib.sha256(uploaded[f"{prefix}triton/digits-mlp/1/model.onnx"]).hexdigest() == sha
    assert summary["objects"][-1] == f"{prefix}card.json"  # the card goes last


def test_publish_refuses_a_model_that_is_not_the_cards(
    model_copy: Path, s3_env: MotoS3, capsys: pytest.CaptureFixture[str]
) -> None:
    s3_env.create_bucket("refused")
    (model_copy / "model.onnx").write_bytes((model_copy / "model.onnx").read_bytes() + b"\0")
    code, _, err = _publish(capsys, "--bucket", "refused", "--model-dir", str(model_copy))
    assert code == 2
    assert "sha256" in err and "rebuild" in err
    assert _keys(s3_env, "refused") == {}


def test_publish_dry_run_uploads_nothing_and_says_the_tf_artifact_is_missing(
    model_copy: Path, s3_env: MotoS3, capsys: pytest.CaptureFixture[str]
) -> None:
    s3_env.create_bucket("dry")
    code, out, err = _publish(capsys, "--bucket", "dry", "--model-dir", str(model_copy), "--dry-run")
    assert code == 0
    summary = json.loads(out)
    sha = json.loads((model_copy / "card.json").read_text())["sha256"]
    assert summary["dry_run"] is True
    prefix = f"models/digits-mlp/{sha}"
    # the model, its card and the Triton layout the build writes beside them
    assert sorted(summary["objects"]) == sorted([f"{prefix}/model.onnx", f"{prefix}/card.json",
                                                 f"{prefix}/triton/digits-mlp/config.pbtxt",
                                                 f"{prefix}/triton/digits-mlp/1/model.onnx"])
    assert "tf_model_base_path" not in summary and "no TF SavedModel" in err
    assert _keys(s3_env, "dry") == {}
