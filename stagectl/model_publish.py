"""``stagectl model publish``: upload a built model to Object Storage where the stages read it.

Keys, below ``<prefix><name>/<sha256>/`` (``models/digits/<sha256>/`` by default; the sha256 of
``model.onnx`` pins the release, ``<name>`` is the stage's ``model.name``):

- ``model.onnx`` and ``card.json``: the in-process ONNX Runtime backend (``MODEL_URI``);
- ``triton/...``: the Triton model repository, if ``components.triton_repo.write_layout`` wrote
  it (``<model dir>/triton``);
- ``tf/<version>/...``: the TensorFlow SavedModel (``stagectl model build`` / ``export-tf`` write
  ``<model dir>/tf/<version>``); TF Serving's ``--model_base_path`` is ``s3://<bucket>/.../tf``.

The card is uploaded last, so a reader that finds it finds everything else. Nothing is uploaded if
a local artifact does not match the card's sha256. Object Storage is reached through boto3 with
``S3_ENDPOINT_URL`` (Yandex Object Storage by default) and ``AWS_REGION`` (``ru-central1``);
credentials come from the environment (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODEL_FILE = "model.onnx"
CARD_FILE = "card.json"
TRITON_DIR = "triton"
TF_DIR = "tf"
DEFAULT_PREFIX = "models/"
#: Yandex Object Storage's S3 API and region (the service's defaults, ``service/s3.py``).
DEFAULT_ENDPOINT = "https://storage.yandexcloud.net"
DEFAULT_REGION = "ru-central1"

_CONTENT_TYPES = {".json": "application/json", ".pbtxt": "text/plain", ".onnx": "application/octet-stream"}


class PublishError(Exception):
    pass


@dataclass
class PublishPlan:
    bucket: str
    #: ``<prefix><name>/<sha256>/``
    prefix: str
    #: (local file, object key), in upload order
    uploads: list[tuple[Path, str]] = field(default_factory=list)
    has_triton: bool = False
    tf_versions: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        base = f"s3://{self.bucket}/{self.prefix}"
        out: dict[str, Any] = {
            "bucket": self.bucket,
            "prefix": self.prefix,
            "model_uri": base + MODEL_FILE,
            "model_card_uri": base + CARD_FILE,
            "objects": [key for _, key in self.uploads],
        }
        if self.has_triton:
            out["triton_repository"] = base + TRITON_DIR
        if self.tf_versions:
            out["tf_model_base_path"] = base + TF_DIR
            out["tf_versions"] = self.tf_versions
        return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files(root: Path) -> list[Path]:
    """Files below ``root``, skipping hidden ones (an export in progress writes to ``.tf-export-*``)."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def plan_publish(model_dir: Path, bucket: str, name: str | None = None, prefix: str = DEFAULT_PREFIX) -> PublishPlan:
    """What :func:`publish` uploads, checked against the card; raises :class:`PublishError`."""
    model_dir = Path(model_dir)
    model, card_path = model_dir / MODEL_FILE, model_dir / CARD_FILE
    if not model.is_file() or not card_path.is_file():
        raise PublishError(f"{model_dir} has no {MODEL_FILE} + {CARD_FILE}: run `stagectl model build` first")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
        sha256 = str(card["sha256"]).lower()
    except (ValueError, KeyError, TypeError) as exc:
        raise PublishError(f"{card_path} is not a model card: {exc}") from None
    actual = _sha256(model)
    if actual != sha256:
        raise PublishError(f"{model} has sha256 {actual} but its card says {sha256}: rebuild the model")
    if not bucket:
        raise PublishError("no bucket: pass --bucket (the stage bucket, `pulumi stack output` shows it)")
    name = name or str(card.get("name") or "")
    if not name or "/" in name:
        raise PublishError(f"invalid model name {name!r}")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    plan = PublishPlan(bucket, f"{prefix}{name}/{sha256}/")

    triton = model_dir / TRITON_DIR
    if triton.is_dir():
        onnx_copies = [p for p in _files(triton) if p.name == MODEL_FILE]
        for copy in onnx_copies:
            if _sha256(copy) != sha256:
                raise PublishError(f"{copy} is not the card's model (stale Triton layout): write the layout again")
        for path in _files(triton):
            plan.uploads.append((path, f"{plan.prefix}{TRITON_DIR}/{path.relative_to(triton).as_posix()}"))
        plan.has_triton = bool(onnx_copies)

    tf_root = model_dir / TF_DIR
    if tf_root.is_dir():
        versions = sorted((p for p in tf_root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
        for version_dir in versions:
            if not (version_dir / "saved_model.pb").is_file():
                raise PublishError(f"{version_dir} has no saved_model.pb: run `stagectl model export-tf` again")
            for path in _files(version_dir):
                plan.uploads.append((path, f"{plan.prefix}{TF_DIR}/{path.relative_to(tf_root).as_posix()}"))
            plan.tf_versions.append(int(version_dir.name))

    plan.uploads.append((model, plan.prefix + MODEL_FILE))
    plan.uploads.append((card_path, plan.prefix + CARD_FILE))
    return plan


def s3_client() -> Any:
    """boto3 S3 client for ``S3_ENDPOINT_URL`` / ``AWS_REGION`` (path-style addressing)."""
    import boto3  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]

    return boto3.client(
        "s3",
        endpoint_url=os.environ.get("S3_ENDPOINT_URL") or DEFAULT_ENDPOINT,
        region_name=os.environ.get("AWS_REGION") or DEFAULT_REGION,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3, "mode": "standard"}),
    )


