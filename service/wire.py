"""What travels around the JSON of the prediction endpoints: content codings and the KServe v2
binary tensor data extension (as Triton documents it).

- ``Content-Encoding: gzip | deflate`` (and ``identity``) on a request body is decoded before it
  is parsed, with the decoded size bounded by ``MAX_BODY_BYTES``; ``Accept-Encoding`` naming gzip
  or deflate gets a compressed response (``Content-Encoding`` set, ``Vary: Accept-Encoding``).
  ``deflate`` is the zlib format (RFC 9110); a raw deflate stream is accepted too.
- ``Inference-Header-Content-Length: <n>``: the first ``n`` bytes of the (decoded) body are the
  JSON inference request and the rest is binary tensor data, each input with
  ``parameters.binary_data_size`` taking its bytes in input order. A response with binary outputs
  carries the same header for its JSON part; ``Content-Length`` gives the whole body, as HTTP says.

Nothing here is on the path of a plain JSON request without those headers.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from service.errors import ApiError

HEADER_LENGTH = b"inference-header-content-length"
OCTET_STREAM = b"application/octet-stream"
_ENCODINGS = {"gzip": 31, "x-gzip": 31, "deflate": 15}


@dataclass(slots=True)
class Wire:
    """The request headers that change how a prediction body is framed or encoded (raw values)."""

    header_length: bytes | None = None
    content_encoding: bytes | None = None
    accept_encoding: bytes | None = None


def decode_body(body: bytes, content_encoding: bytes, limit: int) -> bytes:
    """``body`` with its content codings (applied in the order listed) removed."""
    codings = [c.strip().lower() for c in content_encoding.decode("latin-1").split(",") if c.strip()]
    for coding in reversed(codings):
        if coding == "identity":
            continue
        wbits = _ENCODINGS.get(coding)
        if wbits is None:
            raise ApiError(
                415,
                "Content-Encoding",
                "content_encoding",
                f"unsupported content coding {coding!r}; send gzip, deflate or identity",
            )
        body = _inflate(body, coding, wbits, limit)
    return body


def _inflate(data: bytes, coding: str, wbits: int, limit: int) -> bytes:
    out: list[bytes] = []
    size = 0
    rest = data
    first = True
    while rest or first:
        d = zlib.decompressobj(wbits)
        try:
            chunk = d.decompress(rest, limit + 1 - size)
        except zlib.error as exc:
            if first and coding == "deflate":  # some clients send a raw deflate stream
                d = zlib.decompressobj(-15)
                try:
                    chunk = d.decompress(rest, limit + 1 - size)
                except zlib.error:
                    raise _corrupt(coding, exc) from None
            else:
                raise _corrupt(coding, exc) from None
        size += len(chunk)
        if size > limit or d.unconsumed_tail:
            raise ApiError(
                413,
                "body",
                "max_bytes",
                f"the decoded ({coding}) request body is larger than {limit} bytes (MAX_BODY_BYTES)",
            )
        if not d.eof:
            raise ApiError(400, "body", "content_encoding", f"the {coding} data of the body is truncated")
        out.append(chunk)
        rest = d.unused_data
        first = False
        if coding != "gzip" and coding != "x-gzip" and rest:
            raise ApiError(400, "body", "content_encoding", f"{len(rest)} bytes follow the end of the {coding} stream")
    return b"".join(out)


def _corrupt(coding: str, exc: zlib.error) -> ApiError:
    return ApiError(400, "body", "content_encoding", f"the body is not valid {coding} data ({exc})")


def split_body(body: bytes, header_length: bytes) -> tuple[bytes, memoryview]:
    """(JSON header, binary tensor data) of a body framed by ``Inference-Header-Content-Length``."""
    text = header_length.strip()
    if not text.isdigit():
        raise ApiError(
            400,
            "Inference-Header-Content-Length",
            "binary_framing",
            f"must be the length in bytes of the JSON part of the body, got {text.decode('latin-1')!r}",
        )
    n = int(text)
    if n == 0:
        raise ApiError(
            400, "Inference-Header-Content-Length", "binary_framing", "is 0: the JSON part of the body is empty"
        )
    if n > len(body):
        raise ApiError(
            400,
            "Inference-Header-Content-Length",
            "binary_framing",
            f"says the JSON part is {n} bytes, but the whole body is {len(body)} bytes",
        )
    view = memoryview(body)
    return bytes(view[:n]), view[n:]


def choose_encoding(accept_encoding: bytes) -> str | None:
    """``gzip`` or ``deflate`` if ``Accept-Encoding`` accepts one (highest q, then the client's
    order), else None."""
    best: str | None = None
    best_q = 0.0
    for item in accept_encoding.decode("latin-1").split(","):
        token, _, params = item.partition(";")
        token = token.strip().lower()
        q = 1.0
        params = params.strip().lower()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        if token in ("x-gzip", "*"):
            token = "gzip"
        if token in ("gzip", "deflate") and q > best_q:
            best, best_q = token, q
    return best


def encode(body: bytes, coding: str) -> bytes:
    """``body`` compressed as ``coding`` (``gzip`` or ``deflate``), at level 1: these bodies are
    small and the time is spent on the request path."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31 if coding == "gzip" else 15)
    return compressor.compress(body) + compressor.flush()
