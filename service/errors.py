"""API errors: every 4xx names the field and the rule that was broken.

The body shape is ``{"error": "<field>: <message>", "field": ..., "rule": ..., "request_id": ...}``;
``error`` being a string keeps it compatible with the Open Inference Protocol (KServe v2) error
response, which Triton/KServe clients read.
"""

from __future__ import annotations

from typing import Any

import orjson


class ApiError(Exception):
    """A client error (or a 503 while not ready) with the field and rule it concerns."""

    def __init__(self, status: int, field: str, rule: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.rule = rule
        self.message = message

    def body(self, request_id: str | None = None) -> dict[str, Any]:
        return error_body(self.field, self.rule, self.message, request_id)


def error_body(field: str, rule: str, message: str, request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": f"{field}: {message}" if field else message, "field": field, "rule": rule}
    if request_id:
        body["request_id"] = request_id
    return body


def error_bytes(field: str, rule: str, message: str, request_id: str | None = None) -> bytes:
    return orjson.dumps(error_body(field, rule, message, request_id))


class BodyTooLarge(Exception):
    """Raised while streaming a request body that grows past ``MAX_BODY_BYTES``."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds {limit} bytes")
        self.limit = limit


def too_large(limit: int) -> ApiError:
    return ApiError(413, "body", "max_bytes", f"request body is larger than {limit} bytes (MAX_BODY_BYTES)")
