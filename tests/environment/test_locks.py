"""The lock files: current, complete, hash-checked, and what every install path really installs."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def _load_lock_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("project_lock", ROOT / "scripts" / "lock.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


lock = _load_lock_module()
LOCKS = {entry.output: entry for entry in lock.LOCKS}


def test_every_lock_is_current() -> None:
    stale = [reason for entry in lock.LOCKS if (reason := lock.stale(entry))]
    assert not stale, "stale lock files (run `make lock` and commit them): " + "; ".join(stale)


@pytest.fixture
def project_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The dependency lists and locks in a scratch directory that lock.py takes for the project."""
    for entry in lock.LOCKS:
        for name in {*lock.input_files(entry), entry.output}:
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, tmp_path / name)
    monkeypatch.setattr(lock, "ROOT", tmp_path)
    return tmp_path


def test_a_changed_dependency_list_makes_its_locks_stale(project_copy: Path) -> None:
    assert all(lock.stale(entry) is None for entry in lock.LOCKS)
    service_in = project_copy / "service" / "requirements.in"
    service_in.write_text(service_in.read_text() + "# a comment changes nothing\n")
    assert lock.stale(LOCKS["requirements/dev.txt"]) is None
    service_in.write_text(service_in.read_text() + "rich>=13\n")
    # every lock resolved from the service extra; the images' locks follow dev.txt, their constraint
    assert lock.stale(LOCKS["requirements/dev.txt"]) is not None
    assert lock.stale(LOCKS["requirements.txt"]) is not None
    assert lock.stale(LOCKS["requirements/tf.txt"]) is None
    mvp_in = project_copy / "service" / "requirements" / "mvp.in"
    mvp_in.write_text(mvp_in.read_text() + "rich\n")
    assert "service/requirements/mvp.txt" in (lock.stale(LOCKS["service/requirements/mvp.txt"]) or "")
    assert lock.stale(LOCKS["service/requirements/prod.txt"]) is None
    assert lock.main(["--check"]) == 1


STAGES = ("mvp", "partner", "prod")


def _names(path: Path) -> set[str]:
    return {canonicalize_name(Requirement(line).name) for line in lock._requirement_lines(path)}


def test_each_stage_image_installs_a_subset_of_the_service_requirements() -> None:
    """The stage lists name packages only; their ranges are service/requirements.in's, and together
    they cover it (nothing the service needs is left out of every image)."""
    ranges = _names(ROOT / "service" / "requirements.in")
    stages = {stage: _names(ROOT / "service" / "requirements" / f"{stage}.in") for stage in STAGES}
    for stage, names in stages.items():
        assert names <= ranges, \
            f"service/requirements/{stage}.in names {names - ranges}, absent from service/requirements.in"
        for line in lock._requirement_lines(ROOT / "service" / "requirements" / f"{stage}.in"):
            assert not Requirement(line).specifier, \
                f"{stage}.in: {line!r} has a range; ranges live in service/requirements.in"
    assert set().union(*stages.values()) == ranges


def test_a_changed_pyproject_dependency_makes_the_locks_stale(project_copy: Path) -> None:
    pyproject = project_copy / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(text.replace("[tool.ruff]", "[tool.ruff]\n# unrelated settings change nothing\n"))
    assert lock.stale(LOCKS["requirements.txt"]) is None
    pyproject.write_text(text.replace('"PyYAML>=6,<7",', '"PyYAML>=6,<7",\n  "rich>=13",'))
    assert lock.stale(LOCKS["requirements.txt"]) is not None
    assert lock.stale(LOCKS["requirements/dev.txt"]) is not None


def _input_requirements(entry: object) -> list[Requirement]:
    requirements = []
    for name in lock.input_files(entry):
        if name in entry.constraints:
            continue
        if name == "pyproject.toml":
            pyproject = lock._pyproject()
            lines = list(pyproject["project"]["dependencies"])
            if entry.build_backend:
                lines += pyproject["build-system"]["requires"]
        else:
            lines = lock._requirement_lines(ROOT / name)
        requirements += [Requirement(line) for line in lines]
    return requirements


