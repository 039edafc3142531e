"""Container Registry for the service image, with pull access for the workloads only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pulumi

from components.base import StageComponent
from components.yc import yandex

REGISTRY_HOST = "cr.yandex"
#: The repository the service image is pushed to in every stage's registry.
SERVICE_REPOSITORY = "inference"


@dataclass(frozen=True)
class ImageRegistryArgs:
    folder_id: str
    repository: str = SERVICE_REPOSITORY
    #: Service account ids allowed to pull images.
    pullers: Sequence[pulumi.Input[str]] = field(default_factory=list)


class ImageRegistry(StageComponent):
    component = "registry"

    def __init__(self, name: str, args: ImageRegistryArgs, labels: dict[str, str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("registry:ImageRegistry", name, labels, opts)
        self.registry = yandex.ContainerRegistry(
            self.child_name("registry"),
            yandex.ContainerRegistryArgs(folder_id=args.folder_id, name=self.child_name("registry"),
                                         labels=self.labels),
            opts=self.child(),
        )
        #: The pull permission (an authoritative binding): a workload must not start before it exists.
        self.pull_grants: list[pulumi.Resource] = []
        if args.pullers:
            self.pull_grants.append(yandex.ContainerRegistryIamBinding(
                self.child_name("pullers"),
                yandex.ContainerRegistryIamBindingArgs(
                    registry_id=self.registry.id,
                    role="container-registry.images.puller",
                    members=[pulumi.Output.from_input(p).apply(lambda i: f"serviceAccount:{i}")
                             for p in args.pullers],
                ),
                opts=self.child(),
            ))
        self.registry_id: pulumi.Output[str] = self.registry.id
        #: ``cr.yandex/<registry-id>/<repository>``: where CI pushes the service image.
        self.repository_url: pulumi.Output[str] = pulumi.Output.concat(
            REGISTRY_HOST, "/", self.registry.id, "/", args.repository)
        self.register_outputs({"registry_id": self.registry_id, "repository_url": self.repository_url})
