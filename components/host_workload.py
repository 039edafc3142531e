"""What runs on the GPU host: the Docker Compose file and the cloud-init user-data.

The host boots Yandex's Container-Optimized Image (GPU family), which runs the Compose file
passed in the instance metadata key ``docker-compose``; cloud-init (metadata ``user-data``)
creates the SSH users and writes the monitoring configs under ``/opt/aistack`` for the
containers to mount read-only.

Secrets never travel in metadata (anyone with ``compute.viewer`` can read it). At start-up the
one-shot ``secrets`` service (the inference image, run as root, with only the Python standard
library: ``components/files/fetch_secrets.py``) takes an IAM token of the VM's service account
from the metadata service and reads the Lockbox secrets that account may view
(``lockbox.payloadViewer`` on each): the Object Storage key, the PostgreSQL password and the
Grafana admin password. It writes each consumer's entries into that consumer's own tmpfs volume
(``/run/secrets/<consumer>/<KEY>`` and a shell ``env`` file), and downloads Yandex's CA bundle
for TLS to PostgreSQL. Triton and the service source their ``env`` file before ``exec``; Grafana
reads its password through ``GF_SECURITY_ADMIN_PASSWORD__FILE``. Nothing is written to disk.

Services (all images pinned by tag, the service by digest): ``secrets``, ``triton``
(``tritonserver`` reading the model repository from Object Storage), ``inference``,
``prometheus``, ``grafana``, ``node-exporter``, ``dcgm-exporter``, ``blackbox-exporter``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.base import ValidationError
from components.monitoring import GRAFANA_DASHBOARDS_DIR, GRAFANA_PASSWORD_ENTRY, AlertThresholds, monitoring_files
from components.network import (
    GRAFANA_PORT,
    PROMETHEUS_PORT,
    SERVICE_PORT,
    TRITON_GRPC_PORT,
    TRITON_HTTP_PORT,
    TRITON_METRICS_PORT,
)
from components.tls import TlsEndpoint, caddy_service
from components.yamltext import dump_yaml

CONFIG_ROOT = "/opt/aistack"
SECRETS_ROOT = "/run/secrets"
S3_ENDPOINT = "https://storage.yandexcloud.net"
S3_REGION = "ru-central1"
#: Yandex Cloud's CA bundle (TLS to Managed PostgreSQL with ``sslmode=verify-full``).
YANDEX_CA_URL = "https://storage.yandexcloud.net/cloud-certs/CA.pem"
CA_FILE = f"{SECRETS_ROOT}/inference/yandex-ca.pem"
#: How the service image starts (``service/__main__.py``).
SERVICE_COMMAND = "python -m service"
FETCH_SCRIPT = Path(__file__).resolve().parent / "files" / "fetch_secrets.py"

# Lockbox entry keys.
ACCESS_KEY = "AWS_ACCESS_KEY_ID"
SECRET_KEY = "AWS_SECRET_ACCESS_KEY"
PG_PASSWORD = "PG_PASSWORD"
GRAFANA_PASSWORD = GRAFANA_PASSWORD_ENTRY

_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_SSH_KEY = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com) [A-Za-z0-9+/=]+( .*)?$")


def check_pinned_image(reference: str) -> None:
    """An image reference with an explicit tag other than ``latest``, or a digest."""
    name, _, digest = reference.partition("@")
    if digest:
        pinned = bool(name) and bool(_DIGEST.match(digest))
    else:
        repository, _, tag = reference.rpartition("/")[2].partition(":")
        pinned = bool(repository) and bool(_TAG.match(tag)) and tag != "latest"
    if not pinned:
        raise ValidationError(
            f"image {reference!r} is not pinned: name a specific tag (e.g. prom/prometheus:v2.53.2) or a digest "
            "(@sha256:...); 'latest' and untagged images are refused"
        )


@dataclass(frozen=True)
class Images:
    triton: str = "nvcr.io/nvidia/tritonserver:24.08-py3"
    prometheus: str = "prom/prometheus:v2.53.2"
    grafana: str = "grafana/grafana:11.2.2"
    node_exporter: str = "prom/node-exporter:v1.8.2"
    dcgm_exporter: str = "nvcr.io/nvidia/k8s/dcgm-exporter:3.3.7-3.5.0-ubuntu22.04"
    blackbox_exporter: str = "prom/blackbox-exporter:v0.25.0"

    def __post_init__(self) -> None:
        for reference in vars(self).values():
            check_pinned_image(reference)


@dataclass(frozen=True)
class SshUser:
    name: str
    ssh_keys: tuple[str, ...]

    def __post_init__(self) -> None:
        if not _USER.match(self.name) or self.name in ("root", "admin"):
            raise ValidationError(f"user name {self.name!r} is invalid: use 1-32 lowercase letters, digits, '_' "
                                  "or '-', starting with a letter or '_' (not root or admin)")
        if not self.ssh_keys:
            raise ValidationError(f"user {self.name!r} has no SSH key: give at least one public key")
        for key in self.ssh_keys:
            if not _SSH_KEY.match(key.strip()):
                raise ValidationError(f"user {self.name!r}: {key[:30]!r}... is not an OpenSSH public key: use the "
                                      "one-line form 'ssh-ed25519 AAAA... comment' (ssh-rsa and ecdsa also work)")


@dataclass(frozen=True)
class HostSecrets:
    """Lockbox secret ids the host reads at boot."""

    #: Entries AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY: Object Storage (Triton's repository, the card).
    storage_key: str
    #: Entry PG_PASSWORD.
    database: str
    #: Entry GF_SECURITY_ADMIN_PASSWORD.
    grafana: str


@dataclass(frozen=True)
class GpuHostWorkload:
    """Everything the compose file needs, as plain strings (resolve Pulumi outputs first)."""

    stage: str
    #: ``cr.yandex/<registry-id>/inference@sha256:<digest>``
    inference_image: str
    #: ``s3://https://storage.yandexcloud.net:443/<bucket>/<prefix>``
    triton_repository_url: str
    triton_model: str
    model_sha256: str
    model_uri: str
    model_card_uri: str
    #: ``postgresql://user@host:6432/db?sslmode=verify-full`` (no password).
    pg_dsn: str
    secrets: HostSecrets
    images: Images = field(default_factory=Images)
    log_level: str = "info"
    max_instances: int = 64
    prometheus_retention_days: int = 15
    thresholds: AlertThresholds = field(default_factory=AlertThresholds)
    #: HTTPS in front of the service (Caddy with a Let's Encrypt certificate); None: plain HTTP on 8080.
    tls: TlsEndpoint | None = None

    def __post_init__(self) -> None:
        if "@sha256:" not in self.inference_image:
            raise ValidationError(f"inference image {self.inference_image!r} must be pinned by digest (@sha256:...)")
        if not self.triton_repository_url.startswith("s3://https://"):
            raise ValidationError(f"Triton repository {self.triton_repository_url!r} must be an "
                                  "s3://https://<endpoint>:443/<bucket>/<prefix> URL")
        userinfo, at, _ = self.pg_dsn.partition("://")[2].partition("@")
        if at and ":" in userinfo:
            raise ValidationError("PG_DSN must not carry a password: the password comes from Lockbox (PG_PASSWORD)")
        if not 1 <= self.prometheus_retention_days <= 365:
            raise ValidationError(f"Prometheus retention {self.prometheus_retention_days} days is out of range: "
                                  "allowed 1-365")


def _gpu(count: int | str) -> dict[str, Any]:
    return {"resources": {"reservations": {"devices": [{"driver": "nvidia", "count": count,
                                                        "capabilities": ["gpu"]}]}}}


_LOGGING = {"driver": "json-file", "options": {"max-size": "20m", "max-file": "5"}}
_CONSUMERS = ("triton", "inference", "grafana")


def _sourcing(consumer: str, command: str) -> list[str]:
    """``sh -c`` that exports the consumer's secrets, then execs ``command``."""
    return ["/bin/sh", "-c", f"set -a && . {SECRETS_ROOT}/{consumer}/env && set +a && exec {command}"]


