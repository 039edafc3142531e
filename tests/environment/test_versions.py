"""One Pulumi version everywhere, and the SDK internals the offline plan relies on."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import yaml

from stagectl.plan import SDK_INTERNALS, missing_sdk_internals

ROOT = Path(__file__).resolve().parents[2]


def pinned_pulumi_version() -> str:
    """The one place the Pulumi version is stated: pyproject.toml's exact pin of the SDK."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in dependencies if re.match(r"pulumi\s*[=<>!~]", d)]
    match = re.fullmatch(r"pulumi==(\d+\.\d+\.\d+)", pin.replace(" ", ""))
    assert match, f"pyproject.toml must pin the Pulumi SDK exactly (pulumi==X.Y.Z), not {pin!r}"
    return match.group(1)


def test_the_sdk_the_cli_and_the_locks_name_one_version() -> None:
    version = pinned_pulumi_version()
    for lock in ("requirements.txt", "requirements/dev.txt"):
        assert re.search(rf"^pulumi=={re.escape(version)} ", (ROOT / lock).read_text(), re.M), lock
    assert importlib.metadata.version("pulumi") == version  # this environment is the lock's
    ci = yaml.safe_load((ROOT / ".gitlab-ci.yml").read_text())
    image = ci["variables"]["PULUMI_IMAGE"]
    assert image == f"pulumi/pulumi-python-3.11:{version}", \
        f".gitlab-ci.yml runs Pulumi CLI {image!r}, but the SDK is pinned to {version} (pyproject.toml)"
    assert ci[".pulumi"]["image"]["name"] == "$PULUMI_IMAGE"
    go_mod = (ROOT / "tools" / "pulumi" / "go.mod").read_text()
    assert re.search(rf"^require github\.com/pulumi/pulumi/pkg/v3 v{re.escape(version)}$", go_mod, re.M), \
        f"tools/pulumi/go.mod (the CLI the pipeline rehearsal runs) must require pkg/v3 v{version}"


def test_the_ci_image_python_is_one_the_project_supports() -> None:
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    image = yaml.safe_load((ROOT / ".gitlab-ci.yml").read_text())["variables"]["PULUMI_IMAGE"]
    python = re.search(r"pulumi-python-(\d+\.\d+):", image)
    assert python, f"{image}: use Pulumi's per-Python image (pulumi/pulumi-python-3.11), whose Python is known"
    from packaging.specifiers import SpecifierSet

    assert SpecifierSet(requires).contains(python.group(1) + ".0")


def test_every_sdk_internal_the_plan_uses_exists() -> None:
    missing = missing_sdk_internals()
    assert not missing, (
        f"Pulumi SDK {importlib.metadata.version('pulumi')} lacks internals that stagectl/plan.py and "
        f"stacks/stages.py use: {', '.join(missing)} (see SDK_INTERNALS in stagectl/plan.py)")


def test_the_internals_check_names_what_is_missing() -> None:
    assert "pulumi.runtime.settings.set_root_resource" in SDK_INTERNALS
    assert missing_sdk_internals(("pulumi.runtime.settings.set_root_resource", "pulumi.runtime.no_such_thing",
                                  "pulumi.no_such_module.x")) == ["pulumi.runtime.no_such_thing",
                                                                  "pulumi.no_such_module.x"]


def test_every_internal_is_listed_where_the_plan_says() -> None:
    """The comment and the tuple list the same names, and the code uses nothing private beyond them."""
    source = (ROOT / "stagectl" / "plan.py").read_text() + (ROOT / "stacks" / "stages.py").read_text()
    used = set(re.findall(r"from (pulumi\.[\w.]+) import (_?\w+)", source))
    listed = {name.rsplit(".", 1)[0] for name in SDK_INTERNALS} | set(SDK_INTERNALS)
    for module, name in used:
        assert f"{module}.{name}" in listed or module in listed, f"{module}.{name} is used but not in SDK_INTERNALS"
