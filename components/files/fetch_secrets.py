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
  AISTACK_OWNERS     optional JSON {"<directory>": "<uid>:<gid>"}: that directory (mode 0500) and
                     every file written into it (mode 0400) belong to that user alone, the one its
                     consumer runs as. Files in other directories are written 0444.
  AISTACK_READY_FILE optional: removed at start, created once every file is in place (a health check).
  AISTACK_STAY       "1": keep running once done (until SIGTERM), so that a restart policy runs the
                     script again whenever Docker starts (a reboot empties a tmpfs).
  AISTACK_METADATA_URL, AISTACK_LOCKBOX_URL  endpoints (defaults: Yandex Cloud's).
  AISTACK_ATTEMPTS, AISTACK_RETRY_SECONDS    retries while the network or the grant is not ready.

Nothing is written before every entry and download has been read: a failure (metadata service
down, no grant, a missing entry) exits non-zero, names what failed, and leaves no file behind.
A rerun replaces the files atomically and removes those the configuration no longer names.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import re
import shlex
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

METADATA_URL = os.environ.get("AISTACK_METADATA_URL", "http://169.254.169.254")
LOCKBOX_URL = os.environ.get("AISTACK_LOCKBOX_URL", "https://payload.lockbox.api.cloud.yandex.net")
TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"
ATTEMPTS = int(os.environ.get("AISTACK_ATTEMPTS", "30"))
RETRY_SECONDS = float(os.environ.get("AISTACK_RETRY_SECONDS", "5"))
ENV_FILE = "env"
TMP_SUFFIX = ".aistack-tmp"
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HINTS = {
    401: "the IAM token was refused",
    403: "the VM's service account may not read it: grant it lockbox.payloadViewer on the secret "
         "(a new grant can take a minute to apply)",
    404: "no such secret: check the secret id",
}


class Failure(Exception):
    """What went wrong, said plainly; nothing has been written."""


def fetch(url: str, headers: dict[str, str] | None = None) -> bytes:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        data: bytes = response.read()
    return data


def retrying(what: str, action: Callable[[], T]) -> T:
    reason = hint = ""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return action()
        except urllib.error.HTTPError as exc:
            reason, hint = f"HTTP {exc.code} {exc.reason}", _HINTS.get(exc.code, "")
        except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError) as exc:
            reason, hint = f"{type(exc).__name__}: {exc}", ""
        print(f"fetch-secrets: {what}: attempt {attempt}/{ATTEMPTS} failed: {reason}", file=sys.stderr)
        if attempt < ATTEMPTS:
            time.sleep(RETRY_SECONDS)
    raise Failure(f"giving up on {what} after {ATTEMPTS} attempts: {reason}" + (f" ({hint})" if hint else ""))


def iam_token() -> str:
    body = fetch(METADATA_URL + TOKEN_PATH, {"Metadata-Flavor": "Google"})
    token = json.loads(body)["access_token"]
    if not isinstance(token, str) or not token:
        raise ValueError("the metadata service answered without an access_token")
    return token


def payload(secret_id: str, token: str) -> dict[str, bytes]:
    body = fetch(f"{LOCKBOX_URL}/lockbox/v1/secrets/{secret_id}/payload", {"Authorization": "Bearer " + token})
    values: dict[str, bytes] = {}
    for entry in json.loads(body)["entries"]:
        if "binaryValue" in entry:
            values[entry["key"]] = base64.b64decode(entry["binaryValue"])
        else:
            values[entry["key"]] = str(entry.get("textValue", "")).encode()
    return values


def _json_setting(name: str, default: str) -> Any:
    try:
        return json.loads(os.environ.get(name) or default)
    except ValueError as exc:
        raise Failure(f"{name} is not valid JSON: {exc}") from None


def _owner(directory: str, value: Any) -> tuple[int, int]:
    uid, sep, gid = str(value).partition(":")
    if not (sep and uid.isdigit() and gid.isdigit()):
        raise Failure(f"AISTACK_OWNERS[{directory!r}] is {value!r}: give '<uid>:<gid>' in numbers, e.g. '472:0'")
    return int(uid), int(gid)


