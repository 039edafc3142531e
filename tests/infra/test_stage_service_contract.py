"""The contract between each stage and the service it runs: the environment the stage plans for the
service (plain variables, and the names its secrets arrive under), fed to the service's own
``settings_from_env``, is accepted and selects the backend and store the stage means; every file a
setting names (a CA bundle) is one the stage puts where the service reads it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from components.k8s_platform import CA_CONFIGMAP, CA_KEY, CLICKHOUSE_SECRET, clickhouse_env
from service.settings import Settings, settings_from_env
from stagectl.plan import Plan, run_plan
from tests.infra.conftest import ROOT

FROM_A_SECRET = "value-from-a-secret"


def _one(plan: Plan, suffix: str, name: str | None = None) -> dict[str, Any]:
    (resource,) = [r for r in plan.resources if r.type.endswith(suffix) and (name is None or r.name == name)]
    return resource.inputs


def _pins(stack: str) -> dict[str, str]:
    return yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]["aistack:release"]


def test_mvp_runs_onnx_and_logs_to_its_bucket():
    plan = run_plan("mvp", ROOT)
    container = _one(plan, ":ServerlessContainer")
    env = dict(container["image"]["environment"])
    env.update({s["environmentVariable"]: FROM_A_SECRET for s in container["secrets"]})
    settings = settings_from_env(env)
    bucket = _one(plan, ":StorageBucket")["bucket"]
    assert (settings.backend, settings.store) == ("onnx", "s3")
    assert settings.model_uri == f"s3://{bucket}/models/digits/{_pins('mvp')['modelSha256']}/model.onnx"
    assert settings.model_sha256 == _pins("mvp")["modelSha256"]
    assert settings.store_s3_uri == f"s3://{bucket}/predictions/"
    assert settings.port == 8080  # Serverless Containers set $PORT; the image listens on it


def _partner_service(plan: Plan) -> tuple[dict[str, Any], dict[str, Any]]:
    vm = _one(plan, ":ComputeInstance", "partner-gpu-vm")
    compose = yaml.safe_load(vm["metadata"]["docker-compose"])
    return compose["services"]["inference"], compose["services"]["secrets"]


def test_partner_runs_triton_and_stores_in_postgres():
    plan = run_plan("partner", ROOT)
    inference, secrets = _partner_service(plan)
    env = dict(inference["environment"])
    # the entrypoint sources /run/secrets/inference/env, written by the one-shot secrets service
    sourced = re.search(r"\. (/run/secrets/inference)/env ", " ".join(inference["entrypoint"]))
    assert sourced, inference["entrypoint"]
    wanted = json.loads(secrets["environment"]["AISTACK_SECRETS"])
    env.update({key: FROM_A_SECRET for _, key in wanted[sourced.group(1)]})
    settings = settings_from_env(env)
    assert (settings.backend, settings.store) == ("triton", "postgres")
    assert settings.triton_url == "triton:8001" and settings.triton_protocol == "grpc"
    assert settings.pg_password_value == FROM_A_SECRET and "password" not in (settings.pg_dsn or "")
    assert settings.model_sha256 == _pins("partner")["modelSha256"]
    # sslrootcert names the CA the secrets service downloads into a directory the service mounts
    (ca,) = re.findall(r"sslrootcert=([^&\s]+)", settings.pg_dsn or "")
    assert ca in json.loads(secrets["environment"]["AISTACK_DOWNLOADS"])
    mounts = {volume.split(":")[1] for volume in inference["volumes"]}
    assert str(Path(ca).parent) in mounts


def _deployment() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "base" / "deployment.yaml").read_text())
    return document


def test_prod_runs_tf_serving_and_stores_in_clickhouse_over_verified_tls():
    plan = run_plan("prod", ROOT)
    pod = _deployment()["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    (source,) = container["envFrom"]
    assert source["secretRef"]["name"] == CLICKHOUSE_SECRET
    secret = _one(plan, ":Secret", "prod-app-clickhouse")
    assert secret["metadata"]["name"] == CLICKHOUSE_SECRET
    env.update(clickhouse_env("c-cluster.rw.mdb.yandexcloud.net", 8443, "predictions", "inference", FROM_A_SECRET))
    settings: Settings = settings_from_env(env)
    assert (settings.backend, settings.store) == ("tfserving", "clickhouse")
    assert settings.tfserving_url == plan.outputs["tf_serving_url"] and settings.tfserving_model == "digits"
    assert settings.clickhouse_secure and settings.clickhouse_password_value == FROM_A_SECRET
    # TLS to Managed ClickHouse verifies against Yandex's CA: the pod must hold the file it names
    assert settings.clickhouse_ca_file is not None, "CLICKHOUSE_SECURE without CLICKHOUSE_CA_FILE: Yandex's CA " \
                                                    "is in no public trust store, the store could never connect"
    mount = next(m for m in container["volumeMounts"] if str(settings.clickhouse_ca_file).startswith(m["mountPath"]))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == CA_CONFIGMAP
    assert Path(settings.clickhouse_ca_file).name == CA_KEY
    configmap = _one(plan, ":ConfigMap", "prod-app-yandex-ca")
    assert configmap["metadata"] == {**configmap["metadata"], "name": CA_CONFIGMAP, "namespace": "aistack"}
    assert "-----BEGIN CERTIFICATE-----" in configmap["data"][CA_KEY]
