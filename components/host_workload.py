"""What runs on the GPU host: the Docker Compose file and the cloud-init user-data.

The host boots Yandex's Container-Optimized Image (GPU family), whose daemon runs the Compose file
passed in the instance metadata key ``docker-compose`` and, when that key changes, creates the new
and changed containers and removes the dropped ones. cloud-init (metadata ``user-data``) runs once
per instance, so user-data carries only the SSH users (a change of it recreates the VM, see
:mod:`components.gpu_host`); everything that changes with releases travels in the Compose file:

- ``config`` (one-shot, the inference image as root, standard library only:
  ``components/files/write_files.py``) writes the monitoring configuration embedded in its
  environment (compressed, base64) under ``/opt/aistack`` on the host, removes files no longer
  named there, and hands the service's state volumes (spool, migration checkpoints) to its user.
  Prometheus, Grafana and the blackbox exporter mount their part read-only and carry its sha256 in
  their environment, so a change of their files changes their service and Compose recreates them
  after ``config`` has run again.
- ``secrets`` (the inference image as root: ``components/files/fetch_secrets.py``) takes
  an IAM token of the VM's service account from the metadata service and reads the Lockbox secrets
  that account may view (``lockbox.payloadViewer`` on each): the Object Storage key, the PostgreSQL
  password and the Grafana admin password, plus Yandex's CA bundle for TLS to PostgreSQL. Secrets
  never travel in metadata (anyone with ``compute.viewer`` can read it). It writes them to the
  host's tmpfs, ``/run/aistack/secrets/<consumer>`` (``/run`` is tmpfs: nothing reaches the disk and
  a reboot clears it), one directory per consumer, mode 0500 with files 0400 owned by the user
  that consumer runs as (:data:`CONSUMER_USERS`). Each consumer bind-mounts only its own directory,
  read-only, at ``/run/secrets/<consumer>``: Triton and the service source its ``env`` file before
  ``exec``, Grafana reads its password through ``GF_SECURITY_ADMIN_PASSWORD__FILE``.

Order: every consumer ``depends_on`` ``config`` with ``service_completed_successfully`` and
``secrets`` with ``service_healthy`` (healthy once all its files are in place), so each apply of
the spec (first boot, a changed spec, ``docker compose up``) runs the writers before the consumers
start. After a plain reboot the image's daemon leaves an unchanged spec to the containers' restart
policies (Yandex: "If the Docker container description in the metadata changed when restarting the
VM, the specified restart policy will be ignored"), and Docker does not restart a one-shot that
exited 0. The configuration is on disk and survives; the secrets do not, so ``secrets`` stays up
after writing (``restart: unless-stopped``) and Docker runs it again at every start, while the
consumers, restarted at the same moment, wait (up to :data:`SECRETS_WAIT_SECONDS`) for their files.

Services (all images pinned by tag, the service by digest): ``config``, ``secrets``, ``triton``
(``tritonserver`` reading the model repository from Object Storage), ``inference``,
``prometheus``, ``grafana``, ``node-exporter``, ``dcgm-exporter``, ``blackbox-exporter``, ``tls``
(Caddy, with TLS on) and the tool ``migrate`` (profile ``tools``: it never starts by itself; see
:data:`MIGRATE_SERVICE`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import zlib
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

#: On the host: the generated configuration (written by the ``config`` service; on disk, so it is
#: there when Docker restarts the containers after a reboot).
CONFIG_ROOT = "/opt/aistack"
#: On the host: the secrets, one directory per consumer (``/run`` is tmpfs).
HOST_SECRETS_ROOT = "/run/aistack/secrets"
#: In the containers: ``<SECRETS_ROOT>/<consumer>`` (the writer sees all of them, a consumer its own).
SECRETS_ROOT = "/run/secrets"
S3_ENDPOINT = "https://storage.yandexcloud.net"
S3_REGION = "ru-central1"
#: Yandex Cloud's CA bundle (TLS to Managed PostgreSQL with ``sslmode=verify-full``).
YANDEX_CA_URL = "https://storage.yandexcloud.net/cloud-certs/CA.pem"
CA_FILE = f"{SECRETS_ROOT}/inference/yandex-ca.pem"
#: How the service image starts (``service/__main__.py``) and runs a data migration (``service/migrate.py``).
SERVICE_COMMAND = "python -m service"
MIGRATE_COMMAND = "python -m service.migrate"
#: The compose service that runs ``service.migrate`` on the host (``docker compose run --rm migrate ...``).
MIGRATE_SERVICE = "migrate"
TOOLS_PROFILE = "tools"
#: The user ``service/Dockerfile`` runs the service image as.
SERVICE_USER = "10001:10001"
#: The user each secrets consumer runs as, and so owns its secrets directory: Triton's image runs as
#: root, the service image as SERVICE_USER, Grafana's image as uid 472 (group 0).
CONSUMER_USERS = {"triton": "0:0", "inference": SERVICE_USER, "grafana": "472:0"}
#: How long a consumer started before the ``secrets`` service (after a reboot) waits for its files.
SECRETS_WAIT_SECONDS = 300
#: Created by the ``secrets`` service once every file is in place (its health check).
SECRETS_READY_FILE = f"{SECRETS_ROOT}/.ready"
#: The service's state on named volumes, handed to SERVICE_USER by the ``config`` service.
SPOOL_DIR = "/var/lib/aistack/spool"
MIGRATE_STATE_DIR = "/var/lib/aistack/migrate"
STATE_VOLUMES = {"spool": SPOOL_DIR, "migrate-state": MIGRATE_STATE_DIR}
#: between `docker compose stop`'s SIGTERM and SIGKILL for the inference service
STOP_GRACE_SECONDS = 30
#: Environment variable carrying the sha256 of the configuration files a service mounts.
CONFIG_DIGEST_ENV = "AISTACK_CONFIG_SHA256"
#: Where each service mounts the generated configuration: (directory under CONFIG_ROOT, mount point).
CONFIG_MOUNTS: dict[str, tuple[tuple[str, str], ...]] = {
    "prometheus": (("prometheus", "/etc/prometheus"),),
    "grafana": (("grafana/provisioning", "/etc/grafana/provisioning"), ("grafana/dashboards", GRAFANA_DASHBOARDS_DIR)),
    "blackbox-exporter": (("blackbox", "/etc/blackbox"),),
}
FETCH_SCRIPT = Path(__file__).resolve().parent / "files" / "fetch_secrets.py"
WRITE_FILES_SCRIPT = Path(__file__).resolve().parent / "files" / "write_files.py"
#: The metadata service refuses larger values.
METADATA_VALUE_LIMIT = 256 * 1024
#: Linux refuses to start a process with a single environment string longer than this (MAX_ARG_STRLEN).
ENV_VALUE_LIMIT = 128 * 1024

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


def compose_escape(text: str) -> str:
    """``text`` as Compose must be given it to pass it on unchanged: Compose interpolates ``$``."""
    return text.replace("$", "$$")


def secrets_dir(consumer: str) -> str:
    """A consumer's secrets directory, as the writer and the consumer see it."""
    return f"{SECRETS_ROOT}/{consumer}"