@pytest.mark.parametrize("output", sorted(LOCKS))
def test_each_lock_pins_every_input_requirement_within_its_range(output: str) -> None:
    entry = LOCKS[output]
    pins = lock.pins(ROOT / output)
    for requirement in _input_requirements(entry):
        versions = pins.get(canonicalize_name(requirement.name))
        assert versions, f"{output} does not pin {requirement.name} ({requirement})"
        for version in versions.split("|"):
            assert requirement.specifier.contains(version, prereleases=True), \
                f"{output} pins {requirement.name}=={version}, outside {requirement}"


@pytest.mark.parametrize("output", ["requirements.txt", *(f"service/requirements/{stage}.txt" for stage in STAGES)])
def test_what_ships_runs_the_versions_the_tests_ran(output: str) -> None:
    tested = lock.pins(ROOT / "requirements" / "dev.txt")
    shipped = lock.pins(ROOT / output)
    different = {name: (version, tested.get(name)) for name, version in shipped.items() if tested.get(name) != version}
    assert not different, f"{output} pins other versions than requirements/dev.txt: {different}"


@pytest.mark.parametrize("output", sorted(LOCKS))
def test_locks_carry_hashes_and_no_index_address(output: str) -> None:
    text = (ROOT / output).read_text()
    assert not re.search(r"https?://|--index-url|--extra-index-url|--find-links", text), output
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 4)[-1])
    for block in blocks:
        if lock._PIN.match(block):
            assert "--hash=sha256:" in block, f"{output}: {block.splitlines()[0]} has no hash"


def test_pins_are_exact_and_hash_checking_needs_every_dependency() -> None:
    """uv resolved the whole tree: pip's --require-hashes --no-deps installs must not miss one."""
    pins = lock.pins(ROOT / "requirements.txt")
    for name in ("pulumi", "pulumi-yandex-marketmaker", "fastapi", "onnxruntime", "protobuf", "grpcio", "uv", "pip",
                 "setuptools"):
        assert name in pins, name
    assert "scikit-learn" not in pins and "pytest" not in pins  # the demo and pulumi up need neither


def _shell_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()
            if re.search(r"\bpip (install|sync)\b", line) and not line.lstrip().startswith("#")]


def test_every_install_path_installs_a_lock() -> None:
    """make, CI, the image and the helper scripts install only lock files, hash-checked."""
    ci = yaml.safe_load((ROOT / ".gitlab-ci.yml").read_text())
    scripts = [line for job in ci.values() if isinstance(job, dict)
               for key in ("before_script", "script") for line in job.get(key, [])]
    assert not [line for line in scripts if "pip install" in line], "CI installs with pip directly"
    assert "scripts/venv.sh dev" in ci[".python"]["before_script"]
    assert "scripts/venv.sh runtime" in ci[".pulumi"]["before_script"]
    dockerfile = (ROOT / "service" / "Dockerfile").read_text()
    assert re.search(r"pip install [^\n]*\\\n\s+--require-hashes --no-deps -r /tmp/requirements.txt", dockerfile)
    assert "COPY requirements/${STAGE}.txt /tmp/requirements.txt" in dockerfile
    venv_sh = (ROOT / "scripts" / "venv.sh").read_text()
    assert _shell_lines(venv_sh) == [
        ".venv/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps \\",
        '"$uv" pip sync --quiet --python "$venv/bin/python" --require-hashes "$lock"',
        '"$uv" pip install --quiet --python "$venv/bin/python" --no-deps --no-build-isolation -e .',
    ]
    for script in ("tf-venv.sh", "triton-venv.sh", "install-test-deps.sh"):
        assert not _shell_lines((ROOT / "scripts" / script).read_text()), script
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install" not in makefile
    assert re.search(r"^demo: venv$", makefile, re.M) and re.search(r"^test: venv-dev$", makefile, re.M)


def test_pulumi_creates_the_same_environment_when_it_creates_one() -> None:
    """Pulumi's pip toolchain installs the project directory's requirements.txt into a missing .venv."""
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    assert project["runtime"]["options"] == {"toolchain": "pip", "virtualenv": ".venv"}
    assert lock.recorded_digest(ROOT / "requirements.txt")
    policy = yaml.safe_load((ROOT / "policy" / "PulumiPolicy.yaml").read_text())
    assert policy["runtime"]["options"]["virtualenv"] == "../.venv"
