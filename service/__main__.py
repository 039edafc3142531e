"""``python -m service``: serve on ``$HOST:$PORT`` (default 0.0.0.0:8080) with uvicorn.

Exits 0 after a clean shutdown on SIGTERM/SIGINT (queued prediction records flushed), 2 on a
configuration error.
"""

from __future__ import annotations

import signal
import sys


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
    signal.signal(signal.SIGTERM, _exit_cleanly)
    signal.signal(signal.SIGINT, _exit_cleanly)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop=loop,
        http="httptools",
        ws="none",
        log_config=None,
        log_level=settings.log_level,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=10,
        lifespan="on",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
