"""The ``mvp`` stage: Object Storage + a Serverless Container running the service.

Resources: a workload service account (logging writer; its Object Storage key in Lockbox), a
Container Registry the workload may pull from, a private KMS-encrypted bucket holding the
pinned model and the prediction log, and the Serverless Container with its log group.
"""

from __future__ import annotations

from pathlib import Path

import pulumi

from components.identity import ACCESS_KEY_ENTRY, SECRET_KEY_ENTRY, WorkloadIdentity, WorkloadIdentityArgs
from components.registry import ImageRegistry, ImageRegistryArgs
from components.secrets import SecretStore, SecretStoreArgs
from components.serverless import SecretEnv, ServerlessService, ServerlessServiceArgs
from components.storage import ModelStore
from stacks.common import model_store_args
from stacks.config import PROJECT, ConfigError, MvpConfig

S3_ENDPOINT = "https://storage.yandexcloud.net"
S3_REGION = "ru-central1"


def program(cfg: MvpConfig, root: Path) -> None:
    labels = cfg.resource_labels()
    prefix = cfg.stage

    workload = WorkloadIdentity(
        f"{prefix}-inference",
        WorkloadIdentityArgs(
            folder_id=cfg.folder_id,
            description="Runs the inference service's serverless container",
            folder_roles=["logging.writer"],
            static_key=True,
        ),
        labels,
    )
    registry = ImageRegistry(
        f"{prefix}-images",
        ImageRegistryArgs(folder_id=cfg.folder_id, pullers=[workload.service_account_id]),
        labels,
    )
    store = ModelStore(
        f"{prefix}-data",
        model_store_args(cfg, root / cfg.model.dir, writers=[workload.service_account_id]),
        labels,
    )
    assert workload.secret_id is not None and workload.secret_version_id is not None
    sv = cfg.serverless
    environment: dict[str, pulumi.Input[str]] = {
        "MODEL_URI": store.model_uri,
        "MODEL_SHA256": cfg.release.model_sha256,
        "BACKEND": "onnx",
        "STORE": "s3",
        "STORE_S3_URI": store.log_uri,
        "S3_ENDPOINT_URL": S3_ENDPOINT,
        "AWS_REGION": S3_REGION,
        "MAX_INSTANCES": str(sv.max_instances),
        "LOG_LEVEL": sv.log_level,
        "SPOOL_DIR": "/tmp/spool",
    }
    secrets = [
        SecretEnv(env, workload.secret_id, workload.secret_version_id, env)
        for env in (ACCESS_KEY_ENTRY, SECRET_KEY_ENTRY)
    ]
    grants = [*workload.grants, *registry.pull_grants]
    if sv.require_api_key:
        api_key = pulumi.Config(PROJECT).get_secret("apiKey")
        if api_key is None:
            raise ConfigError(
                f"Pulumi.{pulumi.get_stack()}.yaml: aistack:serverless.requireApiKey is true but "
                f"aistack:apiKey is not set: run `pulumi config set --secret apiKey <key> --stack {pulumi.get_stack()}`"
            )
        api_keys = SecretStore(
            f"{prefix}-api-key",
            SecretStoreArgs(folder_id=cfg.folder_id, description="API key of the inference service",
                            entries={"API_KEY": api_key}, readers=[workload.service_account_id]),
            labels,
        )
        secrets.append(SecretEnv("API_KEY", api_keys.secret_id, api_keys.version_id, "API_KEY"))
        grants += api_keys.grants
    service = ServerlessService(
        f"{prefix}-inference",
        ServerlessServiceArgs(
            folder_id=cfg.folder_id,
            service_account_id=workload.service_account_id,
            image_repository=registry.repository_url,
            image_digest=cfg.release.image_digest,
            memory_mb=sv.memory_mb,
            cores=sv.cores,
            core_fraction=sv.core_fraction,
            concurrency=sv.concurrency,
            execution_timeout_s=sv.execution_timeout_s,
            provisioned_instances=sv.provisioned_instances,
            public=sv.public,
            log_retention_days=sv.log_retention_days,
            log_min_level=sv.log_level,
            environment=environment,
            secrets=secrets,
            grants=grants,
        ),
        labels,
    )

    pulumi.export("invoke_url", service.url)
    pulumi.export("bucket_name", store.bucket_name)
    pulumi.export("registry_id", registry.registry_id)
    pulumi.export("image_repository", registry.repository_url)
    pulumi.export("model_uri", store.model_uri)