def fetch_script() -> str:
    return FETCH_SCRIPT.read_text(encoding="utf-8")


def compose_document(w: GpuHostWorkload) -> dict[str, Any]:
    wanted = {
        f"{SECRETS_ROOT}/triton": [[w.secrets.storage_key, ACCESS_KEY], [w.secrets.storage_key, SECRET_KEY]],
        f"{SECRETS_ROOT}/inference": [[w.secrets.storage_key, ACCESS_KEY], [w.secrets.storage_key, SECRET_KEY],
                                      [w.secrets.database, PG_PASSWORD]],
        f"{SECRETS_ROOT}/grafana": [[w.secrets.grafana, GRAFANA_PASSWORD]],
    }
    ready = {"secrets": {"condition": "service_completed_successfully"}}
    triton_command = (
        f"tritonserver --model-repository={w.triton_repository_url} --model-control-mode=none "
        f"--http-port={TRITON_HTTP_PORT} --grpc-port={TRITON_GRPC_PORT} --metrics-port={TRITON_METRICS_PORT} "
        "--allow-metrics=true --allow-gpu-metrics=true --strict-readiness=true"
    )
    separator = "&" if "?" in w.pg_dsn else "?"
    services: dict[str, Any] = {
        "secrets": {
            "image": w.inference_image,
            "user": "root",
            "entrypoint": ["python", "-c", fetch_script()],
            "environment": {
                "AISTACK_SECRETS": json.dumps(wanted, sort_keys=True),
                "AISTACK_DOWNLOADS": json.dumps({CA_FILE: YANDEX_CA_URL}),
            },
            "volumes": [f"secrets-{c}:{SECRETS_ROOT}/{c}" for c in _CONSUMERS],
            "restart": "on-failure",
            "logging": _LOGGING,
        },
        "triton": {
            "image": w.images.triton,
            "command": _sourcing("triton", triton_command),
            "environment": {"AWS_DEFAULT_REGION": S3_REGION},
            "volumes": [f"secrets-triton:{SECRETS_ROOT}/triton:ro"],
            "ports": [f"{p}:{p}" for p in (TRITON_HTTP_PORT, TRITON_GRPC_PORT, TRITON_METRICS_PORT)],
            "shm_size": "1gb",
            "ulimits": {"memlock": -1, "stack": 67108864},
            "deploy": _gpu(1),
            "depends_on": ready,
            "restart": "unless-stopped",
            "logging": _LOGGING,
        },
        "inference": {
            "image": w.inference_image,
            "entrypoint": _sourcing("inference", SERVICE_COMMAND),
            "environment": {
                "PORT": str(SERVICE_PORT),
                "BACKEND": "triton",
                "TRITON_URL": f"triton:{TRITON_GRPC_PORT}",
                "TRITON_PROTOCOL": "grpc",
                "TRITON_MODEL": w.triton_model,
                "STORE": "postgres",
                "PG_DSN": f"{w.pg_dsn}{separator}sslrootcert={CA_FILE}",
                "MODEL_URI": w.model_uri,
                "MODEL_CARD_URI": w.model_card_uri,
                "MODEL_SHA256": w.model_sha256,
                "S3_ENDPOINT_URL": S3_ENDPOINT,
                "AWS_REGION": S3_REGION,
                "LOG_LEVEL": w.log_level,
                "MAX_INSTANCES": str(w.max_instances),
                "SPOOL_DIR": "/var/lib/aistack/spool",
            },
            "volumes": [f"secrets-inference:{SECRETS_ROOT}/inference:ro", "spool:/var/lib/aistack/spool"],
            "ports": [f"{SERVICE_PORT}:{SERVICE_PORT}"],
            "depends_on": {**ready, "triton": {"condition": "service_started"}},
            "restart": "unless-stopped",
            "logging": _LOGGING,
        },
        "prometheus": {
            "image": w.images.prometheus,
            "command": ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus",
                        f"--storage.tsdb.retention.time={w.prometheus_retention_days}d"],
            "volumes": [f"{CONFIG_ROOT}/prometheus:/etc/prometheus:ro", "prometheus-data:/prometheus"],
            "ports": [f"{PROMETHEUS_PORT}:{PROMETHEUS_PORT}"],
            "restart": "unless-stopped",
            "logging": _LOGGING,
        },
        "grafana": {
            "image": w.images.grafana,
            "environment": {
                "GF_SECURITY_ADMIN_USER": "admin",
                "GF_SECURITY_ADMIN_PASSWORD__FILE": f"{SECRETS_ROOT}/grafana/{GRAFANA_PASSWORD}",
                "GF_USERS_ALLOW_SIGN_UP": "false",
                "GF_AUTH_ANONYMOUS_ENABLED": "false",
                "GF_ANALYTICS_REPORTING_ENABLED": "false",
                "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
            },
            "volumes": [f"{CONFIG_ROOT}/grafana/provisioning:/etc/grafana/provisioning:ro",
                        f"{CONFIG_ROOT}/grafana/dashboards:{GRAFANA_DASHBOARDS_DIR}:ro",
                        "grafana-data:/var/lib/grafana",
                        f"secrets-grafana:{SECRETS_ROOT}/grafana:ro"],
            "ports": [f"{GRAFANA_PORT}:{GRAFANA_PORT}"],
            "depends_on": {**ready, "prometheus": {"condition": "service_started"}},
            "restart": "unless-stopped",
            "logging": _LOGGING,
        },
        "node-exporter": {
            "image": w.images.node_exporter,
            "command": ["--path.rootfs=/host"],
            "pid": "host",
            "volumes": ["/:/host:ro,rslave"],
            "restart": "unless-stopped",
            "logging": _LOGGING,
        },
        "dcgm-exporter": {
            "image": w.images.dcgm_exporter,
            "cap_add": ["SYS_ADMIN"],
            "deploy": _gpu("all"),
            "restart": "unless-stopped",
            "logging": _LOGGING,
        },
        "blackbox-exporter": {
            "image": w.images.blackbox_exporter,
            "command": ["--config.file=/etc/blackbox/blackbox.yml"],
            "volumes": [f"{CONFIG_ROOT}/blackbox:/etc/blackbox:ro"],
            "restart": "unless-stopped",
            "logging": _LOGGING,
        },
    }
    if w.tls is not None:
        services["tls"] = caddy_service(w.tls, f"inference:{SERVICE_PORT}", "inference", _LOGGING)
    tmpfs = {"driver": "local", "driver_opts": {"type": "tmpfs", "device": "tmpfs", "o": "size=1m,mode=0755"}}
    volumes: dict[str, Any] = {f"secrets-{c}": tmpfs for c in _CONSUMERS}
    volumes.update({"spool": {}, "prometheus-data": {}, "grafana-data": {}})
    if w.tls is not None:
        volumes.update({"caddy-data": {}, "caddy-config": {}})
    return {"services": services, "volumes": volumes}