def plan_files(wanted: Any, downloads: Any, owners: dict[str, tuple[int, int]]) -> dict[str, dict[str, bytes]]:
    """Directory -> file name -> content, everything read before anything is written."""
    if not isinstance(wanted, dict) or not isinstance(downloads, dict):
        raise Failure("AISTACK_SECRETS and AISTACK_DOWNLOADS must be JSON objects")
    for directory in [*wanted, *owners]:
        if not str(directory).startswith("/"):
            raise Failure(f"{directory!r} is not an absolute directory")
    for directory, pairs in wanted.items():
        for pair in pairs:
            if not (isinstance(pair, list) and len(pair) == 2 and _KEY.fullmatch(str(pair[1]))):
                raise Failure(f"AISTACK_SECRETS[{directory!r}]: {pair!r} is not a [secret id, KEY] pair with a "
                              "shell variable name as KEY")
    files: dict[str, dict[str, bytes]] = {directory: {} for directory in wanted}
    token = retrying("IAM token from the metadata service", iam_token) if any(wanted.values()) else ""
    cache: dict[str, dict[str, bytes]] = {}
    for directory, pairs in sorted(wanted.items()):
        lines: list[str] = []
        for secret_id, key in pairs:
            if secret_id not in cache:
                cache[secret_id] = retrying(f"Lockbox secret {secret_id}", functools.partial(payload, secret_id, token))
            if key not in cache[secret_id]:
                present = ", ".join(sorted(cache[secret_id])) or "none"
                raise Failure(f"Lockbox secret {secret_id} has no entry {key!r} (wanted in {directory}; its entries: "
                              f"{present}): add the entry to the secret's current version or correct the key")
            value = cache[secret_id][key]
            try:
                text = value.decode()
            except UnicodeDecodeError:
                raise Failure(f"Lockbox secret {secret_id} entry {key!r} is not UTF-8 text, so it cannot go into "
                              f"{directory}/{ENV_FILE}: store it as a text value") from None
            files[directory][key] = value
            lines.append(f"{key}={shlex.quote(text)}\n")
        files[directory][ENV_FILE] = "".join(lines).encode()
    fetched: dict[str, bytes] = {}
    for path, url in sorted(downloads.items()):
        if url not in fetched:
            fetched[url] = retrying(url, functools.partial(fetch, str(url)))
        directory, name = os.path.split(str(path))
        if not directory.startswith("/") or not name:
            raise Failure(f"AISTACK_DOWNLOADS: {path!r} is not an absolute file path")
        files.setdefault(directory, {})[name] = fetched[url]
    unknown = sorted(set(owners) - set(files))
    if unknown:
        raise Failure(f"AISTACK_OWNERS names {', '.join(unknown)}, where nothing is written: remove it or add entries")
    return files


def write_all(files: dict[str, dict[str, bytes]], owners: dict[str, tuple[int, int]]) -> None:
    """Write every file next to its place first, then move them all into place; on an error remove what was
    written, so a directory holds either the previous set of files or the new one."""
    staged: list[tuple[str, str]] = []
    try:
        for directory, entries in sorted(files.items()):
            os.makedirs(directory, exist_ok=True)
            owner = owners.get(directory)
            if owner is not None:
                os.chown(directory, *owner)
                os.chmod(directory, 0o500)
            mode = 0o400 if owner is not None else 0o444
            for name, data in sorted(entries.items()):
                final = os.path.join(directory, name)
                tmp = final + TMP_SUFFIX
                if os.path.lexists(tmp):
                    os.unlink(tmp)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
                staged.append((tmp, final))
                with os.fdopen(fd, "wb") as fh:
                    if owner is not None:
                        os.fchown(fh.fileno(), *owner)
                    os.fchmod(fh.fileno(), mode)
                    fh.write(data)
    except OSError as exc:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise Failure(f"cannot write the secrets ({exc}); nothing was changed") from None
    # each directory's env file last: a consumer waiting for it finds everything else already there
    for tmp, final in sorted(staged, key=lambda pair: os.path.basename(pair[1]) == ENV_FILE):
        os.replace(tmp, final)
    for directory, entries in files.items():
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            if name not in entries and (os.path.islink(path) or os.path.isfile(path)):
                os.unlink(path)


def main() -> int:
    ready = os.environ.get("AISTACK_READY_FILE", "")
    if ready:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(ready)
    try:
        wanted = _json_setting("AISTACK_SECRETS", "{}")
        downloads = _json_setting("AISTACK_DOWNLOADS", "{}")
        raw_owners = _json_setting("AISTACK_OWNERS", "{}")
        if not isinstance(raw_owners, dict):
            raise Failure("AISTACK_OWNERS must be a JSON object")
        owners = {directory: _owner(directory, value) for directory, value in raw_owners.items()}
        files = plan_files(wanted, downloads, owners)
        write_all(files, owners)
    except Failure as exc:
        print(f"fetch-secrets: {exc}", file=sys.stderr)
        return 1
    for directory, entries in sorted(files.items()):
        print(f"fetch-secrets: wrote {len(entries)} files to {directory}", file=sys.stderr)
    if ready:
        os.close(os.open(ready, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o444))
    if os.environ.get("AISTACK_STAY") == "1":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        print("fetch-secrets: done; staying up so that a restart of Docker runs this again", file=sys.stderr)
        while True:
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
