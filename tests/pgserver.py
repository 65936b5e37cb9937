"""A real, throwaway PostgreSQL 15 server for the test suite.

Started once by the first process that needs it (``tests/settings.py``), in a
temporary directory, as an unprivileged user (initdb refuses root), listening
on a unix socket and on a free loopback port. Child processes (gunicorn,
forked workers, the psycopg2 run) find it through environment variables and
reuse it. Stopped at exit by the process that started it.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time

from tests.support import free_port

APP_USER = "conntrace_app"
# Deliberately distinctive, so that tests can grep every output for it.
APP_PASSWORD = "Zq8-conntrace-S3CRET-pw"
ENV_HOST = "CONNTRACE_TEST_PGHOST"
ENV_PORT = "CONNTRACE_TEST_PGPORT"


def bindir() -> str:
    candidates = [
        os.environ.get("PG_BINDIR", ""),
        *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True),
    ]
    for path in candidates:
        if path and os.path.exists(os.path.join(path, "initdb")):
            return path
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(found)
    raise RuntimeError("PostgreSQL server binaries not found: install postgresql (see .ci/run)")


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory."""

    def __init__(self) -> None:
        self.bindir = bindir()
        self.root = tempfile.mkdtemp(prefix="conntrace-pg-")
        self.datadir = os.path.join(self.root, "data")
        self.sockdir = os.path.join(self.root, "sock")
        self.port = free_port()
        self.host = self.sockdir

    def _chown(self, *paths: str) -> None:
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            for path in paths:
                os.chown(path, pw.pw_uid, pw.pw_gid)

    def start(self) -> None:
        os.makedirs(self.sockdir)
        os.chmod(self.root, 0o755)
        self._chown(self.root, self.sockdir)
        subprocess.run(
            _as_server_user(
                [
                    os.path.join(self.bindir, "initdb"),
                    "-D",
                    self.datadir,
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        with open(os.path.join(self.datadir, "pg_hba.conf"), "w") as hba:
            hba.write(
                "local all postgres trust\n"
                "local all all scram-sha-256\n"
                "host all postgres 127.0.0.1/32 trust\n"
                "host all all 127.0.0.1/32 scram-sha-256\n"
            )
        with open(os.path.join(self.datadir, "postgresql.conf"), "a") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.sockdir}'\n"
                "max_connections = 300\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "shared_buffers = 64MB\n"
            )
        self._chown(os.path.join(self.datadir, "pg_hba.conf"))
        self.pg_ctl("start", "-w", "-t", "60", "-l", os.path.join(self.root, "server.log"))
        self.psql(f"CREATE ROLE {APP_USER} LOGIN CREATEDB PASSWORD '{APP_PASSWORD}'")
        self.psql(f"GRANT pg_signal_backend TO {APP_USER}")
        for name in ("conntrace", "conntrace_other"):
            self.psql(f"CREATE DATABASE {name} OWNER {APP_USER}")

    def pg_ctl(self, *args: str) -> None:
        subprocess.run(
            _as_server_user([os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, *args]),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def restart(self) -> None:
        self.pg_ctl("restart", "-m", "fast", "-w", "-t", "60", "-l", os.path.join(self.root, "server.log"))

    def psql(self, sql: str, database: str = "postgres") -> str:
        out = subprocess.run(
            [
                os.path.join(self.bindir, "psql"),
                "-h",
                self.sockdir,
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-c",
                sql,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout

    def stop(self) -> None:
        try:
            self.pg_ctl("stop", "-m", "immediate", "-w")
        except Exception:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


_server: PostgresServer | None = None


def ensure() -> tuple[str, int]:
    """Return (socket directory, port) of the test server, starting it if no process has."""
    global _server
    if os.environ.get(ENV_HOST):
        return os.environ[ENV_HOST], int(os.environ[ENV_PORT])
    _server = PostgresServer()
    _server.start()
    atexit.register(_server.stop)
    os.environ[ENV_HOST] = _server.host
    os.environ[ENV_PORT] = str(_server.port)
    os.environ["CONNTRACE_TEST_PGROOT"] = _server.root
    return _server.host, _server.port


def server() -> PostgresServer:
    """Return a handle on the running server (also from a process that did not start it)."""
    if _server is not None:
        return _server
    handle = PostgresServer.__new__(PostgresServer)
    handle.bindir = bindir()
    handle.root = os.environ["CONNTRACE_TEST_PGROOT"]
    handle.datadir = os.path.join(handle.root, "data")
    handle.sockdir = os.environ[ENV_HOST]
    handle.host = handle.sockdir
    handle.port = int(os.environ[ENV_PORT])
    return handle


def wait_ready(timeout: float = 30) -> None:
    """Wait until the server accepts connections again (after a restart)."""
    host, port = ensure()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = subprocess.run(
            [os.path.join(bindir(), "pg_isready"), "-h", host, "-p", str(port)], capture_output=True
        )
        if r.returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError("PostgreSQL did not come back")
