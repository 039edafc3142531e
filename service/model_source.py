"""Fetching and verifying a model and its card from a path, ``file://`` or ``s3://`` URI.

Nothing here ever returns bytes that failed verification: a missing, unreadable or mismatching
model raises :class:`ModelLoadError` whose ``kind`` and ``reason`` end up in the log line and in
``/readyz``.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlparse

from service.s3 import describe_s3_error, split_s3_uri

if TYPE_CHECKING:  # pydantic is imported lazily: the prefetch helper uses this module without it
    from service.card import ModelCard

FailureKind = Literal["missing", "unreadable", "checksum", "invalid"]
CARD_FILE = "card.json"


class ModelLoadError(Exception):
    """Why the model cannot be served: ``kind`` is missing | unreadable | checksum | invalid."""

    def __init__(self, kind: FailureKind, uri: str, reason: str) -> None:
        super().__init__(f"{kind}: {uri}: {reason}")
        self.kind = kind
        self.uri = uri
        self.reason = reason


@dataclass(frozen=True)
class ModelArtifact:
    """A verified model: its bytes (sha256 checked) and its card."""

    uri: str
    card_uri: str
    card: ModelCard
    data: bytes
    sha256: str

    @property
    def version(self) -> str:
        return self.sha256[:12]

    @property
    def name(self) -> str:
        return self.card.name


def card_uri_for(model_uri: str) -> str:
    """``card.json`` beside the model, with the same scheme and prefix."""
    parsed = urlparse(model_uri)
    if parsed.scheme == "s3":
        bucket, key = split_s3_uri(model_uri)
        parent = posixpath.dirname(key)
        return f"s3://{bucket}/{parent + '/' if parent else ''}{CARD_FILE}"
    if parsed.scheme == "file":
        return f"file://{posixpath.join(posixpath.dirname(parsed.path), CARD_FILE)}"
    return str(Path(model_uri).parent / CARD_FILE)


def local_path(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    return Path(uri)


S3ClientFactory = Callable[[], Any]


def read_uri(uri: str, s3_client: S3ClientFactory, what: str) -> bytes:
    """The bytes behind ``uri``; raises :class:`ModelLoadError` (missing/unreadable)."""
    if urlparse(uri).scheme == "s3":
        bucket, key = split_s3_uri(uri)
        try:
            client = s3_client()
            response = client.get_object(Bucket=bucket, Key=key)
            return bytes(response["Body"].read())
        except Exception as exc:  # boto3 raises many unrelated exception types
            missing, reason = describe_s3_error(exc)
            raise ModelLoadError("missing" if missing else "unreadable", uri, f"{what}: {reason}") from None
    path = local_path(uri)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ModelLoadError("missing", uri, f"{what}: no such file {path}") from None
    except OSError as exc:
        raise ModelLoadError("unreadable", uri, f"{what}: {exc.strerror or exc}") from None


def verify(
    model_uri: str,
    card_uri: str,
    card_raw: bytes,
    model_raw: bytes,
    pinned_sha256: str | None,
) -> ModelArtifact:
    """Check the model bytes against the pinned digest (``MODEL_SHA256``) or the card's ``sha256``."""
    from service.card import CardError, parse_card

    try:
        card = parse_card(card_raw)
    except CardError as exc:
        raise ModelLoadError("invalid", card_uri, str(exc)) from None
    actual = hashlib.sha256(model_raw).hexdigest()
    expected, source = (pinned_sha256, "MODEL_SHA256") if pinned_sha256 else (card.sha256, "the card")
    if actual != expected:
        raise ModelLoadError(
            "checksum",
            model_uri,
            f"sha256 mismatch: the file has {actual}, {source} expects {expected}; refusing to serve it",
        )
    if card.sha256 != actual:
        raise ModelLoadError(
            "checksum",
            card_uri,
            f"the card describes sha256 {card.sha256}, not the pinned model {actual}; publish the matching card",
        )
    return ModelArtifact(uri=model_uri, card_uri=card_uri, card=card, data=model_raw, sha256=actual)


def fetch_model(
    model_uri: str,
    card_uri: str | None,
    pinned_sha256: str | None,
    s3_client: S3ClientFactory,
) -> ModelArtifact:
    """Read the card and the model, verify the checksum; blocking (run it in a thread)."""
    card_uri = card_uri or card_uri_for(model_uri)
    card_raw = read_uri(card_uri, s3_client, "model card")
    model_raw = read_uri(model_uri, s3_client, "model")
    return verify(model_uri, card_uri, card_raw, model_raw, pinned_sha256)