def compose_yaml(w: GpuHostWorkload) -> str:
    return dump_yaml(compose_document(w))


def host_files(w: GpuHostWorkload) -> dict[str, str]:
    """Absolute path on the host -> content: the monitoring configs the containers mount."""
    return {f"{CONFIG_ROOT}/{path}": text
            for path, text in monitoring_files(w.stage, w.triton_model, w.thresholds).items()}


#: The metadata service refuses larger values.
METADATA_VALUE_LIMIT = 256 * 1024


def cloud_config(users: Sequence[SshUser], files: Mapping[str, str] | None = None,
                 packages: Sequence[str] = (), runcmd: Sequence[Sequence[str]] = ()) -> str:
    """``#cloud-config`` user-data: users with SSH keys, files to write, packages, commands."""
    document: dict[str, Any] = {}
    if users:
        document["users"] = [
            {"name": u.name, "groups": ["sudo"], "shell": "/bin/bash", "sudo": "ALL=(ALL) NOPASSWD:ALL",
             "lock_passwd": True, "ssh_authorized_keys": [k.strip() for k in u.ssh_keys]}
            for u in users
        ]
    document["ssh_pwauth"] = False
    document["disable_root"] = True
    if files:
        document["write_files"] = [
            {"path": path, "owner": "root:root", "permissions": "0755" if path.endswith(".py") else "0644",
             "content": text}
            for path, text in sorted(files.items())
        ]
    if packages:
        document["package_update"] = True
        document["packages"] = list(packages)
    if runcmd:
        document["runcmd"] = [list(c) for c in runcmd]
    text = "#cloud-config\n" + dump_yaml(document)
    if len(text.encode()) > METADATA_VALUE_LIMIT:
        raise ValidationError(f"user-data is {len(text.encode())} bytes: the instance metadata takes at most "
                              f"{METADATA_VALUE_LIMIT} bytes per key; shrink the generated files")
    return text


def gpu_host_user_data(w: GpuHostWorkload, users: Sequence[SshUser]) -> str:
    return cloud_config(users, host_files(w))
