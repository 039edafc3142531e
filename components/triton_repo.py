"""Triton model repository: ``config.pbtxt`` generated from the model card, and its upload.

Layout (Triton's, one model, one version)::

    <repository>/<model>/config.pbtxt
    <repository>/<model>/1/model.onnx

:func:`config_pbtxt` turns a model card (``stagectl model build`` writes it; see
``stagectl/model.py``) into the model configuration: ONNX Runtime platform, ``max_batch_size``,
inputs and outputs with Triton dtypes and the batch dimension removed, dynamic batching and an
instance group. :func:`write_layout` writes the layout next to ``model.onnx``;
:class:`TritonRepository` uploads it under ``<model prefix><model>/<sha256>/triton/`` so that
Triton reads it straight from Object Storage (:func:`s3_repository_url`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi

from components.base import StageComponent, ValidationError
from components.yc import yandex

S3_ENDPOINT_HOST = "storage.yandexcloud.net"
MODEL_FILE = "model.onnx"
CARD_FILE = "card.json"
CONFIG_FILE = "config.pbtxt"
VERSION = "1"
LAYOUT_DIR = "triton"

#: Card dtype (NumPy name) -> Triton model-config dtype.
TRITON_DTYPES = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "string": "TYPE_STRING",
}
#: ``backend`` argument -> the config line selecting it. ``python`` is for local tests with a
#: Python-backend ``model.py``; the GPU host uses ONNX Runtime.
BACKENDS = {"onnxruntime": 'platform: "onnxruntime_onnx"', "python": 'backend: "python"'}
INSTANCE_KINDS = ("KIND_GPU", "KIND_CPU")
MAX_BATCH_RANGE = (1, 65536)


@dataclass(frozen=True)
class TritonOptions:
    max_batch_size: int = 64
    #: Longest time a request waits for others to join its batch (microseconds).
    max_queue_delay_us: int = 500
    preferred_batch_sizes: tuple[int, ...] = ()
    instance_count: int = 1
    instance_kind: str = "KIND_GPU"
    backend: str = "onnxruntime"

    def __post_init__(self) -> None:
        low, high = MAX_BATCH_RANGE
        if not low <= self.max_batch_size <= high:
            raise ValidationError(f"max_batch_size {self.max_batch_size} is out of range: allowed {low}-{high} "
                                  "(the model's first dimension must be the batch)")
        if not 0 <= self.max_queue_delay_us <= 1_000_000:
            raise ValidationError(f"max_queue_delay_us {self.max_queue_delay_us} is out of range: allowed 0-1000000")
        for size in self.preferred_batch_sizes:
            if not 1 <= size <= self.max_batch_size:
                raise ValidationError(f"preferred batch size {size} must be between 1 and max_batch_size "
                                      f"({self.max_batch_size})")
        if not 1 <= self.instance_count <= 16:
            raise ValidationError(f"instance_count {self.instance_count} is out of range: allowed 1-16")
        if self.instance_kind not in INSTANCE_KINDS:
            raise ValidationError(f"instance kind {self.instance_kind!r} is invalid: allowed "
                                  f"{', '.join(INSTANCE_KINDS)}")
        if self.backend not in BACKENDS:
            raise ValidationError(f"backend {self.backend!r} is invalid: allowed {', '.join(BACKENDS)}")


def model_name(card: Mapping[str, Any]) -> str:
    """The Triton model name: the card's ``name`` (a directory name in the repository)."""
    name = card.get("name")
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ValidationError(f"model card name {name!r} cannot name a Triton model directory: "
                              "use a non-empty name without '/' that does not start with '.'")
    return name