def _secrets_mount(consumer: str) -> str:
    return f"{HOST_SECRETS_ROOT}/{consumer}:{secrets_dir(consumer)}:ro"


def _wait_for(path: str, who: str) -> str:
    """Shell: wait until ``path`` is readable by this container's user (the writer may not have run yet)."""
    return (f"n=0; until [ -r {path} ]; do n=$((n + 1)); if [ $n -ge {SECRETS_WAIT_SECONDS} ]; then "
            f"echo '{who}: {path} is missing or not readable after {SECRETS_WAIT_SECONDS} s: the secrets service "
            f"has not written it (see its log)' >&2; exit 1; fi; sleep 1; done")


def _sourcing(consumer: str, command: str, argv0: str | None = None) -> list[str]:
    """``sh -c`` that waits for the consumer's secrets, exports them, then execs ``command``."""
    env = f"{secrets_dir(consumer)}/env"
    script = f"{_wait_for(env, consumer)}; set -a && . {env} && set +a && exec {command}"
    return ["/bin/sh", "-c", compose_escape(script), *([argv0] if argv0 else [])]


def fetch_script() -> str:
    return FETCH_SCRIPT.read_text(encoding="utf-8")


def write_files_script() -> str:
    return WRITE_FILES_SCRIPT.read_text(encoding="utf-8")


