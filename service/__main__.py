"""``python -m service``: serve on ``$HOST:$PORT`` (default 0.0.0.0:8080) with uvicorn.

Exits 0 after a clean shutdown on SIGTERM/SIGINT, 2 on a configuration error. The stop is planned
to end within ``SHUTDOWN_GRACE_SECONDS`` of the signal (the platform's grace period): in-flight
requests get about a third of it, then the prediction log writes what the store takes in time and
spills the rest to ``SPOOL_DIR``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from types import FrameType


def _exit_cleanly(signum: int, _frame: object) -> None:
    # uvicorn re-raises the signal after its graceful shutdown; by then everything is flushed
    raise SystemExit(0)


def main() -> int:
    from pydantic import ValidationError

    from service.settings import settings_from_env

    try:
        settings = settings_from_env()
    except ValidationError as exc:
        for err in exc.errors():
            name = "_".join(str(p) for p in err["loc"]).upper() or "settings"
            print(f"service: invalid configuration: {name}: {err['msg']}", file=sys.stderr)
        return 2

    import uvicorn

    from service.app import create_app
    from service.asgi import shutdown_margin
    from service.http import service_protocol
    from service.logs import configure_logging

    configure_logging(settings.log_level, settings.service_name)
    # A 0.5 ms GIL switch interval (default 5 ms): the inference thread needs the GIL back after
    # each ONNX Runtime run, and the busy event loop would otherwise hold it for up to 5 ms;
    # measured on 2 cores: +30-50 % throughput for a 17 MB model under load (bench/service.py).
    sys.setswitchinterval(0.0005)
    app = create_app(settings)
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if app.stop_requested_at is None:
                app.stop_requested_at = time.monotonic()
            super().handle_exit(sig, frame)

    grace = settings.shutdown_grace_seconds
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop=loop,
        http=service_protocol(app),
        ws="none",
        log_config=None,
        log_level=settings.log_level,
        access_log=False,
        server_header=False,
        # in-flight requests (milliseconds each) get a third of the grace period; the prediction
        # log's flush and spill get the rest (service.asgi.ServiceASGI.shutdown_deadline)
        timeout_graceful_shutdown=max(1, round((grace - shutdown_margin(grace)) / 3)),
        lifespan="on",
    )
    signal.signal(signal.SIGTERM, _exit_cleanly)
    signal.signal(signal.SIGINT, _exit_cleanly)
    server = Server(config)
    code = 0
    try:
        server.run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    if not server.started:
        return 3  # start-up failed (logged); uvicorn.run's exit status
    _leave_stuck_threads(code)
    return code


def _leave_stuck_threads(code: int) -> None:
    """After a clean stop, a non-daemon thread still blocked in I/O (a library's own thread pool
    waiting on a server that never answers) would keep the process alive past its grace period:
    everything the service owns is stopped and on disk by now, so exit without waiting for it."""
    main = threading.main_thread()
    stuck = [t.name for t in threading.enumerate() if t is not main and not t.daemon and t.is_alive()]
    if not stuck:
        return
    logging.getLogger("service").warning("exiting without waiting for threads still blocked: %s", ", ".join(stuck))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
