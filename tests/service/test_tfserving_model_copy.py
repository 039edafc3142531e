"""prod's TF Serving pod: the server reads a local copy of the SavedModel that its init container
made from Object Storage, because TF Serving (2.7 and later) cannot read ``s3://``.

The Deployment is taken from the prod stack's offline plan; its init container's command and
environment are run for real (``python -m service.model_sync``, the service image's code) against
a moto S3 server holding the SavedModel that ``stagectl model build`` writes, and the TF Serving
test server (which, like TF Serving, refuses ``s3://`` base paths) is started with the main
container's ``--model_base_path``. Container paths below ``/models`` map to a temporary directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from components.tfserving import MODEL_VOLUME, MODELS_DIR
from stagectl.plan import run_plan
from tests.service.helpers import MotoS3
from tests.service.tfserving_fake import FakeTfServing, built_model_with_tf

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    plan = run_plan("prod", ROOT)
    (resource,) = [r for r in plan.resources if r.name == "prod-tf-serving-deployment"]
    return resource.inputs


def _pod(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


def _flag(args: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    return value


def test_tf_serving_never_loads_an_s3_base_path(tmp_path: Path) -> None:
    """What the old Deployment did: the server stays up and the model never becomes available."""
    base = "s3://aistack-prod-bucket/models/digits/" + "ab" * 32 + "/tf"
    server = FakeTfServing(base, "digits", tmp_path / "server.log")
    server.start(wait=False)
    try:
        deadline = time.monotonic() + 90
        while True:  # until the server listens (TensorFlow takes seconds to import), then a few polls more
            try:
                httpx.get(f"{server.url}/v1/models/digits", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, server.log_tail()
                time.sleep(0.2)
        time.sleep(3)
        response = httpx.get(f"{server.url}/v1/models/digits", timeout=5)
        assert response.status_code == 404
        assert response.json() == {"error": "Could not find any versions of model digits"}
        assert f"UNIMPLEMENTED: File system scheme 's3' not implemented (file: '{base}')" in server.log_tail()
    finally:
        server.stop()


def test_the_server_reads_a_local_path_and_holds_no_credentials(deployment: dict[str, Any]) -> None:
    pod = _pod(deployment)
    (server,) = pod["containers"]
    base_path = _flag(server["args"], "model_base_path")
    assert base_path == f"{MODELS_DIR}/digits" and "://" not in base_path
    assert "env" not in server or not any("AWS" in e["name"] or "S3" in e["name"] for e in server["env"])
    mounts = {m["name"]: m for m in server["volumeMounts"]}
    assert mounts[MODEL_VOLUME] == {"name": MODEL_VOLUME, "mountPath": MODELS_DIR, "readOnly": True}
    (fetch,) = pod["initContainers"]
    assert {m["name"]: m["mountPath"] for m in fetch["volumeMounts"]} == {MODEL_VOLUME: MODELS_DIR}
    assert {v["name"]: v for v in pod["volumes"]}[MODEL_VOLUME]["emptyDir"]
    assert fetch["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.slow
def test_the_init_container_puts_the_saved_model_where_tf_serving_reads_it(
    deployment: dict[str, Any], tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, moto_s3: MotoS3
) -> None:
    built = built_model_with_tf(tmp_path_factory)
    pod = _pod(deployment)
    (fetch,) = pod["initContainers"]
    (server,) = pod["containers"]
    command = fetch["command"]
    assert command[:3] == ["python", "-m", "service.model_sync"]
    source, dest = command[3], command[4]
    assert source.startswith("s3://") and source.endswith("/tf")

    # the published SavedModel, where the stack says it is
    bucket, _, prefix = source.removeprefix("s3://").partition("/")
    moto_s3.create_bucket(bucket)
    client = moto_s3.client()
    for path in sorted((built / "tf").rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(built / 'tf').as_posix()}")

    # the init container's environment: its plain values, the Secret's keys, moto for Yandex's endpoint
    env = {e["name"]: e["value"] for e in fetch["env"] if "value" in e}
    assert env == {"S3_ENDPOINT_URL": "https://storage.yandexcloud.net", "AWS_REGION": "ru-central1"}
    secret_keys = {e["valueFrom"]["secretKeyRef"]["key"] for e in fetch["env"] if "valueFrom" in e}
    assert secret_keys == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    env = {**env, **moto_s3.env(), "S3_ENDPOINT_URL": moto_s3.endpoint, "PATH": os.environ["PATH"]}
    local = tmp_path / "models"
    host_dest = str(local) + dest.removeprefix(MODELS_DIR)
    for attempt in ("first", "again"):
        result = subprocess.run([sys.executable, *command[1:4], host_dest], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (attempt, result.stderr)
    assert "0 file(s) written" in result.stdout  # the second run finds everything there
    assert (Path(host_dest) / "1" / "saved_model.pb").is_file()

    base_path = _flag(server["args"], "model_base_path")
    tf_serving = FakeTfServing(str(local) + base_path.removeprefix(MODELS_DIR), _flag(server["args"], "model_name"),
                               tmp_path / "server.log")
    tf_serving.start()
    try:
        answer = httpx.post(f"{tf_serving.url}/v1/models/digits:predict",
                            json={"instances": [[0.0] * 64]}, timeout=30)
        assert answer.status_code == 200 and len(answer.json()["predictions"]) == 1
    finally:
        tf_serving.stop()


def test_the_copy_refuses_a_prefix_without_a_saved_model(tmp_path: Path, moto_s3: MotoS3) -> None:
    moto_s3.create_bucket("empty-bucket")
    moto_s3.client().put_object(Bucket="empty-bucket", Key="models/x/tf/README", Body=b"not a model")
    env = {**moto_s3.env(), "S3_ENDPOINT_URL": moto_s3.endpoint, "PATH": os.environ["PATH"]}
    for source, message in (("s3://empty-bucket/models/none/tf", "holds no object: publish the model there first"),
                            ("s3://empty-bucket/models/x/tf", "holds no version directory with a saved_model.pb")):
        result = subprocess.run([sys.executable, "-m", "service.model_sync", source, str(tmp_path / "m")], env=env,
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 1 and message in result.stderr, result.stderr