def config_files(w: GpuHostWorkload) -> dict[str, str]:
    """Path relative to CONFIG_ROOT -> content: the monitoring configuration the services mount."""
    return monitoring_files(w.stage, w.triton_model, w.thresholds)


def encode_files(files: Mapping[str, str]) -> str:
    """``AISTACK_FILES`` of ``write_files.py``: base64 of zlib-compressed JSON, deterministic."""
    data = json.dumps(dict(files), sort_keys=True, separators=(",", ":")).encode()
    return base64.b64encode(zlib.compress(data, 9)).decode()


def config_digest(files: Mapping[str, str], service: str) -> str:
    """sha256 of the files ``service`` mounts (a change of them changes the service, so Compose recreates it)."""
    directories = [directory for directory, _ in CONFIG_MOUNTS[service]]
    chosen = {path: text for path, text in files.items() if any(path.startswith(d + "/") for d in directories)}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()


def _config_mounts(service: str) -> list[str]:
    return [f"{CONFIG_ROOT}/{directory}:{target}:ro" for directory, target in CONFIG_MOUNTS[service]]


def secrets_spec(w: GpuHostWorkload) -> dict[str, dict[str, Any]]:
    """The ``secrets`` service's AISTACK_SECRETS, AISTACK_DOWNLOADS and AISTACK_OWNERS, paths as it sees them."""
    storage = [[w.secrets.storage_key, ACCESS_KEY], [w.secrets.storage_key, SECRET_KEY]]
    return {
        "AISTACK_SECRETS": {
            secrets_dir("triton"): storage,
            secrets_dir("inference"): [*storage, [w.secrets.database, PG_PASSWORD]],
            secrets_dir("grafana"): [[w.secrets.grafana, GRAFANA_PASSWORD]],
        },
        "AISTACK_DOWNLOADS": {CA_FILE: YANDEX_CA_URL},
        "AISTACK_OWNERS": {secrets_dir(consumer): user for consumer, user in CONSUMER_USERS.items()},
    }


