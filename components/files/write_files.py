"""Write the configuration files the compose spec carries onto the host, and prepare state directories.

Runs with nothing but the Python standard library, as root, in the inference image on the GPU host:
the compose service ``config`` runs it each time the spec is applied, before the services that
mount what it writes. Because the files travel inside the compose spec, a release that changes
them changes the spec, and the Container-Optimized Image applies the new spec to the running VM.

Environment:
  AISTACK_FILES_ROOT  the directory it owns (bind-mounted from the host): every regular file under it
                      that AISTACK_FILES does not name is removed.
  AISTACK_FILES       base64 of zlib-compressed JSON {"<path relative to the root>": "<text>", ...}:
                      written 0644 (directories 0755), each file replaced atomically.
  AISTACK_DIRS        optional JSON {"<directory>": "<uid>:<gid>"}: created if missing, owned by that
                      user, mode 0700 (the state directories of services that do not run as root).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sys
import zlib
from typing import Any

TMP_SUFFIX = ".aistack-tmp"


class Failure(Exception):
    """What went wrong, said plainly."""


def decode_files(text: str) -> dict[str, str]:
    try:
        files = json.loads(zlib.decompress(base64.b64decode(text, validate=True)))
    except (ValueError, zlib.error) as exc:
        raise Failure(f"AISTACK_FILES is not base64 of zlib-compressed JSON: {exc}") from None
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise Failure("AISTACK_FILES must decode to a JSON object of relative path -> text")
    for relative in files:
        parts = relative.split("/")
        if relative.startswith("/") or not all(parts) or ".." in parts or "." in parts:
            raise Failure(f"AISTACK_FILES: {relative!r} is not a plain relative path")
    return files


def write_tree(root: str, files: dict[str, str]) -> None:
    staged: list[tuple[str, str]] = []
    try:
        for relative, text in sorted(files.items()):
            final = os.path.join(root, relative)
            os.makedirs(os.path.dirname(final), mode=0o755, exist_ok=True)
            tmp = final + TMP_SUFFIX
            if os.path.lexists(tmp):
                os.unlink(tmp)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            staged.append((tmp, final))
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), 0o644)
                fh.write(text.encode())
    except OSError as exc:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise Failure(f"cannot write under {root}: {exc}; nothing was changed") from None
    for tmp, final in staged:
        os.replace(tmp, final)
    wanted = {os.path.join(root, relative) for relative in files}
    for directory, _, names in os.walk(root, topdown=False):
        for name in names:
            path = os.path.join(directory, name)
            if path not in wanted:
                os.unlink(path)
                print(f"write-files: removed {path}", file=sys.stderr)
        if directory != root and not os.listdir(directory):
            os.rmdir(directory)


def prepare_dirs(dirs: Any) -> None:
    if not isinstance(dirs, dict):
        raise Failure("AISTACK_DIRS must be a JSON object of directory -> '<uid>:<gid>'")
    for directory, owner in sorted(dirs.items()):
        uid, sep, gid = str(owner).partition(":")
        if not (str(directory).startswith("/") and sep and uid.isdigit() and gid.isdigit()):
            raise Failure(f"AISTACK_DIRS: {directory!r}: {owner!r} needs an absolute directory and '<uid>:<gid>'")
        os.makedirs(directory, exist_ok=True)
        os.chown(directory, int(uid), int(gid))
        os.chmod(directory, 0o700)


def main() -> int:
    try:
        root = os.environ.get("AISTACK_FILES_ROOT", "")
        if not root.startswith("/") or not os.path.isdir(root):
            raise Failure(f"AISTACK_FILES_ROOT {root!r} is not an existing absolute directory (mount the host's one)")
        files = decode_files(os.environ.get("AISTACK_FILES", ""))
        try:
            dirs = json.loads(os.environ.get("AISTACK_DIRS") or "{}")
        except ValueError as exc:
            raise Failure(f"AISTACK_DIRS is not valid JSON: {exc}") from None
        write_tree(root, files)
        prepare_dirs(dirs)
    except (Failure, OSError) as exc:
        print(f"write-files: {exc}", file=sys.stderr)
        return 1
    print(f"write-files: {len(files)} files under {root}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
