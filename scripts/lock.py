#!/usr/bin/env python3
"""The lock files: every Python environment the project creates installs exactly one of them.

    scripts/lock.py            # re-resolve what changed (uv pip compile; keeps existing pins)
    scripts/lock.py --upgrade  # move every pin to the newest release the ranges allow
    scripts/lock.py --check    # offline: fail if a lock is stale (its inputs changed since)

Ranges live in ``pyproject.toml`` (the package's own dependencies and its ``service``/``model``/
``dev`` extras, which read ``service/requirements.in`` and ``requirements/*.in``) and in the
``.in`` files of the separate virtualenvs. Each lock is a requirements file with every version
pinned and every distribution's sha256 (pip and uv then install in hash-checking mode), resolved
for every platform and Python the project supports (``--universal``), and without any index
address. Its header records a digest of its inputs, so ``--check`` tells, with no network, that an
input changed without the lock. The environments (``LOCKS`` below):

- ``requirements/bootstrap.txt``: pip and uv, installed into ``.venv`` before anything else;
- ``requirements/dev.txt``: ``.venv`` for ``make test`` (everything: the project, the service,
  the model build, the test and lint tools);
- ``requirements.txt``: ``.venv`` for ``make demo`` and for ``pulumi up`` (Pulumi's pip toolchain
  installs it when it creates ``.venv``): the project and the service, at the versions of
  ``dev.txt``;
- ``service/requirements/<stage>.txt``: the service image of each stage (its backend's and store's
  clients only), at the versions of ``dev.txt`` (what the tests ran is what ships);
- ``requirements/tf.txt``, ``requirements/triton.txt`` and ``requirements/kserve.txt``: ``.venv-tf``,
  ``.venv-triton`` and ``.venv-kserve``.

uv is the resolver (``uv pip compile``): fast, universal resolution with hashes, and it keeps the
pins of an existing output unless told to upgrade. ``make lock`` runs this with the uv of ``.venv``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON_VERSION = "3.11"  # the oldest Python of requires-python: universal locks start there
DIGEST_PREFIX = "# inputs-sha256: "
COMPILE_COMMAND = "make lock"
#: no pre-releases but where a dependency exists only as one (OpenTelemetry's instrumentation, for pulumi)
RESOLVER_OPTIONS = ["--prerelease", "disallow"] + [
    arg for package in ("opentelemetry-instrumentation", "opentelemetry-instrumentation-grpc",
                        "opentelemetry-semantic-conventions")
    for arg in ("--prerelease-package", f"{package}=allow")]


@dataclass(frozen=True)
class Lock:
    output: str
    #: requirement sources: "pyproject.toml" (the package's own dependencies) or .in files
    sources: tuple[str, ...]
    extras: tuple[str, ...] = ()
    #: other locks whose pins this one must reuse
    constraints: tuple[str, ...] = ()
    #: add the build backend (pyproject's build-system.requires): ``pip install -e .`` then needs no download
    build_backend: bool = False
    description: str = ""
    include_project_deps: bool = True
    extra_args: tuple[str, ...] = field(default_factory=tuple)


LOCKS: tuple[Lock, ...] = (
    Lock("requirements/bootstrap.txt", ("requirements/bootstrap.in",),
         description="the installers (pip, uv) that scripts/venv.sh puts into .venv first"),
    Lock("requirements/dev.txt", ("pyproject.toml", "requirements/bootstrap.in"), extras=("service", "model", "dev"),
         constraints=("requirements/bootstrap.txt",), build_backend=True,
         description=".venv for make test: the project, service, model build, tests and linters"),
    Lock("requirements.txt", ("pyproject.toml", "requirements/bootstrap.in"), extras=("service",),
         constraints=("requirements/dev.txt",), build_backend=True,
         description=".venv for make demo and pulumi up (Pulumi.yaml: toolchain pip, virtualenv .venv)"),
    *(Lock(f"service/requirements/{stage}.txt", (f"service/requirements/{stage}.in",),
           constraints=("requirements/dev.txt",),
           description=f"the {stage} service image (service/Dockerfile, STAGE={stage}), at the versions the tests ran")
      for stage in ("mvp", "partner", "prod")),
    Lock("requirements/tf.txt", ("requirements/tf.in",),
         description=".venv-tf: TensorFlow for the SavedModel export and the TF Serving tests"),
    Lock("requirements/kserve.txt", ("requirements/kserve.in",),
         description=".venv-kserve: KServe's Python client for the service's client tests"),
    Lock("requirements/triton.txt", ("requirements/triton.in",),
         description=".venv-triton: the standalone tritonserver of the tests and the benchmark"),
)


class LockError(Exception):
    pass


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _extra_files(pyproject: dict, extra: str) -> list[str]:
    dynamic = pyproject["tool"]["setuptools"]["dynamic"]["optional-dependencies"]
    if extra not in dynamic:
        raise LockError(f"pyproject.toml has no extra {extra!r} (known: {', '.join(sorted(dynamic))})")
    return list(dynamic[extra]["file"])


def input_files(lock: Lock) -> list[str]:
    """Every file whose content decides the lock (pyproject.toml counts only for its dependency tables)."""
    pyproject = _pyproject()
    files: list[str] = []
    for source in lock.sources:
        files.append(source)
    for extra in lock.extras:
        files.extend(_extra_files(pyproject, extra))
    files.extend(lock.constraints)
    return files


def _requirement_lines(path: Path) -> list[str]:
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def inputs_digest(lock: Lock) -> str:
    """sha256 over what the lock was resolved from: requirement lines (comments dropped), the
    dependency tables of pyproject.toml, the pins of the constraint locks, and the settings here."""
    pyproject = _pyproject()
    parts: dict[str, object] = {
        "settings": [lock.output, list(lock.sources), list(lock.extras), list(lock.constraints),
                     lock.build_backend, PYTHON_VERSION, RESOLVER_OPTIONS, list(lock.extra_args)],
    }
    for name in input_files(lock):
        if name == "pyproject.toml":
            project = pyproject["project"]
            parts[name] = {"dependencies": project.get("dependencies", []),
                           "requires-python": project.get("requires-python"),
                           "build-system": pyproject["build-system"]["requires"] if lock.build_backend else None}
        elif name in lock.constraints:
            parts[name] = sorted(pins(ROOT / name).items())
        else:
            parts[name] = _requirement_lines(ROOT / name)
    blob = json.dumps(parts, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    """``{normalized name: version}`` of a lock file (a package pinned under several markers keeps one
    entry per distinct version, joined by ``|``)."""
    found: dict[str, set[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _PIN.match(line)
        if match:
            found.setdefault(normalize(match.group(1)), set()).add(match.group(3))
    return {name: "|".join(sorted(versions)) for name, versions in found.items()}


def recorded_digest(path: Path) -> str | None:
    if not path.is_file():
        return None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(DIGEST_PREFIX):
            return line[len(DIGEST_PREFIX):].strip()
    return None


def stale(lock: Lock) -> str | None:
    """Why ``lock`` is out of date, or None when it is current."""
    path = ROOT / lock.output
    recorded = recorded_digest(path)
    if recorded is None:
        return f"{lock.output} is missing or has no '{DIGEST_PREFIX.strip()}' header"
    if recorded != inputs_digest(lock):
        return f"{lock.output} was resolved from other inputs than {', '.join(input_files(lock))} hold now"
    return None


def _uv() -> str:
    for candidate in (os.environ.get("UV"), str(ROOT / ".venv" / "bin" / "uv"), shutil.which("uv")):
        if candidate and Path(candidate).is_file():
            return candidate
    raise LockError("uv is not installed: run `make venv-dev` (it installs uv from requirements/dev.txt) "
                    "or set UV=/path/to/uv")


def compile_lock(lock: Lock, upgrade: bool) -> None:
    pyproject = _pyproject()
    out = ROOT / lock.output
    with tempfile.TemporaryDirectory() as tmp:
        sources: list[str] = []
        for source in lock.sources:
            sources.append(str(ROOT / source))
        if lock.build_backend:
            build = Path(tmp) / "build-backend.in"
            build.write_text("\n".join(pyproject["build-system"]["requires"]) + "\n", encoding="utf-8")
            sources.append(str(build))
        cmd = [_uv(), "pip", "compile", "--quiet", "--universal", "--python-version", PYTHON_VERSION,
               "--generate-hashes", *RESOLVER_OPTIONS, "--no-emit-package", pyproject["project"]["name"],
               "--custom-compile-command", COMPILE_COMMAND, "--annotation-style", "line",
               "--output-file", str(out), *sources]
        for extra in lock.extras:
            cmd += ["--extra", extra]
        for constraint in lock.constraints:
            cmd += ["--constraint", str(ROOT / constraint)]
        if upgrade:
            cmd.append("--upgrade")
        cmd += list(lock.extra_args)
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            raise LockError(f"uv pip compile for {lock.output} failed:\n{result.stderr.strip()}")
    _write_header(lock, out)


def _write_header(lock: Lock, out: Path) -> None:
    text = out.read_text(encoding="utf-8")
    body = [line for line in text.splitlines() if not line.startswith(DIGEST_PREFIX)
            and not line.startswith("# environment: ")]
    # uv names the inputs by absolute path (the temporary build-backend file too): make them relative
    body = [line.replace(f"{ROOT}/", "") for line in body]
    body = [re.sub(r"\S*/build-backend\.in", "pyproject.toml (build-system)", line) for line in body]
    header = [f"# environment: {lock.description}", f"{DIGEST_PREFIX}{inputs_digest(lock)}"]
    insert_at = 0
    while insert_at < len(body) and body[insert_at].startswith("#"):
        insert_at += 1
    out.write_text("\n".join(body[:insert_at] + header + body[insert_at:]) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help="fail (exit 1) if a lock is out of date; no network")
    group.add_argument("--upgrade", action="store_true", help="re-resolve every pin to the newest allowed release")
    args = parser.parse_args(argv)
    if args.check:
        problems = [reason for lock in LOCKS if (reason := stale(lock))]
        for reason in problems:
            print(f"lock: {reason}: run `make lock` and commit the result", file=sys.stderr)
        return 1 if problems else 0
    try:
        for lock in LOCKS:  # in order: later locks take the pins of earlier ones as constraints
            if args.upgrade or stale(lock):
                compile_lock(lock, upgrade=args.upgrade)
                print(f"lock: wrote {lock.output}")
            else:
                print(f"lock: {lock.output} is current")
    except LockError as exc:
        print(f"lock: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
