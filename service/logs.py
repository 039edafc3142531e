"""JSON logs in Elastic Common Schema fields, one line per event, to stdout.

Application events (start-up, model loading, store outages) go through the standard ``logging``
module with ``ecs_logging.StdlibFormatter``. The per-request access line is on the hot path, so it
is built directly with orjson in the same ECS layout (``@timestamp``, ``log.level``, ``message``,
``ecs.version`` at the top, the rest nested) and written to stdout in small batches (at most 20 ms
late).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any

import orjson

ECS_VERSION = "1.6.0"
LOGGER_NAME = "service"


def configure_logging(level: str, service_name: str) -> None:
    """Route every logger (ours, uvicorn's) to one ECS JSON handler on stdout."""
    import ecs_logging

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(ecs_logging.StdlibFormatter(exclude_fields=["process", "log.original", "color_message"]))
    handler.addFilter(_ServiceNameFilter(service_name))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # the service writes its own access lines
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


class _ServiceNameFilter(logging.Filter):
    def __init__(self, service_name: str) -> None:
        super().__init__()
        self._name = service_name

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.setdefault("service.name", self._name)
        return True


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


class _Clock:
    """``@timestamp`` strings, reusing the formatted second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self, wall: float) -> str:
        second = int(wall)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((wall - second) * 1000):03d}Z"


class AccessLog:
    """One ECS JSON line per HTTP request, written in batches: at most ``flush_seconds`` late, or
    at once when ``max_lines`` are waiting (one write system call instead of one per request)."""

    flush_seconds = 0.02
    max_lines = 256

    def __init__(self, service_name: str, fd: int | None = None, enabled: bool = True) -> None:
        self._service = {"name": service_name}
        self._fd = fd if fd is not None else sys.stdout.fileno()
        self._pending: list[bytes] = []
        self._scheduled = False
        self._clock = _Clock()
        self.enabled = enabled

    def log(
        self,
        *,
        method: str,
        path: str,
        route: str,
        status: int,
        duration_s: float,
        request_id: str,
        client: str | None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        if not self.enabled:
            return
        wall = time.time()
        level = "info" if status < 500 else "error"
        entry: dict[str, Any] = {
            "@timestamp": self._clock.now(wall),
            "log.level": level,
            "message": f"{method} {path} {status}",
            "ecs.version": ECS_VERSION,
            "event": {"dataset": "service.access", "kind": "event", "duration": int(duration_s * 1e9)},
            "http": {"request": {"id": request_id, "method": method}, "response": {"status_code": status}},
            "url": {"path": path},
            "service": self._service,
            "labels": {"route": route},
        }
        if client:
            entry["client"] = {"address": client}
        if extra:
            entry.update(extra)
        pending = self._pending
        pending.append(orjson.dumps(entry))
        if len(pending) >= self.max_lines:
            self.flush()
        elif not self._scheduled:
            try:
                asyncio.get_running_loop().call_later(self.flush_seconds, self.flush)
                self._scheduled = True
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        data = b"\n".join(self._pending) + b"\n"
        self._pending.clear()
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except BlockingIOError:
            # stdout is a non-blocking pipe that is full: fall back to a blocking write
            sys.stdout.buffer.write(bytes(view))
            sys.stdout.buffer.flush()
        except OSError:
            pass  # stdout closed: nothing sensible to do with a log line
