"""A GitLab Runner (docker executor, privileged job containers for buildah) on a small Compute
instance, registered with a secret token.

The VM (Ubuntu 22.04 LTS, no public address: egress through the network's NAT gateway) is set up
entirely by cloud-init: Docker from the distribution's packages, then ``gitlab/gitlab-runner``
(pinned tag) registered with the runner authentication token and started with the host's Docker
socket (docker executor). The token lives in a Lockbox secret that only the runner's own service
account may view; at boot ``fetch_secrets.py`` reads it with the VM's IAM token from the metadata
service, so the token is never in the instance metadata, and the fetched copy is removed from
``/run`` once the runner is registered (gitlab-runner keeps it in its root-only ``config.toml``).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

import pulumi

from components.base import StageComponent, ValidationError
from components.gpu_host import boot_image, check_boot_disk
from components.host_workload import SshUser, check_pinned_image, cloud_config, fetch_script
from components.kubernetes import check_cpu_shape
from components.secrets import SecretStore, SecretStoreArgs
from components.yc import yandex

PLATFORM = "standard-v3"
UBUNTU_FAMILY = "ubuntu-2204-lts"
MAX_CORES = 32
DISK_RANGE_GB = (20, 1024)
TOKEN_ENTRY = "CI_SERVER_TOKEN"
SCRIPT_PATH = "/usr/local/lib/aistack/fetch_secrets.py"
TOKEN_DIR = "/run/aistack-runner"
CONFIG_DIR = "/srv/gitlab-runner/config"


def check_runner_shape(cores: int, memory_gb: int, core_fraction: int) -> None:
    check_cpu_shape(PLATFORM, cores, memory_gb, core_fraction, what="runner", max_cores=MAX_CORES)


@dataclass(frozen=True)
class GitlabRunnerArgs:
    folder_id: str
    zone: str
    subnet_id: pulumi.Input[str]
    security_group_ids: Sequence[pulumi.Input[str]]
    #: The runner authentication token (``glrt-...``): a Pulumi secret.
    runner_token: pulumi.Input[str]
    gitlab_url: str = "https://gitlab.com"
    cores: int = 2
    memory_gb: int = 4
    core_fraction: int = 100
    disk_size_gb: int = 64
    disk_type: str = "network-ssd"
    preemptible: bool = False
    concurrent: int = 2
    runner_image: str = "gitlab/gitlab-runner:v17.5.3"
    #: Default image of jobs that name none.
    job_image: str = "alpine:3.20.3"
    image_id: str | None = None
    users: Sequence[SshUser] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.gitlab_url.startswith("https://") or " " in self.gitlab_url:
            raise ValidationError(f"GitLab URL {self.gitlab_url!r} is invalid: use the https:// address of the "
                                  "GitLab instance, e.g. https://gitlab.com")
        check_runner_shape(self.cores, self.memory_gb, self.core_fraction)
        check_boot_disk(self.disk_type, self.disk_size_gb, DISK_RANGE_GB)
        if not 1 <= self.concurrent <= 32:
            raise ValidationError(f"runner concurrency {self.concurrent} is out of range: allowed 1-32")
        check_pinned_image(self.runner_image)
        check_pinned_image(self.job_image)


def runner_user_data(args: GitlabRunnerArgs, token_secret_id: str, name: str) -> str:
    """cloud-init for the runner VM (``token_secret_id`` resolved)."""
    secrets = json.dumps({TOKEN_DIR: [[token_secret_id, TOKEN_ENTRY]]})
    config = f"{CONFIG_DIR}/config.toml"
    register = " ".join([
        "docker run --rm -e CI_SERVER_TOKEN", f"-v {CONFIG_DIR}:/etc/gitlab-runner", shlex.quote(args.runner_image),
        "register --non-interactive", f"--url {shlex.quote(args.gitlab_url)}", "--executor docker",
        f"--docker-image {shlex.quote(args.job_image)}", f"--description {shlex.quote(name)}",
        # the `test` and `build` jobs build images with buildah (vfs storage, chroot isolation),
        # which mounts inside the job's container: the job containers run privileged. The runner is
        # this project's own (not shared), and a fork's merge requests run in the fork's project.
        "--docker-privileged",
    ])
    run = (f"docker run -d --name gitlab-runner --restart always -v {CONFIG_DIR}:/etc/gitlab-runner "
           f"-v /var/run/docker.sock:/var/run/docker.sock {shlex.quote(args.runner_image)}")
    commands = [
        ["systemctl", "enable", "--now", "docker"],
        ["env", f"AISTACK_SECRETS={secrets}", "python3", SCRIPT_PATH],
        ["sh", "-c", f'test -f {config} || CI_SERVER_TOKEN="$(cat {TOKEN_DIR}/{TOKEN_ENTRY})" {register}'],
        ["sed", "-i", f"s/^concurrent = .*/concurrent = {args.concurrent}/", config],
        ["rm", "-rf", TOKEN_DIR],
        ["sh", "-c", f"docker inspect gitlab-runner >/dev/null 2>&1 || {run}"],
    ]
    return cloud_config(args.users, {SCRIPT_PATH: fetch_script()}, packages=["docker.io"], runcmd=commands)


class GitlabRunner(StageComponent):
    component = "runner"

    def __init__(self, name: str, args: GitlabRunnerArgs, labels: dict[str, str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("runner:GitlabRunner", name, labels, opts)
        account = yandex.IamServiceAccount(
            self.child_name("sa"),
            yandex.IamServiceAccountArgs(folder_id=args.folder_id, name=self.child_name("sa"),
                                         description="GitLab Runner VM: reads its registration token only"),
            opts=self.child(),
        )
        token = SecretStore(
            self.child_name("token"),
            SecretStoreArgs(folder_id=args.folder_id, description="GitLab runner authentication token",
                            entries={TOKEN_ENTRY: args.runner_token}, readers=[account.id]),
            labels,
            opts=self.child(),
        )
        image_id = boot_image(self, args.folder_id, UBUNTU_FAMILY, args.image_id)
        user_data = token.secret_id.apply(lambda secret_id: runner_user_data(args, secret_id, name))
        self.instance = yandex.ComputeInstance(
            self.child_name("vm"),
            yandex.ComputeInstanceArgs(
                folder_id=args.folder_id,
                name=self.child_name("vm"),
                hostname=self.child_name("vm"),
                description="GitLab Runner (docker executor)",
                zone=args.zone,
                platform_id=PLATFORM,
                resources=yandex.ComputeInstanceResourcesArgs(cores=args.cores, memory=args.memory_gb,
                                                              core_fraction=args.core_fraction),
                boot_disk=yandex.ComputeInstanceBootDiskArgs(
                    initialize_params=yandex.ComputeInstanceBootDiskInitializeParamsArgs(
                        image_id=image_id, size=args.disk_size_gb, type=args.disk_type),
                    auto_delete=True,
                ),
                network_interfaces=[yandex.ComputeInstanceNetworkInterfaceArgs(
                    subnet_id=args.subnet_id, nat=False, security_group_ids=list(args.security_group_ids))],
                scheduling_policy=yandex.ComputeInstanceSchedulingPolicyArgs(preemptible=args.preemptible),
                service_account_id=account.id,
                metadata={"user-data": user_data, "serial-port-enable": "0"},
                metadata_options=yandex.ComputeInstanceMetadataOptionsArgs(
                    gce_http_endpoint=1, gce_http_token=1, aws_v1_http_endpoint=2, aws_v1_http_token=2),
                allow_stopping_for_update=True,
                labels=self.labels,
            ),
            opts=self.child(),
        )
        self.instance_id: pulumi.Output[str] = self.instance.id
        self.token_secret_id: pulumi.Output[str] = token.secret_id
        self.register_outputs({"instance_id": self.instance_id, "token_secret_id": self.token_secret_id})
