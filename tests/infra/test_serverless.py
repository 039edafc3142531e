"""ServerlessService: limits validated with their messages, public vs private invocation."""

from __future__ import annotations

import re

import pytest

from components.base import ValidationError
from components.serverless import SecretEnv, ServerlessService, ServerlessServiceArgs

LABELS = {"project": "aistack", "stage": "mvp"}
DIGEST = "sha256:" + "ab" * 32


def args(**kw: object) -> ServerlessServiceArgs:
    base: dict[str, object] = {"folder_id": "f", "service_account_id": "sa",
                               "image_repository": "cr.yandex/r/inference", "image_digest": DIGEST}
    return ServerlessServiceArgs(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("memory", [128, 512, 1024, 8192])
def test_valid_memory_is_accepted(memory):
    assert args(memory_mb=memory).memory_mb == memory


@pytest.mark.parametrize("memory", [0, 100, 1000, 8320, 16384])
def test_invalid_memory_names_the_rule(memory):
    with pytest.raises(ValidationError) as info:
        args(memory_mb=memory)
    assert str(info.value) == (f"memory {memory} MB is invalid: Serverless Containers take a multiple of 128 MB, "
                               "at most 8192 MB (e.g. 512, 1024, 2048)")


@pytest.mark.parametrize(("kw", "message"), [
    ({"cores": 8}, "cores 8 is invalid: allowed 1, 2, 3, 4"),
    ({"core_fraction": 1}, "core fraction 1% is out of range: allowed 5-100%"),
    ({"core_fraction": 33}, "core fraction 33% is invalid: use a multiple of 5% (5, 10, ... 100)"),
    ({"cores": 2, "memory_mb": 4096, "core_fraction": 50},
     "core fraction 50% is invalid with 2 cores: more than one core takes 100%"),
    ({"cores": 2, "memory_mb": 2048}, "2 cores need at least 4096 MB of memory: an instance with 2048 MB gets at most "
                                      "1 vCPU (1 below 4 GB, 2 below 6 GB, 3 below 8 GB, 4 at 8 GB)"),
    ({"cores": 4, "memory_mb": 6144}, "4 cores need at least 8192 MB of memory"),
    ({"concurrency": 17}, "concurrency 17 is out of range: allowed 1-16"),
    ({"execution_timeout_s": 7200}, "execution timeout 7200 s is out of range: allowed 1-3600 s"),
    ({"image_digest": "latest"}, "image digest 'latest' is invalid"),
    ({"log_min_level": "LOUD"}, "log level 'LOUD' is invalid"),
])
def test_other_limits(kw, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        args(**kw)


@pytest.mark.parametrize(("cores", "memory"), [(1, 128), (1, 4096), (2, 4096), (3, 6144), (4, 8192), (2, 8192)])
def test_cores_the_memory_allows(cores, memory):
    assert args(cores=cores, memory_mb=memory, core_fraction=100).cores == cores


def test_what_needs_a_quota_or_a_feature_is_warned_about(run_component):
    rec = run_component(lambda: ServerlessService("svc", args(execution_timeout_s=900, provisioned_instances=3,
                                                              log_retention_days=60), LABELS))
    assert rec.plan.warnings == [
        "svc: execution timeout 900 s is over 10 minutes: the container becomes a long-lived container, which Yandex "
        "offers on request (Preview): ask support to enable it for the cloud",
        "svc: 3 provisioned instances exceed the default quota of 2 per cloud "
        "(serverless.containersWorkersProvisioned.count): request an increase before deploying",
        "svc: log retention 60 days exceeds Cloud Logging's default of 31 days (logging.retentionDays.count): "
        "request an increase or the log group cannot be created",
    ]
    assert run_component(lambda: ServerlessService("svc", args(), LABELS)).plan.warnings == []


def test_private_container_has_no_public_binding(run_component):
    rec = run_component(lambda: ServerlessService("svc", args(public=False), LABELS))
    assert rec.of_type("ServerlessContainerIamBinding") == []
    container = rec.one("ServerlessContainer").inputs
    assert container["image"]["url"] == f"cr.yandex/r/inference@{DIGEST}"
    assert container["image"]["digest"] == DIGEST
    assert container["logOptions"] == {"logGroupId": "(svc-logs.id)", "minLevel": "INFO"}
    assert "provisionPolicy" not in container


def test_public_container_is_invocable_by_all_users(run_component):
    rec = run_component(lambda: ServerlessService("svc", args(public=True, provisioned_instances=1), LABELS))
    binding = rec.one("ServerlessContainerIamBinding").inputs
    assert binding == {"containerId": "(svc-container.id)", "role": "serverless.containers.invoker",
                       "members": ["system:allUsers"]}
    assert rec.one("ServerlessContainer").inputs["provisionPolicy"] == {"minInstances": 1}


def test_environment_and_lockbox_secrets(run_component):
    secret = SecretEnv("API_KEY", "sec-1", "ver-1", "API_KEY")
    rec = run_component(lambda: ServerlessService(
        "svc", args(environment={"MODEL_URI": "s3://b/m.onnx"}, secrets=[secret]), LABELS))
    container = rec.one("ServerlessContainer").inputs
    assert container["image"]["environment"] == {"MODEL_URI": "s3://b/m.onnx"}
    assert container["secrets"] == [{"environmentVariable": "API_KEY", "id": "sec-1", "versionId": "ver-1",
                                     "key": "API_KEY"}]
    with pytest.raises(ValidationError, match="both plainly and from secrets"):
        args(environment={"API_KEY": "x"}, secrets=[secret])