def compose_document(w: GpuHostWorkload) -> dict[str, Any]:
    files = config_files(w)
    blob = encode_files(files)
    if len(blob) > ENV_VALUE_LIMIT - 64:
        raise ValidationError(f"the monitoring configuration is {len(blob)} bytes encoded: one environment variable "
                              f"takes at most {ENV_VALUE_LIMIT} bytes; shrink the dashboards or rules")
    written = {"secrets": {"condition": "service_healthy"}}
    configured = {"config": {"condition": "service_completed_successfully"}}
    triton_command = (
        f"tritonserver --model-repository={w.triton_repository_url} --model-control-mode=none "
        f"--http-port={TRITON_HTTP_PORT} --grpc-port={TRITON_GRPC_PORT} --metrics-port={TRITON_METRICS_PORT} "
        "--allow-metrics=true --allow-gpu-metrics=true --strict-readiness=true"
    )
    separator = "&" if "?" in w.pg_dsn else "?"
    pg_dsn = f"{w.pg_dsn}{separator}sslrootcert={CA_FILE}"
    grafana_password = f"{secrets_dir('grafana')}/{GRAFANA_PASSWORD}"
    services: dict[str, Any] = {
        "config": {
            "image": w.inference_image,
            "user": "root",
            "entrypoint": ["python", "-c", compose_escape(write_files_script())],
            "environment": {
                "AISTACK_FILES_ROOT": CONFIG_ROOT,
                "AISTACK_FILES": blob,
                "AISTACK_DIRS": json.dumps({f"/state/{name}": SERVICE_USER for name in STATE_VOLUMES},
                                           sort_keys=True),
            },
            "volumes": [f"{CONFIG_ROOT}:{CONFIG_ROOT}", *(f"{name}:/state/{name}" for name in STATE_VOLUMES)],
            "restart": "on-failure",
            "logging": _LOGGING,
        },
        "secrets": {
            "image": w.inference_image,
            "user": "root",
            "entrypoint": ["python", "-c", compose_escape(fetch_script())],
            "environment": {**{name: json.dumps(value, sort_keys=True) for name, value in secrets_spec(w).items()},
                            "AISTACK_READY_FILE": SECRETS_READY_FILE, "AISTACK_STAY": "1"},
            "volumes": [f"{HOST_SECRETS_ROOT}:{SECRETS_ROOT}"],
            # healthy once every file is written; it stays up, so Docker itself runs it again after a reboot
            "healthcheck": {"test": ["CMD", "test", "-f", SECRETS_READY_FILE], "interval": "2s", "timeout": "5s",
                            "retries": 3, "start_period": f"{SECRETS_WAIT_SECONDS}s"},
            "restart": "unless-stopped",
            "logging": _LOGGING,
        },
        "triton": {
            "image": w.images.triton,
            "user": CONSUMER_USERS["triton"],
            "command": _sourcing("triton", triton_command),
            "environment": {"AWS_DEFAULT_REGION": S3_REGION},
            "volumes": [_secrets_mount("triton")],
            "ports": [f"{p}:{p}" for p in (TRITON_HTTP_PORT, TRITON_GRPC_PORT, TRITON_METRICS_PORT)],
            "shm_size": "1gb",
            "ulimits": {"memlock": -1, "stack": 67108864},
            "deploy": _gpu(1),
            "depends_on": written,
            "restart": "unless-stopped",
            "logging": _LOGGING,
        },
        "inference": {
            "image": w.inference_image,
            "user": CONSUMER_USERS["inference"],
            "entrypoint": _sourcing("inference", SERVICE_COMMAND),
            "environment": {
                "PORT": str(SERVICE_PORT),
                "BACKEND": "triton",
                "TRITON_URL": f"triton:{TRITON_GRPC_PORT}",
                "TRITON_PROTOCOL": "grpc",
                "TRITON_MODEL": w.triton_model,
                "STORE": "postgres",
                "PG_DSN": pg_dsn,
                "MODEL_URI": w.model_uri,
                "MODEL_CARD_URI": w.model_card_uri,
                "MODEL_SHA256": w.model_sha256,
                "S3_ENDPOINT_URL": S3_ENDPOINT,
                "AWS_REGION": S3_REGION,
                "LOG_LEVEL": w.log_level,
                "MAX_INSTANCES": str(w.max_instances),
                "SPOOL_DIR": SPOOL_DIR,
                # answered requests' records are fsynced to the spool volume first: a killed
                # container loses none, its restart replays them (service/README.md, "Durability")
                "STORE_DURABILITY": "wal",
                "SHUTDOWN_GRACE_SECONDS": str(STOP_GRACE_SECONDS),
            },
            "volumes": [_secrets_mount("inference"), f"spool:{SPOOL_DIR}"],
            # Compose's default is 10 s; the service plans its stop (requests, flush, spill) to fit
            "stop_grace_period": f"{STOP_GRACE_SECONDS}s",
            "ports": [f"{SERVICE_PORT}:{SERVICE_PORT}"],
            "depends_on": {**written, **configured, "triton": {"condition": "service_started"}},
            "restart": "unless-stopped",
            "logging": _LOGGING,
        },
        "prometheus": {
            "image": w.images.prometheus,
            "command": ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus",
                        f"--storage.tsdb.retention.time={w.prometheus_retention_days}d"],
            "environment": {CONFIG_DIGEST_ENV: config_digest(files, "prometheus")},
            "volumes": [*_config_mounts("prometheus"), "prometheus-data:/prometheus"],
            "ports": [f"{PROMETHEUS_PORT}:{PROMETHEUS_PORT}"],
            "depends_on": configured,
            "restart": "unless-stopped",
            "logging": _LOGGING,
        },
        "grafana": {
            "image": w.images.grafana,
            "user": CONSUMER_USERS["grafana"],
            "entrypoint": ["/bin/sh", "-c", compose_escape(f"{_wait_for(grafana_password, 'grafana')}; exec /run.sh")],
            "environment": {
                "GF_SECURITY_ADMIN_USER": "admin",
                "GF_SECURITY_ADMIN_PASSWORD__FILE": grafana_password,
                "GF_USERS_ALLOW_SIGN_UP": "false",
                "GF_AUTH_ANONYMOUS_ENABLED": "false",
                "GF_ANALYTICS_REPORTING_ENABLED": "false",
                "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
                CONFIG_DIGEST_ENV: config_digest(files, "grafana"),
            },
            "volumes": [*_config_mounts("grafana"), "grafana-data:/var/lib/grafana", _secrets_mount("grafana")],
            "ports": [f"{GRAFANA_PORT}:{GRAFANA_PORT}"],
            "depends_on": {**written, **configured, "prometheus": {"condition": "service_started"}},
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
            "environment": {CONFIG_DIGEST_ENV: config_digest(files, "blackbox-exporter")},
            "volumes": _config_mounts("blackbox-exporter"),
            "depends_on": configured,
            "restart": "unless-stopped",
            "logging": _LOGGING,
        },
        MIGRATE_SERVICE: {
            "image": w.inference_image,
            "profiles": [TOOLS_PROFILE],
            "user": CONSUMER_USERS["inference"],
            "entrypoint": _sourcing("inference", f'{MIGRATE_COMMAND} "$@"', argv0=MIGRATE_SERVICE),
            "environment": {
                "PG_DSN": pg_dsn,
                "S3_ENDPOINT_URL": S3_ENDPOINT,
                "AWS_REGION": S3_REGION,
                "CLICKHOUSE_CA_FILE": CA_FILE,
                "MIGRATE_CHECKPOINT_DIR": MIGRATE_STATE_DIR,
            },
            "volumes": [_secrets_mount("inference"), f"migrate-state:{MIGRATE_STATE_DIR}"],
            "depends_on": {**written, **configured},
            "restart": "no",
            "logging": _LOGGING,
        },
    }
    if w.tls is not None:
        services["tls"] = caddy_service(w.tls, f"inference:{SERVICE_PORT}", "inference", _LOGGING)
    volumes: dict[str, Any] = {name: {} for name in (*STATE_VOLUMES, "prometheus-data", "grafana-data")}
    if w.tls is not None:
        volumes.update({"caddy-data": {}, "caddy-config": {}})
    return {"services": services, "volumes": volumes}


def compose_yaml(w: GpuHostWorkload) -> str:
    text = dump_yaml(compose_document(w))
    if len(text.encode()) > METADATA_VALUE_LIMIT:
        raise ValidationError(f"the compose file is {len(text.encode())} bytes: the instance metadata takes at most "
                              f"{METADATA_VALUE_LIMIT} bytes per key; shrink the generated files")
    return text


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


def gpu_host_user_data(users: Sequence[SshUser]) -> str:
    """The GPU host's user-data: only the SSH users (cloud-init applies it once per instance; a change of it
    recreates the VM, :data:`components.gpu_host.REPLACE_ON_USER_DATA`)."""
    return cloud_config(users)
