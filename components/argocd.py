"""ArgoCD (Helm, pinned) and the ``Application`` that syncs the service's manifests from git.

The ``argo-cd`` chart runs in ``argocd`` on the CPU nodes, its API/UI only inside the cluster
(``kubectl port-forward svc/argocd-server -n argocd 8080:443`` for people). Pulumi also creates:

- an ``AppProject`` that confines the service's Application to the one repository, the one
  destination namespace and the kinds ``deploy/`` holds (:data:`GITOPS_KINDS`; no cluster-scoped
  kind at all);
- the ``Application`` that syncs ``deploy/overlays/prod`` at the configured revision into that
  namespace with automated sync, prune and self-heal: a merge to that path is a deploy, and a
  manual change in the cluster is reverted;
- for a private repository, ArgoCD's repository Secret holding a read-only token (a Pulumi
  secret, config key ``aistack:gitopsRepoToken``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.base import ValidationError
from components.k8s_platform import ARGOCD_CHART, CPU_NODES, ChartPin, K8sComponent, check_namespace, meta

IN_CLUSTER = "https://kubernetes.default.svc"
#: (API group, kind) of every object deploy/ may hold; the AppProject allows exactly these.
GITOPS_KINDS: tuple[tuple[str, str], ...] = (
    ("", "ServiceAccount"),
    ("", "Service"),
    ("", "ConfigMap"),
    ("apps", "Deployment"),
    ("autoscaling", "HorizontalPodAutoscaler"),
    ("policy", "PodDisruptionBudget"),
    ("networking.k8s.io", "Ingress"),
    ("networking.k8s.io", "NetworkPolicy"),
)
_REPO = re.compile(r"^(https://[^\s]+|git@[^\s:]+:[^\s]+)$")


def server_url(namespace: str) -> str:
    return f"https://argocd-server.{namespace}.svc"


def check_source(repo_url: str, path: str, revision: str) -> None:
    if not _REPO.match(repo_url):
        raise ValidationError(f"GitOps repository {repo_url!r} is invalid: give its https:// clone URL (or "
                              "git@host:group/repo.git)")
    if not path or path.startswith("/") or ".." in path.split("/"):
        raise ValidationError(f"GitOps path {path!r} is invalid: give the overlay's path relative to the "
                              "repository root, e.g. deploy/overlays/prod")
    if not revision or any(c.isspace() for c in revision):
        raise ValidationError(f"GitOps revision {revision!r} is invalid: give a branch, tag or commit, e.g. main")


@dataclass(frozen=True)
class ArgoCdArgs:
    repo_url: str
    app_namespace: str
    path: str = "deploy/overlays/prod"
    target_revision: str = "main"
    app_name: str = "aistack-prod"
    project: str = "aistack"
    chart: ChartPin = ARGOCD_CHART
    namespace: str = "argocd"
    #: Read-only token of a private repository (a Pulumi secret) and the user it belongs to.
    repo_token: pulumi.Input[str] | None = None
    repo_username: str = "argocd"

    def __post_init__(self) -> None:
        check_source(self.repo_url, self.path, self.target_revision)
        check_namespace(self.namespace)
        check_namespace(self.app_namespace)
        check_namespace(self.app_name)
        check_namespace(self.project)


def argocd_values() -> dict[str, Any]:
    return {
        "global": {"nodeSelector": CPU_NODES},
        "configs": {
            "params": {"server.insecure": False},
            "cm": {"timeout.reconciliation": "180s", "exec.enabled": False, "admin.enabled": True},
        },
        "server": {"service": {"type": "ClusterIP"}, "ingress": {"enabled": False}},
        "dex": {"enabled": False},
        "notifications": {"enabled": False},
        "redis-ha": {"enabled": False},
        "controller": {"replicas": 1},
    }


def app_project_spec(args: ArgoCdArgs) -> dict[str, Any]:
    return {
        "description": "The inference service of the prod stage (deploy/)",
        "sourceRepos": [args.repo_url],
        "destinations": [{"server": IN_CLUSTER, "namespace": args.app_namespace}],
        "clusterResourceWhitelist": [],
        "namespaceResourceWhitelist": [{"group": group, "kind": kind} for group, kind in GITOPS_KINDS],
    }


def application_spec(args: ArgoCdArgs) -> dict[str, Any]:
    return {
        "project": args.project,
        "source": {"repoURL": args.repo_url, "targetRevision": args.target_revision, "path": args.path},
        "destination": {"server": IN_CLUSTER, "namespace": args.app_namespace},
        "syncPolicy": {
            "automated": {"prune": True, "selfHeal": True, "allowEmpty": False},
            "syncOptions": ["CreateNamespace=false", "PruneLast=true", "PrunePropagationPolicy=foreground"],
            "retry": {"limit": 5, "backoff": {"duration": "10s", "factor": 2, "maxDuration": "3m"}},
        },
        "revisionHistoryLimit": 10,
    }


class ArgoCd(K8sComponent):
    component = "argocd"

    def __init__(self, name: str, args: ArgoCdArgs, labels: dict[str, str], provider: k8s.Provider,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("k8s:ArgoCd", name, labels, provider, opts)
        ns = self.namespace(args.namespace)
        self.release_ = self.release("argocd", args.chart, ns.metadata.name, argocd_values())
        after: list[pulumi.Resource] = [self.release_]
        if args.repo_token is not None:
            token = args.repo_token
            repository = k8s.core.v1.Secret(
                self.child_name("repo"),
                k8s.core.v1.SecretInitArgs(
                    metadata=meta("aistack-gitops-repo", args.namespace,
                                  {**self.k8s_labels, "argocd.argoproj.io/secret-type": "repository"}),
                    type="Opaque",
                    string_data=pulumi.Output.secret(pulumi.Output.from_input(token).apply(lambda t: {
                        "type": "git", "url": args.repo_url, "username": args.repo_username, "password": t})),
                ),
                opts=self.kchild(depends_on=[ns]),
            )
            after.append(repository)
        self.project = k8s.apiextensions.CustomResource(
            self.child_name("project"),
            api_version="argoproj.io/v1alpha1",
            kind="AppProject",
            metadata=meta(args.project, args.namespace, self.k8s_labels),
            spec=app_project_spec(args),
            opts=self.kchild(depends_on=after),
        )
        self.application = k8s.apiextensions.CustomResource(
            self.child_name("application"),
            api_version="argoproj.io/v1alpha1",
            kind="Application",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=args.app_name, namespace=args.namespace, labels=self.k8s_labels,
                finalizers=["resources-finalizer.argocd.argoproj.io"]),
            spec=application_spec(args),
            opts=self.kchild(depends_on=[*after, self.project]),
        )
        self.url = server_url(args.namespace)
        self.register_outputs({"url": self.url, "application": args.app_name})
