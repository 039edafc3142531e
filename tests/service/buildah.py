"""buildah for the tests: its storage (vfs, under ``$YC_AISTACK_BUILDAH_ROOT``, default
/var/tmp/yc-aistack-buildah, ~0.2 GB kept), and the Debian bookworm base image made once with
debootstrap (python3 + venv) and reused, so image builds need no registry for their base.

Needs root, ``buildah`` and ``debootstrap`` (requirements/apt.txt) and a Debian mirror.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

BUILDAH_ROOT = Path(os.environ.get("YC_AISTACK_BUILDAH_ROOT", "/var/tmp/yc-aistack-buildah"))
SUITE = "bookworm"
BASE_PACKAGES = "python3,python3-venv,ca-certificates"
BASE_IMAGE = f"localhost/yc-aistack-base:{SUITE}-python3"


def buildah(
    *args: str, check: bool = True, timeout: float = 1800, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    cmd = [
        "buildah",
        "--root",
        str(BUILDAH_ROOT / "storage"),
        "--runroot",
        str(BUILDAH_ROOT / "run"),
        "--storage-driver",
        "vfs",
        *args,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)  # type: ignore[call-overload]
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd[:8])} ... failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def debian_mirror() -> str | None:
    """The Debian mirror apt uses on this machine (None: debootstrap's own default)."""
    texts = []
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if path.is_file() and path.suffix in ("", ".list", ".sources"):
            texts.append(path.read_text(errors="replace"))
    for text in texts:
        for stanza in re.split(r"\n\s*\n", text):  # deb822 .sources
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and SUITE in suites.group(1).split() and "security" not in uris.group(1):
                return uris.group(1)
        for line in text.splitlines():  # one-line format
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == SUITE and "security" not in parts[1]:
                return parts[1] if not parts[1].startswith("[") else parts[2]
    return None


def ensure_base_image(workdir: Path) -> None:
    with (BUILDAH_ROOT / "base.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one debootstrap at a time, shared by concurrent runs
        if buildah("images", "--quiet", BASE_IMAGE, check=False).returncode != 0:
            make_base_image(workdir)


def make_base_image(workdir: Path) -> None:
    rootfs = workdir / "rootfs"
    cmd = ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", SUITE, str(rootfs)]
    mirror = debian_mirror()
    if mirror:
        cmd.append(mirror)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, f"debootstrap failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for item in (rootfs / junk).glob("*"):
            if item.is_file():
                item.unlink()
    container = buildah("from", "scratch").stdout.strip()
    try:
        mount = buildah("mount", container).stdout.strip()
        copy = subprocess.run(["cp", "-a", f"{rootfs}/.", mount], capture_output=True, text=True)
        assert copy.returncode == 0, copy.stderr
        buildah("umount", container)
        buildah("config", "--env", "LANG=C.UTF-8", "--cmd", '["python3"]', container)
        buildah("commit", "--quiet", container, BASE_IMAGE)
    finally:
        buildah("rm", container, check=False)
        shutil.rmtree(rootfs, ignore_errors=True)


def pip_build_volumes(workdir: Path) -> list[str]:
    """Let pip inside the build trust the same certificate authorities as pip on this machine
    (a TLS-inspecting egress proxy adds its own); mounted for the build only, not in a layer."""
    bundle = os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
    if not Path(bundle).is_file():
        return []
    conf = workdir / "pip.conf"
    conf.write_text("[global]\ncert = /etc/pip-build-ca.crt\n")
    return ["--volume", f"{conf}:/etc/pip.conf:ro", "--volume", f"{bundle}:/etc/pip-build-ca.crt:ro"]


def size_mb(size: int | str) -> float:
    """``buildah images --json`` size: bytes, or a human string such as ``"398 MB"``."""
    if isinstance(size, int):
        return size / 1e6
    number, unit = re.fullmatch(r"\s*([\d.]+)\s*([kMGT]?B)\s*", size).groups()  # type: ignore[union-attr]
    return float(number) * {"B": 1e-6, "kB": 1e-3, "MB": 1.0, "GB": 1e3, "TB": 1e6}[unit]
