"""TLS on the stages' public endpoints, with certificates the stage obtains and renews itself.

The API key and the predictions must not cross the internet in plain text, so ``partner`` and
``prod`` serve HTTPS on a DNS name (``aistack:tls.host``, an A record of the stage's address) with
a certificate from Let's Encrypt, and answer plain HTTP only with a redirect to HTTPS:

- ``partner``: Caddy (pinned image) in front of the service on the GPU host, on 443 and 80; it
  obtains and renews the certificate (ACME HTTP-01 / TLS-ALPN-01) and redirects HTTP. The
  service's own port 8080 then takes only the VPC and the admin networks.
- ``prod``: cert-manager in the cluster (pinned chart) with a ``ClusterIssuer`` for Let's Encrypt
  solving HTTP-01 through ingress-nginx; the service's Ingress (``deploy/``) names the host, the
  TLS Secret cert-manager fills, and forces the redirect.

Let's Encrypt must reach ports 80/443 of the endpoint while it issues and renews, so the stage's
service CIDRs must include ``0.0.0.0/0`` when TLS is on. ``mvp``'s Serverless Container is HTTPS
already (``*.containers.yandexcloud.net``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.base import ValidationError
from components.k8s_platform import CPU_NODES, INGRESS_CLASS, ChartPin, K8sComponent, meta
from components.network import ANYWHERE

LETSENCRYPT_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"
CERT_MANAGER_CHART = ChartPin("cert-manager", "v1.21.1", "https://charts.jetstack.io")
CLUSTER_ISSUER = "letsencrypt"
#: The Secret cert-manager writes the certificate into (deploy/'s Ingress names it).
TLS_SECRET = "inference-tls"
CADDY_IMAGE = "caddy:2.10.0"
HTTPS_PORT = 443
HTTP_PORT = 80
_HOST = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def check_host(host: str) -> None:
    if not _HOST.match(host):
        raise ValidationError(f"TLS host {host!r} is not a DNS name: give the name clients use, e.g. "
                              "api.example.com (an A record of the stage's address)")


def check_email(email: str) -> None:
    if not _EMAIL.match(email):
        raise ValidationError(f"ACME contact {email!r} is not an e-mail address: Let's Encrypt writes there "
                              "about expiring certificates")


def check_reachable_for_acme(cidrs: Sequence[str], what: str) -> None:
    if ANYWHERE not in cidrs:
        raise ValidationError(f"TLS is on but {what} do not include {ANYWHERE}: Let's Encrypt validates the "
                              "certificate by connecting to ports 80/443 from the internet; open them to "
                              f"{ANYWHERE}, or turn tls.enabled off on a private network")


@dataclass(frozen=True)
class TlsEndpoint:
    """The public name of a stage's endpoint and the ACME account's contact."""

    host: str
    email: str

    def __post_init__(self) -> None:
        check_host(self.host)
        check_email(self.email)

    @property
    def url(self) -> str:
        return f"https://{self.host}/"


# --- partner: Caddy on the GPU host ------------------------------------------------------------------------

def caddyfile(endpoint: TlsEndpoint, upstream: str) -> str:
    """Caddy's configuration: automatic HTTPS for the host (certificate, renewal, HTTP->HTTPS redirect)
    and a reverse proxy to ``upstream`` (``host:port``)."""
    return (f"{{\n\temail {endpoint.email}\n}}\n\n"
            f"{endpoint.host} {{\n\treverse_proxy {upstream}\n\tencode gzip\n}}\n")


def caddy_service(endpoint: TlsEndpoint, upstream: str, depends_on: str, logging: dict[str, Any],
                  image: str = CADDY_IMAGE) -> dict[str, Any]:
    """The compose service terminating TLS. Its configuration travels in the compose spec itself (an
    environment variable the command writes to a file), so a change reaches a running host."""
    return {
        "image": image,
        "command": ["/bin/sh", "-c", 'printf "%s" "$CADDYFILE" > /tmp/Caddyfile && '
                    "exec caddy run --config /tmp/Caddyfile --adapter caddyfile"],
        "environment": {"CADDYFILE": caddyfile(endpoint, upstream)},
        "ports": [f"{HTTP_PORT}:{HTTP_PORT}", f"{HTTPS_PORT}:{HTTPS_PORT}"],
        "volumes": ["caddy-data:/data", "caddy-config:/config"],
        "depends_on": {depends_on: {"condition": "service_started"}},
        "restart": "unless-stopped",
        "logging": logging,
    }


# --- prod: cert-manager in the cluster ----------------------------------------------------------------------

@dataclass(frozen=True)
class CertManagerArgs:
    email: str
    chart: ChartPin = CERT_MANAGER_CHART
    namespace: str = "cert-manager"

    def __post_init__(self) -> None:
        check_email(self.email)


def cluster_issuer(email: str, name: str = CLUSTER_ISSUER) -> dict[str, Any]:
    """Let's Encrypt's production directory, HTTP-01 through the nginx ingress class."""
    return {
        "acme": {
            "server": LETSENCRYPT_DIRECTORY,
            "email": email,
            "privateKeySecretRef": {"name": f"{name}-account"},
            "solvers": [{"http01": {"ingress": {"ingressClassName": INGRESS_CLASS}}}],
        },
    }


class CertManager(K8sComponent):
    """cert-manager (CRDs included) and the ClusterIssuer the service's Ingress names."""

    component = "cert-manager"

    def __init__(self, name: str, args: CertManagerArgs, labels: dict[str, str], provider: k8s.Provider,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("k8s:CertManager", name, labels, provider, opts)
        ns = self.namespace(args.namespace)
        release = self.release("cert-manager", args.chart, ns.metadata.name, {
            "crds": {"enabled": True},
            # ingress-nginx's webhook refuses the Exact-path ingress cert-manager >= 1.18 makes for
            # HTTP-01 challenges (cert-manager#7791): keep the Prefix path it made before
            "featureGates": "ACMEHTTP01IngressPathTypeExact=false",
            "nodeSelector": CPU_NODES,
            "webhook": {"nodeSelector": CPU_NODES},
            "cainjector": {"nodeSelector": CPU_NODES},
            "startupapicheck": {"nodeSelector": CPU_NODES},
        }, depends_on=[ns])
        self.issuer = k8s.apiextensions.CustomResource(
            self.child_name("issuer"),
            api_version="cert-manager.io/v1",
            kind="ClusterIssuer",
            metadata=meta(CLUSTER_ISSUER, None, self.k8s_labels),
            spec=cluster_issuer(args.email),
            opts=self.kchild(depends_on=[release]),
        )
        self.issuer_name = CLUSTER_ISSUER
        self.register_outputs({"issuer": self.issuer_name})
