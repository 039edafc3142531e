"""Local OCI registries for the delivery tests: Debian's ``docker-registry`` (the CNCF distribution
registry, what Yandex Container Registry and every other registry speak) on 127.0.0.1, and a small
image pushed into one with skopeo.

Needs the Debian packages ``docker-registry`` and ``skopeo`` (requirements/apt.txt).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.service.helpers import free_port

REGISTRY = "/usr/bin/docker-registry"


def require_tools() -> None:
    missing = [tool for tool in ("skopeo", "docker-registry") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: apt-get install {' '.join(missing)} (requirements/apt.txt; "
                    "scripts/install-test-deps.sh does it as part of `make test`)", pytrace=False)


class LocalRegistry:
    """One registry process with its own storage, reachable over plain HTTP at ``host``."""

    def __init__(self, root: Path) -> None:
        require_tools()
        self.root = root
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        config = root / "config.yml"
        config.write_text(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: "
                          f"{root / 'data'}\nhttp:\n  addr: {self.host}\n")
        self.log = (root / "registry.log").open("wb")
        self.proc = subprocess.Popen([REGISTRY, "serve", str(config)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1):
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"docker-registry did not start: {(root / 'registry.log').read_text()}") \
                        from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.log.close()

    def serves(self, repository: str, digest: str) -> bool:
        """Whether ``repository@digest`` can be pulled (its manifest hashes to the digest)."""
        result = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                                 f"docker://{self.host}/{repository}@{digest}"], capture_output=True, timeout=60)
        return result.returncode == 0 and "sha256:" + hashlib.sha256(result.stdout).hexdigest() == digest

    def labels(self, repository: str, digest: str) -> dict[str, str]:
        """The image configuration's labels of ``repository@digest``."""
        result = subprocess.run(["skopeo", "inspect", "--tls-verify=false",
                                 f"docker://{self.host}/{repository}@{digest}"], capture_output=True, text=True,
                                timeout=60, check=True)
        return dict(json.loads(result.stdout).get("Labels") or {})

    def tags(self, repository: str) -> list[str]:
        with urllib.request.urlopen(f"http://{self.host}/v2/{repository}/tags/list", timeout=5) as response:
            return sorted(json.loads(response.read())["tags"] or [])


def push_small_image(registry: LocalRegistry, repository: str, work: Path, content: bytes = b"release\n",
                     tag: str = "build") -> str:
    """Build a one-layer OCI image on disk, push it as ``repository:tag``; return its digest there."""
    layout = work / "oci"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> tuple[str, int]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}", len(data)

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("release.txt")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    layer, layer_size = blob(buffer.getvalue())
    config, config_size = blob(json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                                           "rootfs": {"type": "layers", "diff_ids": [layer]}}).encode())
    manifest, manifest_size = blob(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": layer_size}],
    }).encode())
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest, "size": manifest_size,
         "annotations": {"org.opencontainers.image.ref.name": "build"}}]}))
    subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:build",
                    f"docker://{registry.host}/{repository}:{tag}"], check=True, capture_output=True, timeout=120)
    inspected = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                                f"docker://{registry.host}/{repository}:{tag}"], check=True, capture_output=True,
                               timeout=60)
    return "sha256:" + hashlib.sha256(inspected.stdout).hexdigest()
