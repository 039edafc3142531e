"""The ASGI entry point: life cycle, request ids, the body limit, metrics, the access log, and the
hot path.

Every HTTP request passes through :class:`ServiceASGI` (a plain ASGI class, no per-request task or
stream). The prediction endpoints (``POST /v1/predict``, ``POST /v2/models/{name}[/versions/
{version}]/infer``) and the probes (``/healthz``, ``/readyz``, ``/metrics``, ``/v2/health/*``) are
answered from here straight by the ``Service`` methods; everything else goes to the FastAPI
application (``service.api``), which declares all routes, including these, and publishes OpenAPI.

Why: FastAPI's routing, dependency resolution and response classes cost more per request than
validation, inference, metrics and logging together (``bench/service.py`` compares the service with
a bare FastAPI endpoint), and importing FastAPI costs about half a second of a cold start. So the
FastAPI app is built in a background thread right after start-up (or on the first request that
needs it, whichever comes first), and requests get the same answers either way.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import secrets
import threading
import time
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from service.errors import BodyTooLarge, error_bytes
from service.wire import Wire

if TYPE_CHECKING:
    from fastapi import FastAPI

    from service.app import Service

Scope = dict[str, Any]
Message = MutableMapping[str, Any]

log = logging.getLogger("service.http")

_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_BODY_METHODS = frozenset(["POST", "PUT", "PATCH"])
_V2_MODELS = "/v2/models/"
_INFER = "/infer"
_ROUTE_PREDICT = "/v1/predict"
_ROUTE_INFER = "/v2/models/{name}/infer"
_ROUTE_INFER_VERSION = "/v2/models/{name}/versions/{version}/infer"
_JSON = b"application/json"
_PROBES = frozenset(["/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"])
_WIRE_HEADERS = {
    b"inference-header-content-length": "header_length",
    b"content-encoding": "content_encoding",
    b"accept-encoding": "accept_encoding",
}


_ID_PREFIX = secrets.token_hex(6)
_id_counter = itertools.count(1)


def shutdown_margin(grace: float) -> float:
    """What of the grace period is kept for the process to exit after the service stopped."""
    return max(0.5, min(2.0, 0.1 * grace))


def new_request_id() -> str:
    """24 hex characters: a random per-process prefix and a counter (unique, and cheap)."""
    return f"{_ID_PREFIX}{next(_id_counter):012x}"


class ServiceASGI:
    """The application uvicorn runs; ``.service`` is the service, ``.fastapi`` the FastAPI app."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.metrics = service.metrics
        self.access_log = service.access_log
        self.max_body_bytes = service.settings.max_body_bytes
        self._fastapi: FastAPI | None = None
        self._build_lock = threading.Lock()
        self._warm_task: asyncio.Future[Any] | None = None
        #: ``time.monotonic()`` of the signal that asked the server to stop (set by ``python -m service``)
        self.stop_requested_at: float | None = None

    @property
    def fastapi(self) -> FastAPI:
        """The FastAPI app, built (importing FastAPI) on first access."""
        if self._fastapi is None:
            with self._build_lock:
                if self._fastapi is None:
                    from service.api import build_fastapi

                    self._fastapi = build_fastapi(self.service)
        return self._fastapi

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.service.start()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
                if self._fastapi is None:
                    self._warm_task = asyncio.get_running_loop().run_in_executor(None, lambda: self.fastapi)
            elif message["type"] == "lifespan.shutdown":
                if self._warm_task is not None:
                    try:
                        await self._warm_task
                    except Exception:
                        log.exception("building the FastAPI app failed")
                await self.service.stop(self.shutdown_deadline())
                await send({"type": "lifespan.shutdown.complete"})
                return

    def shutdown_deadline(self) -> float:
        """``loop.time()`` by which the service must have stopped: ``SHUTDOWN_GRACE_SECONDS`` after
        the stop signal, less a margin for the process to exit."""
        grace = self.service.settings.shutdown_grace_seconds
        margin = shutdown_margin(grace)
        asked = self.stop_requested_at if self.stop_requested_at is not None else time.monotonic()
        left = asked + grace - margin - time.monotonic()
        return asyncio.get_running_loop().time() + max(0.5, left)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind != "http":
            await self.fastapi(scope, receive, send)
            return
        start = time.perf_counter()
        request_id: str | None = None
        api_key: bytes | None = None
        content_length: int | None = None
        bad_length = False
        wire: Wire | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    content_length = int(value)
                except ValueError:
                    bad_length = True
            elif name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _REQUEST_ID_OK.match(candidate):
                    request_id = candidate
            elif name == b"x-api-key":
                api_key = value
            elif name in _WIRE_HEADERS:
                if wire is None:
                    wire = Wire()
                setattr(wire, _WIRE_HEADERS[name], value)
        if request_id is None:
            request_id = new_request_id()
        scope["request_id"] = request_id
        method: str = scope["method"]
        path: str = scope["path"]
        limit = self.max_body_bytes
        route = "unmatched"
        status = 500
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            if content_length is None and method in _BODY_METHODS:
                receive = _limited(receive, limit)
            hot = self._hot_route(method, path)
            if hot is not None:
                route = hot[0]
            if bad_length:
                status = 400
                body = error_bytes("Content-Length", "integer", "not an integer", request_id)
                await _respond(send, status, body, request_id)
            elif content_length is not None and content_length > limit:
                status = 413
                body = error_bytes(
                    "body", "max_bytes", f"request body is larger than {limit} bytes (MAX_BODY_BYTES)", request_id
                )
                await _respond(send, status, body, request_id)
            elif hot is not None:
                if hot[1] is None:
                    status, body, extra = await self.service.predict(receive, api_key, request_id, wire)
                else:
                    status, body, extra = await self.service.infer(receive, api_key, request_id, hot[1], hot[2], wire)
                await _respond(send, status, body, request_id, _JSON, extra)
            elif method == "GET" and path in _PROBES:
                route = path
                if path == "/metrics":
                    status, body = 200, self.service.metrics_text()
                    await _respond(send, status, body, request_id, self.metrics.content_type.encode())
                else:
                    status, body = await self._probe(path)
                    await _respond(send, status, body, request_id)
            else:
                app = self._fastapi
                if app is None:
                    app = await asyncio.get_running_loop().run_in_executor(None, lambda: self.fastapi)
                await app(scope, receive, send_wrapper)
                route_obj = scope.get("route")
                if route_obj is not None:
                    route = getattr(route_obj, "path", route)
        except BodyTooLarge:
            if started:
                raise
            status = 413
            body = error_bytes(
                "body", "max_bytes", f"request body is larger than {limit} bytes (MAX_BODY_BYTES)", request_id
            )
            await _respond(send, status, body, request_id)
        except Exception:
            log.exception("unhandled error in %s %s (request %s)", method, path, request_id)
            if started:
                raise
            status = 500
            await _respond(send, 500, error_bytes("", "internal", "internal server error", request_id), request_id)
        finally:
            duration = time.perf_counter() - start
            self.metrics.observe_request(route, method, status, duration)
            client = scope.get("client")
            self.access_log.log(
                method=method,
                path=path,
                route=route,
                status=status,
                duration_s=duration,
                request_id=request_id,
                client=client[0] if client else None,
            )

    async def _probe(self, path: str) -> tuple[int, bytes]:
        svc = self.service
        if path == "/readyz":
            return await svc.readyz()
        if path == "/healthz":
            return svc.healthz()
        if path == "/v2/health/ready":
            return await svc.server_ready()
        return svc.server_live()  # /v2/health/live

    @staticmethod
    def _hot_route(method: str, path: str) -> tuple[str, str | None, str | None] | None:
        """(route template, model name, version) of a prediction endpoint, else None."""
        if method != "POST":
            return None
        if path == _ROUTE_PREDICT:
            return _ROUTE_PREDICT, None, None
        if path.startswith(_V2_MODELS) and path.endswith(_INFER):
            middle = path[len(_V2_MODELS) : -len(_INFER)]
            if middle and "/" not in middle:
                return _ROUTE_INFER, middle, None
            parts = middle.split("/")
            if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
                return _ROUTE_INFER_VERSION, parts[0], parts[2]
        return None


def _limited(receive: Any, limit: int) -> Any:
    """``receive`` that raises :class:`BodyTooLarge` once a streamed (chunked) body passes ``limit``."""
    received = 0

    async def wrapped() -> Message:
        nonlocal received
        message: Message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)
        return message

    return wrapped


async def _respond(
    send: Any,
    status: int,
    body: bytes,
    request_id: str,
    content_type: bytes = _JSON,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-length", str(len(body)).encode()), (b"x-request-id", request_id.encode())]
    if extra:
        headers.extend(extra)
        if body and not any(name == b"content-type" for name, _ in extra):
            headers.append((b"content-type", content_type))
    elif body:
        headers.append((b"content-type", content_type))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
