"""The ``partner`` stage: NVIDIA Triton on a T4 GPU VM, Managed PostgreSQL, Prometheus + Grafana.

Resources: a VPC with a NAT gateway and security groups; the host's service account (its Object
Storage key in Lockbox); the Container Registry it pulls the service image from; the private
KMS-encrypted bucket with the pinned model, its card and its Triton model repository; a Managed
PostgreSQL cluster whose user's password is generated and kept in Lockbox; Grafana's admin
password in Lockbox; the GPU VM running the generated Compose file (Triton, the service,
Prometheus, Grafana, exporters); optionally a GitLab Runner VM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi

from components import network
from components.gpu_host import GpuHost, GpuHostArgs
from components.host_workload import GpuHostWorkload, HostSecrets, Images, compose_yaml, gpu_host_user_data
from components.identity import WorkloadIdentity, WorkloadIdentityArgs
from components.monitoring import AlertThresholds, GrafanaAdmin, GrafanaAdminArgs
from components.network import StageNetwork, StageNetworkArgs, SubnetSpec
from components.postgres import Postgres, PostgresArgs
from components.registry import ImageRegistry, ImageRegistryArgs
from components.runner import GitlabRunner, GitlabRunnerArgs
from components.storage import ModelStore
from components.triton_repo import CARD_FILE, TritonOptions, TritonRepository, TritonRepositoryArgs, load_card
from stacks.common import model_store_args
from stacks.config import PROJECT, ConfigError, PartnerConfig

RUNNER_TOKEN_KEY = "gitlabRunnerToken"


def _security_groups(cfg: PartnerConfig) -> dict[str, network.SecurityGroupSpec]:
    net = cfg.network
    groups = {
        "inference": network.inference_host_rules([net.cidr], net.service_cidrs, net.admin_cidrs, cfg.ssh.enabled,
                                                  tls=cfg.tls.enabled),
        "database": network.database_rules("inference"),
    }
    if cfg.runner.enabled:
        groups["runner"] = network.runner_rules(net.admin_cidrs, cfg.ssh.enabled)
    return groups


def _runner_token(stack: str) -> pulumi.Output[str]:
    token = pulumi.Config(PROJECT).get_secret(RUNNER_TOKEN_KEY)
    if token is None:
        raise ConfigError(
            f"Pulumi.{stack}.yaml: aistack:runner.enabled is true but aistack:{RUNNER_TOKEN_KEY} is not set: run "
            f"`pulumi config set --secret {RUNNER_TOKEN_KEY} <glrt-... token> --stack {stack}`"
        )
    return token


def program(cfg: PartnerConfig, root: Path) -> None:
    labels = cfg.resource_labels()
    prefix = cfg.stage
    stack = pulumi.get_stack()
    runner_token = _runner_token(stack) if cfg.runner.enabled else None

    net = StageNetwork(
        f"{prefix}-net",
        StageNetworkArgs(folder_id=cfg.folder_id, subnets=[SubnetSpec(cfg.zone, cfg.network.cidr)],
                         security_groups=_security_groups(cfg)),
        labels,
    )
    subnet_id = net.subnet_ids[cfg.zone]

    workload = WorkloadIdentity(
        f"{prefix}-inference",
        WorkloadIdentityArgs(folder_id=cfg.folder_id,
                             description="Runs the GPU inference host (Triton, the service, monitoring)",
                             static_key=True),
        labels,
    )
    registry = ImageRegistry(
        f"{prefix}-images", ImageRegistryArgs(folder_id=cfg.folder_id, pullers=[workload.service_account_id]), labels)

    st = cfg.storage
    model_dir = root / cfg.model.dir
    store = ModelStore(
        f"{prefix}-data",
        model_store_args(cfg, model_dir, readers=[workload.service_account_id]),
        labels,
    )
    tr = cfg.triton
    triton = TritonRepository(
        f"{prefix}-triton",
        TritonRepositoryArgs(
            bucket=store.bucket_name,
            model=cfg.model.name,
            model_sha256=cfg.release.model_sha256,
            model_dir=str(model_dir),
            model_prefix=st.model_prefix,
            options=TritonOptions(max_batch_size=tr.max_batch_size, max_queue_delay_us=tr.max_queue_delay_us,
                                  preferred_batch_sizes=tuple(tr.preferred_batch_sizes),
                                  instance_count=tr.instance_count),
            card=load_card(model_dir) if (model_dir / CARD_FILE).is_file() else None,
        ),
        labels,
    )

    pg = cfg.postgres
    db = Postgres(
        f"{prefix}-db",
        PostgresArgs(
            folder_id=cfg.folder_id, network_id=net.network_id, zone=cfg.zone, subnet_id=subnet_id,
            security_group_ids=[net.security_group_ids["database"]], version=pg.version,
            resource_preset=pg.resource_preset, disk_type=pg.disk_type, disk_size_gb=pg.disk_size_gb,
            hosts=pg.hosts, database=pg.database, user=pg.user, conn_limit=pg.conn_limit,
            deletion_protection=pg.deletion_protection, backup_retain_days=pg.backup_retain_days,
            password_readers=[workload.service_account_id],
        ),
        labels,
    )
    grafana = GrafanaAdmin(f"{prefix}-grafana",
                           GrafanaAdminArgs(folder_id=cfg.folder_id, readers=[workload.service_account_id]), labels)

    mon = cfg.monitoring
    images = Images(triton=tr.image, prometheus=mon.prometheus_image, grafana=mon.grafana_image,
                    node_exporter=mon.node_exporter_image, dcgm_exporter=mon.dcgm_exporter_image,
                    blackbox_exporter=mon.blackbox_exporter_image)
    thresholds = AlertThresholds(error_ratio=mon.error_ratio, p99_latency_s=mon.p99_latency_ms / 1000,
                                 gpu_memory_ratio=mon.gpu_memory_ratio,
                                 gpu_utilisation_percent=mon.gpu_utilisation_percent)
    assert workload.secret_id is not None

    endpoint = cfg.tls.endpoint()

    def host_workload(v: dict[str, Any]) -> GpuHostWorkload:
        return GpuHostWorkload(
            stage=cfg.stage,
            inference_image=f"{v['repository']}@{cfg.release.image_digest}",
            triton_repository_url=v["triton_repository"],
            triton_model=triton.model_name,
            model_sha256=cfg.release.model_sha256,
            model_uri=v["model_uri"],
            model_card_uri=f"s3://{v['bucket']}/{store.card_key}",
            pg_dsn=v["dsn"],
            secrets=HostSecrets(storage_key=v["storage_key"], database=v["database"], grafana=v["grafana"]),
            images=images,
            log_level=cfg.service.log_level,
            max_instances=cfg.service.max_instances,
            prometheus_retention_days=mon.prometheus_retention_days,
            thresholds=thresholds,
            tls=endpoint,
        )

    spec = pulumi.Output.all(
        repository=registry.repository_url, triton_repository=triton.repository_url, model_uri=store.model_uri,
        bucket=store.bucket_name, dsn=db.dsn, storage_key=workload.secret_id, database=db.secret.secret_id,
        grafana=grafana.secret_id,
    ).apply(host_workload)
    users = cfg.ssh.ssh_users()
    gh = cfg.gpu_host
    host = GpuHost(
        f"{prefix}-gpu",
        GpuHostArgs(
            folder_id=cfg.folder_id, zone=cfg.zone, subnet_id=subnet_id,
            security_group_ids=[net.security_group_ids["inference"]],
            service_account_id=workload.service_account_id,
            compose=spec.apply(compose_yaml),
            user_data=gpu_host_user_data(users),
            platform_id=gh.platform, gpus=gh.gpus, cores=gh.cores, memory_gb=gh.memory_gb,
            disk_size_gb=gh.disk_size_gb, disk_type=gh.disk_type, preemptible=gh.preemptible,
            static_ip=gh.static_ip, image_id=gh.image_id,
        ),
        labels,
        opts=pulumi.ResourceOptions(depends_on=[triton, db, grafana, store]),
    )

    pulumi.export("service_url", endpoint.url if endpoint is not None else host.url(network.SERVICE_PORT))
    pulumi.export("host_ip", host.public_ip)
    pulumi.export("grafana_url", host.url(network.GRAFANA_PORT))
    pulumi.export("prometheus_url", host.url(network.PROMETHEUS_PORT))
    pulumi.export("postgres_host", db.host)
    pulumi.export("postgres_database", db.database_name)
    pulumi.export("postgres_user", db.user_name)
    pulumi.export("bucket_name", store.bucket_name)
    pulumi.export("registry_id", registry.registry_id)
    pulumi.export("image_repository", registry.repository_url)
    pulumi.export("triton_repository", triton.repository_url)
    pulumi.export("model_uri", store.model_uri)

    if cfg.runner.enabled:
        assert runner_token is not None
        rn = cfg.runner
        runner = GitlabRunner(
            f"{prefix}-runner",
            GitlabRunnerArgs(
                folder_id=cfg.folder_id, zone=cfg.zone, subnet_id=subnet_id,
                security_group_ids=[net.security_group_ids["runner"]], runner_token=runner_token,
                gitlab_url=rn.gitlab_url, cores=rn.cores, memory_gb=rn.memory_gb, core_fraction=rn.core_fraction,
                disk_size_gb=rn.disk_size_gb, preemptible=rn.preemptible, concurrent=rn.concurrent,
                runner_image=rn.runner_image, job_image=rn.job_image, users=users,
            ),
            labels,
        )
        pulumi.export("runner_id", runner.instance_id)
