"""A real PostgreSQL server on 127.0.0.1 for the tests: ``initdb`` + ``pg_ctl`` from Debian's
``postgresql`` package (``/usr/lib/postgresql/<version>/bin``; ``scripts/install-test-deps.sh``
installs it from ``requirements/apt.txt``), run as the ``postgres`` user when the tests run as root
(``initdb`` refuses root).

Like Managed PostgreSQL, it takes TCP connections only over TLS (a throw-away CA and a server
certificate for ``localhost``/``127.0.0.1``, made with ``openssl``) and checks passwords with
SCRAM, so the service connects with the same DSN shape as on the GPU host:
``postgresql://<user>@localhost:<port>/<db>?sslmode=verify-full&sslrootcert=<ca.pem>`` plus
``PG_PASSWORD``. The data and socket directories are in a private temporary directory; the server
can be stopped (``immediate``: as if it crashed) and started again on the same port.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

PG_ROOT = Path("/usr/lib/postgresql")
USER = "inference"
DATABASE = "predictions"


def pg_bindir() -> Path:
    """The newest installed server's bin directory; fails with what to install when there is none."""
    candidates = sorted(
        (p for p in PG_ROOT.glob("*/bin") if (p / "initdb").is_file() and (p / "pg_ctl").is_file()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not candidates:
        raise RuntimeError(
            f"no PostgreSQL server under {PG_ROOT}/<version>/bin: run scripts/install-test-deps.sh "
            "(installs Debian's postgresql from requirements/apt.txt)"
        )
    return candidates[-1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgServer:
    def __init__(self, password: str) -> None:
        self.bindir = pg_bindir()
        self.password = password
        self.port = _free_port()
        self.base = Path(tempfile.mkdtemp(prefix="pg-test-"))
        self.data = self.base / "data"
        self.sockets = self.base / "sockets"
        self.tls = self.base / "tls"
        self.log_path = self.base / "postgres.log"
        self._as_postgres = os.geteuid() == 0
        self._owner = pwd.getpwnam("postgres") if self._as_postgres else None
        self.sockets.mkdir()
        self.tls.mkdir()
        self._make_certificates()
        if self._owner is not None:
            for path in (self.base, self.sockets, self.tls, *self.tls.iterdir()):
                os.chown(path, self._owner.pw_uid, self._owner.pw_gid)
        self._initdb()

    # -- set-up -----------------------------------------------------------------------------

    def _run(self, argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)  # type: ignore[call-overload]
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done  # type: ignore[no-any-return]

    def _make_certificates(self) -> None:
        names = ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
        ca_key, ca, key, csr, cert = (self.tls / n for n in names)
        openssl = shutil.which("openssl")
        if openssl is None:
            raise RuntimeError("openssl is needed to make the test server's TLS certificate")
        steps = [
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", str(ca_key), "-out", str(ca)],
            [openssl, "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", str(key), "-out", str(csr)],
        ]  # fmt: skip
        for argv in steps:
            subprocess.run(argv, check=True, capture_output=True, timeout=60)
        ext = self.tls / "san.ext"
        ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        subprocess.run(
            [openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
             "-days", "2", "-extfile", str(ext), "-out", str(cert)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        key.chmod(0o600)
        ca.chmod(0o644)

    @property
    def ca_file(self) -> Path:
        return self.tls / "ca.pem"

    def _initdb(self) -> None:
        pwfile = self.base / "pw"
        pwfile.write_text("postgres-superuser-pw\n")
        if self._owner is not None:
            os.chown(pwfile, self._owner.pw_uid, self._owner.pw_gid)
        self._run(
            [str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
             "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--no-instructions"],
        )  # fmt: skip
        pwfile.unlink()
        hba = self.data / "pg_hba.conf"
        # TCP only over TLS, with a password; the socket (in our private directory) for set-up
        hba.write_text(
            "local all all trust\n"
            "hostssl all all 127.0.0.1/32 scram-sha-256\n"
            "hostnossl all all 0.0.0.0/0 reject\n"
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.sockets}'\n"
                f"ssl = on\nssl_cert_file = '{self.tls / 'server.pem'}'\nssl_key_file = '{self.tls / 'server.key'}'\n"
                "fsync = off\nsynchronous_commit = on\nmax_connections = 50\nshared_buffers = 32MB\n"
            )
        self.start()
        self.psql(f"CREATE ROLE {USER} LOGIN PASSWORD '{self.password}'")
        self.psql(f"CREATE DATABASE {DATABASE} OWNER {USER}")

    # -- control ------------------------------------------------------------------------------

    def psql(self, sql: str, database: str = "postgres") -> str:
        return self._run(
            [str(self.bindir / "psql"), "-h", str(self.sockets), "-p", str(self.port), "-U", "postgres", "-d",
             database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql],
        ).stdout.strip()  # fmt: skip

    def start(self) -> None:
        self._run(
            [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_path), "-w", "-t", "60", "start"]
        )

    def stop(self, mode: str = "fast") -> None:
        """``fast``: clean shutdown; ``immediate``: kill the server (crash recovery at the next start)."""
        with contextlib.suppress(RuntimeError):
            self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        done = subprocess.run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "status"], capture_output=True)
        return done.returncode == 0

    def create_database(self, name: str) -> str:
        """A fresh database owned by the service's user; returns its DSN."""
        self.psql(f"CREATE DATABASE {name} OWNER {USER}")
        return self.dsn(database=name)

    def dsn(self, user: str = USER, database: str = DATABASE) -> str:
        """The DSN the service gets (no password: that comes in PG_PASSWORD)."""
        return (
            f"postgresql://{user}@localhost:{self.port}/{database}"
            f"?sslmode=verify-full&sslrootcert={self.ca_file}"
        )

    def connect(self, database: str = DATABASE) -> psycopg.Connection[Any]:
        import psycopg

        return psycopg.connect(self.dsn(database=database), password=self.password, autocommit=True)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"
