"""The HTTP/1.1 protocol the service runs under uvicorn: uvicorn's httptools protocol, except that a
request the parser rejects before any application sees it (a malformed request line or header, a
Content-Length that is not a number, conflicting Content-Length / Transfer-Encoding) is answered
like every other error: JSON ``{error, field, rule, request_id}`` with an ``X-Request-ID`` header,
counted in ``http_requests_total{route="unparsed"}`` and logged as an access line.

uvicorn writes those answers itself (``send_400_response``, plain text); overriding that one method
is the only change. The parser does not say which part was malformed, so the message lists what to
check.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.asgi import new_request_id
from service.errors import error_bytes

if TYPE_CHECKING:
    from service.asgi import ServiceASGI

REJECTED_ROUTE = "unparsed"
MESSAGE = (
    "the request is not valid HTTP/1.1 (check the request line, the header syntax, "
    "Content-Length and Transfer-Encoding)"
)


def service_protocol(app: ServiceASGI) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol class with JSON rejections for ``app``."""

    class ServiceHttpProtocol(HttpToolsProtocol):
        def send_400_response(self, msg: str) -> None:
            request_id = new_request_id()
            body = error_bytes("request", "http", MESSAGE, request_id)
            content: list[bytes] = [STATUS_LINE[400]]
            for name, value in self.server_state.default_headers:
                content.extend([name, b": ", value, b"\r\n"])
            content.extend(
                [
                    b"content-type: application/json\r\n",
                    b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                    b"x-request-id: " + request_id.encode("ascii") + b"\r\n",
                    b"connection: close\r\n",
                    b"\r\n",
                    body,
                ]
            )
            self.transport.write(b"".join(content))
            self.transport.close()
            _account(app, self, request_id)

    return ServiceHttpProtocol


def _account(app: ServiceASGI, protocol: Any, request_id: str) -> None:
    app.metrics.observe_request(REJECTED_ROUTE, "", 400, 0.0)
    client = getattr(protocol, "client", None)
    app.access_log.log(
        method="",
        path="",
        route=REJECTED_ROUTE,
        status=400,
        duration_s=0.0,
        request_id=request_id,
        client=client[0] if client else None,
        extra={"message": "unparsed request 400", "error": {"message": MESSAGE}},
    )
