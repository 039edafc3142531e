"""The prod Deployment's environment (deploy/base + the ``backend-clickhouse`` Secret Pulumi writes)
selects the TF Serving backend and the ClickHouse store with the right connection settings."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import yaml

from service.backends import create_backend
from service.backends.tfserving import TfServingBackend
from service.settings import settings_from_env
from service.stores import create_store
from service.stores.clickhouse import ClickhouseStore

ROOT = Path(__file__).resolve().parents[2]
#: The keys of the Secret components/k8s_platform.py writes (AppNamespace), with example values.
SECRET = {
    "CLICKHOUSE_HOST": "c-example.rw.mdb.yandexcloud.net",
    "CLICKHOUSE_PORT": "8443",
    "CLICKHOUSE_DATABASE": "predictions",
    "CLICKHOUSE_USER": "aistack",
    "CLICKHOUSE_PASSWORD": "s3cret-from-pulumi-random",
    "CLICKHOUSE_SECURE": "true",
}


def _deployment_env() -> dict[str, str]:
    deployment = yaml.safe_load((ROOT / "deploy" / "base" / "deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: str(e["value"]) for e in container["env"] if "value" in e}


def test_the_prod_deployment_environment_selects_tf_serving_and_clickhouse_over_tls() -> None:
    env = {**_deployment_env(), **SECRET}
    settings = settings_from_env(env)
    assert settings.backend == "tfserving" and settings.store == "clickhouse"

    backend = create_backend(settings)
    assert isinstance(backend, TfServingBackend)
    assert backend.url == env["TFSERVING_URL"] and backend.url.endswith(".svc:8501")
    assert backend.model == env["TFSERVING_MODEL"] and backend.predict_path == f"/v1/models/{backend.model}:predict"

    store = create_store(settings)
    assert isinstance(store, ClickhouseStore)
    params = store.params
    assert (params.host, params.port, params.database, params.user) == (
        SECRET["CLICKHOUSE_HOST"],
        8443,
        "predictions",
        "aistack",
    )
    assert params.secure is True and params.dsn is None and params.ttl_days == 365
    assert SECRET["CLICKHOUSE_PASSWORD"] not in repr(settings) + repr(params) + store.describe()
    assert store.describe() == "clickhouse https://aistack@c-example.rw.mdb.yandexcloud.net:8443/predictions"


def test_clickhouse_and_tf_serving_settings_are_validated() -> None:
    with pytest.raises(pydantic.ValidationError, match="CLICKHOUSE_HOST"):
        settings_from_env({"STORE": "clickhouse"})
    with pytest.raises(pydantic.ValidationError, match="TFSERVING_URL"):
        settings_from_env({"TFSERVING_URL": "tf-serving:8501"})
    with pytest.raises(pydantic.ValidationError):
        settings_from_env({"TFSERVING_FORMAT": "csv"})
    with pytest.raises(pydantic.ValidationError):
        settings_from_env({"CLICKHOUSE_TTL_DAYS": "0"})
    s = settings_from_env(
        {"TFSERVING_URL": "http://tf:8501/", "TFSERVING_MODEL_VERSION": "", "CLICKHOUSE_CA_FILE": "/etc/ca.pem"}
    )
    assert s.tfserving_url == "http://tf:8501" and s.tfserving_model_version is None
    assert str(s.clickhouse_ca_file) == "/etc/ca.pem"


def test_the_clickhouse_client_uses_verified_tls_and_the_optional_ca_file(monkeypatch: pytest.MonkeyPatch) -> None:
    import clickhouse_connect

    from service.stores.clickhouse import connect

    calls: list[dict] = []
    monkeypatch.setattr(clickhouse_connect, "get_client", lambda **kwargs: calls.append(kwargs) or "client")
    settings = settings_from_env({**SECRET, "STORE": "clickhouse", "CLICKHOUSE_CA_FILE": "/etc/yandex/RootCA.pem"})
    store = create_store(settings)
    assert isinstance(store, ClickhouseStore)
    assert connect(store.params, settings.clickhouse_password_value) == "client"
    (kwargs,) = calls
    assert kwargs["secure"] is True and kwargs["verify"] is True and kwargs["ca_cert"] == "/etc/yandex/RootCA.pem"
    assert (kwargs["host"], kwargs["port"], kwargs["username"]) == (SECRET["CLICKHOUSE_HOST"], 8443, "aistack")
    assert kwargs["password"] == SECRET["CLICKHOUSE_PASSWORD"] and kwargs["database"] == "predictions"


def test_every_new_variable_is_documented() -> None:
    from service.settings import Settings

    readme = (ROOT / "service" / "README.md").read_text()
    names = [n.upper() for n in Settings.model_fields if n.startswith(("tfserving_", "clickhouse_"))]
    assert names and [n for n in names if f"`{n}`" not in readme and n not in readme] == []
