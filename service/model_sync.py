"""``python -m service.model_sync SOURCE DEST``: copy a model directory from Object Storage to disk.

TensorFlow Serving has had no S3 filesystem since 2.7 (tensorflow/serving#1963: an ``s3://``
``--model_base_path`` only logs ``UNIMPLEMENTED: File system scheme 's3' not implemented`` and
the model never loads). prod's TF Serving pod therefore runs this, from the service image, as an
init container with the workload's Object Storage key, and TF Serving serves the local copy.

Every object below ``SOURCE`` (``s3://<bucket>/<prefix>``) is written below ``DEST`` at its path
relative to the prefix; each file goes to a temporary name first and is renamed when complete, so
an interrupted copy leaves no partial file behind, and a second run rewrites nothing that is
already there with the same size. The copy fails (exit status 1, one line on stderr saying what
is wrong) when ``SOURCE`` holds no object, when a key would land outside ``DEST``, or when no
version directory (``<integer>/saved_model.pb``, what TF Serving loads) arrived. Object Storage
is reached as everywhere in the service: ``S3_ENDPOINT_URL``, ``AWS_REGION`` and the standard
credential variables (:mod:`service.s3`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from service.s3 import S3Params, make_s3_client, split_s3_uri

SAVED_MODEL = "saved_model.pb"


class SyncError(Exception):
    pass


def _objects(client: Any, bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            yield item["Key"], int(item["Size"])


def _target(dest: Path, prefix: str, key: str) -> Path | None:
    relative = PurePosixPath(key[len(prefix):])
    if not relative.parts:
        return None  # the prefix itself (a "directory" placeholder object)
    if relative.is_absolute() or ".." in relative.parts:
        raise SyncError(f"object key {key!r} would be written outside {dest}: refusing it")
    return dest.joinpath(*relative.parts)


def version_dirs(dest: Path) -> list[int]:
    """The version directories below ``dest`` that hold a SavedModel, as TF Serving finds them."""
    return sorted(int(p.name) for p in dest.iterdir()
                  if p.is_dir() and p.name.isdigit() and (p / SAVED_MODEL).is_file()) if dest.is_dir() else []


def sync(source: str, dest: Path, environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """Copy ``source`` into ``dest``; returns (files written, files already there)."""
    bucket, prefix = split_s3_uri(source.rstrip("/") + "/")
    client = make_s3_client(S3Params.from_env(environ))
    written = kept = 0
    seen = False
    for key, size in _objects(client, bucket, prefix):
        seen = True
        target = _target(dest, prefix, key)
        if target is None or key.endswith("/"):
            continue
        if target.is_file() and target.stat().st_size == size:
            kept += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        with partial.open("wb") as fh:
            while chunk := body.read(1 << 20):
                fh.write(chunk)
        partial.replace(target)
        written += 1
    if not seen:
        raise SyncError(f"{source} holds no object: publish the model there first (stagectl model publish)")
    if not version_dirs(dest):
        raise SyncError(f"{source} holds no version directory with a {SAVED_MODEL} (expected <version>/"
                        f"{SAVED_MODEL} below the prefix, as TF Serving loads it)")
    return written, kept


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m service.model_sync s3://BUCKET/PREFIX DEST_DIR", file=sys.stderr)
        return 2
    source, dest = argv[0], Path(argv[1])
    try:
        written, kept = sync(source, dest, os.environ)
    except (SyncError, ValueError) as exc:
        print(f"model_sync: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # botocore's errors (credentials, endpoint, access denied) end the pod's init
        print(f"model_sync: cannot copy {source}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"model_sync: {source} -> {dest}: {written} file(s) written, {kept} already there; versions "
          f"{', '.join(map(str, version_dirs(dest)))}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