def publish(plan: PublishPlan, client: Any | None = None) -> None:
    client = client or s3_client()
    for path, key in plan.uploads:
        extra = {"ContentType": _CONTENT_TYPES.get(path.suffix, "application/octet-stream")}
        try:
            client.upload_file(str(path), plan.bucket, key, ExtraArgs=extra)
        except Exception as exc:  # boto3 raises many types
            raise PublishError(f"upload of {path} to s3://{plan.bucket}/{key} failed: {exc}") from exc


def _cmd_publish(args: argparse.Namespace) -> int:
    try:
        plan = plan_publish(
            Path(args.model_dir), args.bucket or os.environ.get("MODEL_BUCKET", ""), args.name, args.prefix
        )
    except PublishError as exc:
        print(f"stagectl model publish: {exc}", file=sys.stderr)
        return 2
    if not plan.tf_versions:
        print(
            "stagectl model publish: no TF SavedModel in the model directory (TF Serving reads tf/): "
            "run scripts/tf-venv.sh and `stagectl model export-tf` first if the prod stage serves this model",
            file=sys.stderr,
        )
    if not args.dry_run:
        try:
            publish(plan)
        except PublishError as exc:
            print(f"stagectl model publish: {exc}", file=sys.stderr)
            return 1
    summary = plan.summary()
    summary["dry_run"] = bool(args.dry_run)
    print(json.dumps(summary, indent=2))
    return 0


def add_command(actions: Any) -> None:
    """Register ``stagectl model publish --bucket B [--name N] [--prefix P] [--model-dir DIR] [--dry-run]``."""
    cmd = actions.add_parser(
        "publish",
        help="upload the model, its card, Triton layout and TF SavedModel to Object Storage",
        description="Upload DIR/model.onnx + card.json to s3://BUCKET/<prefix><name>/<sha256>/, with the Triton "
        "repository (DIR/triton, if written) under triton/ and the TF SavedModel (DIR/tf/<version>) under tf/. "
        "Endpoint S3_ENDPOINT_URL (default: Yandex Object Storage), region AWS_REGION (default ru-central1), "
        "credentials AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.",
    )
    cmd.add_argument("--bucket", default="", help="the stage bucket (default: $MODEL_BUCKET)")
    cmd.add_argument(
        "--name", default=None, help="model name in the keys: the stage's model.name (default: the card's name)"
    )
    cmd.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"key prefix (default: {DEFAULT_PREFIX})")
    cmd.add_argument("--model-dir", default="models/digits", metavar="DIR", help="default: models/digits")
    cmd.add_argument("--dry-run", action="store_true", help="print what would be uploaded; upload nothing")
    cmd.set_defaults(func=_cmd_publish)
