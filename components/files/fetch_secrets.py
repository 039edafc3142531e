"""Fetch Lockbox secret entries onto a VM at boot, using the VM's service account.

Runs with nothing but the Python standard library (inside the inference image on the GPU host,
with the system python3 on the runner). The VM's service account needs ``lockbox.payloadViewer``
on each secret; its IAM token comes from the metadata service, so no credential is stored in the
instance metadata, the image or the disk.

Environment:
  AISTACK_SECRETS    JSON {"<directory>": [["<secret id>", "<entry key>"], ...], ...}: for each
                     directory, write one file per entry (named after the key) and ``env``, a
                     shell file of KEY='value' lines for ``set -a; . <directory>/env``.
  AISTACK_DOWNLOADS  optional JSON {"<file>": "<https url>"}: public files to fetch (a CA bundle).
  AISTACK_METADATA_URL, AISTACK_LOCKBOX_URL  endpoints (defaults: Yandex Cloud's).
  AISTACK_ATTEMPTS, AISTACK_RETRY_SECONDS    retries while the network or the grant is not ready.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

METADATA_URL = os.environ.get("AISTACK_METADATA_URL", "http://169.254.169.254")
LOCKBOX_URL = os.environ.get("AISTACK_LOCKBOX_URL", "https://payload.lockbox.api.cloud.yandex.net")
TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"
ATTEMPTS = int(os.environ.get("AISTACK_ATTEMPTS", "30"))
RETRY_SECONDS = float(os.environ.get("AISTACK_RETRY_SECONDS", "5"))


def fetch(url: str, headers: dict[str, str] | None = None) -> bytes:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        data: bytes = response.read()
    return data


def retrying(what: str, action: Callable[[], T]) -> T:
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return action()
        except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
            print(f"fetch-secrets: {what}: attempt {attempt}/{ATTEMPTS} failed: {exc}", file=sys.stderr)
            if attempt == ATTEMPTS:
                raise SystemExit(f"fetch-secrets: giving up on {what}") from None
            time.sleep(RETRY_SECONDS)
    raise SystemExit(f"fetch-secrets: no attempts made for {what} (AISTACK_ATTEMPTS={ATTEMPTS})")


def iam_token() -> str:
    body = fetch(METADATA_URL + TOKEN_PATH, {"Metadata-Flavor": "Google"})
    token: str = json.loads(body)["access_token"]
    return token


def payload(secret_id: str, token: str) -> dict[str, str]:
    body = fetch(f"{LOCKBOX_URL}/lockbox/v1/secrets/{secret_id}/payload", {"Authorization": "Bearer " + token})
    entries = json.loads(body)["entries"]
    return {e["key"]: e.get("textValue", "") for e in entries}


def write(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    if os.path.exists(tmp):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o444)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, 0o444)
    os.replace(tmp, path)


def main() -> None:
    wanted = json.loads(os.environ.get("AISTACK_SECRETS", "{}"))
    downloads = json.loads(os.environ.get("AISTACK_DOWNLOADS", "{}"))
    token = retrying("IAM token from the metadata service", iam_token) if wanted else ""
    cache: dict[str, dict[str, str]] = {}
    for directory, pairs in sorted(wanted.items()):
        os.makedirs(directory, exist_ok=True)
        lines: list[str] = []
        for secret_id, key in pairs:
            if secret_id not in cache:
                cache[secret_id] = retrying(f"Lockbox secret {secret_id}", functools.partial(payload, secret_id, token))
            if key not in cache[secret_id]:
                raise SystemExit(f"fetch-secrets: Lockbox secret {secret_id} has no entry {key!r}")
            value = cache[secret_id][key]
            write(os.path.join(directory, key), value.encode())
            lines.append(f"{key}={shlex.quote(value)}\n")
        write(os.path.join(directory, "env"), "".join(lines).encode())
        print(f"fetch-secrets: wrote {len(pairs)} entries to {directory}", file=sys.stderr)
    for path, url in sorted(downloads.items()):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        write(path, retrying(url, functools.partial(fetch, url)))
        print(f"fetch-secrets: downloaded {url} to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