def _tensor(tensor: Any, kind: str, batched: bool) -> str:
    if not isinstance(tensor, Mapping) or not {"name", "shape", "dtype"} <= set(tensor):
        raise ValidationError(f"model card {kind} {tensor!r} must have name, shape and dtype")
    name, shape, dtype = tensor["name"], tensor["shape"], tensor["dtype"]
    if dtype not in TRITON_DTYPES:
        raise ValidationError(f"model card {kind} {name!r}: dtype {dtype!r} has no Triton type; "
                              f"allowed: {', '.join(TRITON_DTYPES)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and (d == -1 or d > 0) for d in shape):
        raise ValidationError(f"model card {kind} {name!r}: shape {shape!r} must be a list of positive sizes "
                              "or -1 for a variable size")
    dims = list(shape)
    reshape = ""
    if batched:
        if not dims or dims[0] != -1:
            raise ValidationError(f"model card {kind} {name!r}: shape {shape!r} must start with the batch "
                                  "dimension -1 when max_batch_size > 0")
        dims = dims[1:]
        if not dims:
            # A tensor that is only the batch: Triton needs non-empty dims (docs: "Reshape").
            dims, reshape = [1], "\n    reshape: { shape: [ ] }"
    name_text = json.dumps(name)
    return (f"  {{\n    name: {name_text}\n    data_type: {TRITON_DTYPES[dtype]}\n"
            f"    dims: [ {', '.join(str(d) for d in dims)} ]{reshape}\n  }}")


def _tensors(card: Mapping[str, Any], key: str, batched: bool) -> str:
    tensors = card.get(key)
    if not isinstance(tensors, Sequence) or isinstance(tensors, str) or not tensors:
        raise ValidationError(f"model card has no {key}: it needs a list of {{name, shape, dtype}}")
    return ",\n".join(_tensor(t, key[:-1], batched) for t in tensors)


def config_pbtxt(card: Mapping[str, Any], options: TritonOptions | None = None) -> str:
    """The ``config.pbtxt`` of the card's model (deterministic text, protobuf text format)."""
    options = options or TritonOptions()
    name = model_name(card)
    batched = options.max_batch_size > 0
    lines = [
        f"# Generated from the model card of {name}; do not edit.",
        f"# model sha256: {card.get('sha256', 'unknown')}",
        f"name: {json.dumps(name)}",
        BACKENDS[options.backend],
        f"max_batch_size: {options.max_batch_size}",
        f"input [\n{_tensors(card, 'inputs', batched)}\n]",
        f"output [\n{_tensors(card, 'outputs', batched)}\n]",
        "dynamic_batching {",
    ]
    if options.preferred_batch_sizes:
        lines.append(f"  preferred_batch_size: [ {', '.join(str(s) for s in options.preferred_batch_sizes)} ]")
    lines += [
        f"  max_queue_delay_microseconds: {options.max_queue_delay_us}",
        "}",
        f"instance_group [\n  {{\n    count: {options.instance_count}\n    kind: {options.instance_kind}\n  }}\n]",
        f'version_policy: {{ specific: {{ versions: [ {VERSION} ] }} }}',
    ]
    return "\n".join(lines) + "\n"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_card(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / CARD_FILE
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValidationError(f"model card {path} does not exist: run `stagectl model build` first") from None
    except json.JSONDecodeError as exc:
        raise ValidationError(f"model card {path} is not valid JSON: {exc}") from None
    if not isinstance(card, dict):
        raise ValidationError(f"model card {path} must be a JSON object")
    return card


def write_layout(model_dir: Path, options: TritonOptions | None = None, out_dir: Path | None = None) -> Path:
    """Write the Triton repository for ``model_dir``'s card and ONNX file; return the repository root.

    The repository goes to ``model_dir/triton`` unless ``out_dir`` is given. The ONNX file must be
    the one the card describes (same sha256). Rewriting an up-to-date layout changes nothing.
    """
    model_dir = Path(model_dir)
    card = load_card(model_dir)
    source = model_dir / MODEL_FILE
    if not source.is_file():
        raise ValidationError(f"model file {source} does not exist: run `stagectl model build` first")
    actual = _sha256(source)
    if card.get("sha256") not in (None, actual):
        raise ValidationError(f"model file {source} has sha256 {actual} but its card says {card['sha256']}: "
                              "rebuild the model so the card describes this file")
    root = Path(out_dir) if out_dir is not None else model_dir / LAYOUT_DIR
    model_root = root / model_name(card)
    (model_root / VERSION).mkdir(parents=True, exist_ok=True)
    config = model_root / CONFIG_FILE
    text = config_pbtxt(card, options)
    if not config.is_file() or config.read_text(encoding="utf-8") != text:
        config.write_text(text, encoding="utf-8")
    target = model_root / VERSION / MODEL_FILE
    if not target.is_file() or _sha256(target) != actual:
        shutil.copyfile(source, target)
    return root


def repository_prefix(model_prefix: str, model: str, sha256: str) -> str:
    """Object key prefix of the published repository (pinned by the model's sha256), with a trailing '/'."""
    return f"{model_prefix}{model}/{sha256}/{LAYOUT_DIR}/"


def s3_repository_url(bucket: str, prefix: str) -> str:
    """Triton's S3 URL for Yandex Object Storage: ``s3://https://storage.yandexcloud.net:443/<bucket>/<prefix>``."""
    return f"s3://https://{S3_ENDPOINT_HOST}:443/{bucket}/{prefix.rstrip('/')}"


@dataclass(frozen=True)
class TritonRepositoryArgs:
    bucket: pulumi.Input[str]
    #: The stage's model name (``model.name``) and the pinned sha256 of ``model.onnx``.
    model: str
    model_sha256: str
    model_dir: str
    model_prefix: str = "models/"
    options: TritonOptions = TritonOptions()
    #: The parsed model card; ``None`` only in a preview before the model is built.
    card: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.card is not None:
            config_pbtxt(self.card, self.options)  # refuse a card Triton cannot serve, up front


class TritonRepository(StageComponent):
    """The Triton layout of the pinned model, uploaded to the stage's bucket."""

    component = "triton-repo"

    def __init__(self, name: str, args: TritonRepositoryArgs, labels: dict[str, str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("triton:TritonRepository", name, labels, opts)
        self.prefix = repository_prefix(args.model_prefix, args.model, args.model_sha256)
        strict = not pulumi.runtime.is_dry_run()
        card_path = Path(args.model_dir) / CARD_FILE
        if args.card is not None:
            self.model_name = model_name(args.card)
            config_text = config_pbtxt(args.card, args.options)
            sha = args.card.get("sha256")
            if sha is not None and sha != args.model_sha256:
                message = (f"model card {card_path} describes sha256 {sha} but the stack pins release.modelSha256 "
                           f"{args.model_sha256}: pin the model you mean to ship (stagectl model build prints it)")
                if strict:
                    raise ValidationError(message)
                pulumi.log.warn(message)
        else:
            message = (f"model card {card_path} does not exist: run `stagectl model build` before deploying; "
                       "the Triton config is planned from a placeholder")
            if strict:
                raise ValidationError(message)
            pulumi.log.warn(message)
            self.model_name = args.model
            config_text = "# placeholder: generated from the model card at deploy time\n"
        self.config_object = yandex.StorageObject(
            self.child_name("config"),
            yandex.StorageObjectArgs(
                bucket=args.bucket,
                key=f"{self.prefix}{self.model_name}/{CONFIG_FILE}",
                content=config_text,
                content_type="text/plain",
                tags=self.labels,
            ),
            opts=self.child(),
        )
        self.model_object = yandex.StorageObject(
            self.child_name("model"),
            yandex.StorageObjectArgs(
                bucket=args.bucket,
                key=f"{self.prefix}{self.model_name}/{VERSION}/{MODEL_FILE}",
                source=str(Path(args.model_dir) / MODEL_FILE),
                source_hash=args.model_sha256,
                content_type="application/octet-stream",
                tags=self.labels,
            ),
            opts=self.child(),
        )
        self.config_text = config_text
        self.repository_url: pulumi.Output[str] = pulumi.Output.from_input(args.bucket).apply(
            lambda bucket: s3_repository_url(bucket, self.prefix))
        self.register_outputs({"repository_url": self.repository_url, "model_name": self.model_name})
