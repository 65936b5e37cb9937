"""A real pgbouncer in front of the test PostgreSQL, for the end-to-end tests.

Runs as the ``postgres`` user (pgbouncer refuses root) with its own
configuration, auth file and log in a temporary directory, listening on a
free loopback port. ``pool_mode = session`` is the set-up of the original bug:
every client connection is pinned to one server session, so a client socket
shared by forked workers carries their queries on one session.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile

from tests import pgserver
from tests.support import free_port, wait_listening

BINARY_CANDIDATES = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")


def binary() -> str:
    """Return the pgbouncer executable."""
    for path in BINARY_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("pgbouncer")
    if found:
        return found
    raise RuntimeError("pgbouncer not found: install the pgbouncer package (see scripts/test.sh)")


class PgBouncer:
    """One pgbouncer process pooling every database of the test server for the app role."""

    def __init__(self, pool_mode: str = "session") -> None:
        self.pool_mode = pool_mode
        self.pg_host, self.pg_port = pgserver.ensure()
        self.root = tempfile.mkdtemp(prefix="conntrace-pgbouncer-")
        self.host = "127.0.0.1"
        self.port = free_port()
        self.logfile = os.path.join(self.root, "pgbouncer.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> str:
        userlist = os.path.join(self.root, "userlist.txt")
        with open(userlist, "w") as f:
            f.write(f'"{pgserver.APP_USER}" "{pgserver.APP_PASSWORD}"\n')
        os.chmod(userlist, 0o600)
        ini = os.path.join(self.root, "pgbouncer.ini")
        with open(ini, "w") as f:
            f.write(
                "[databases]\n"
                f"* = host={self.pg_host} port={self.pg_port}\n"
                "[pgbouncer]\n"
                f"listen_addr = {self.host}\nlisten_port = {self.port}\n"
                f"unix_socket_dir = {self.root}\n"
                f"auth_type = scram-sha-256\nauth_file = {userlist}\n"
                f"pool_mode = {self.pool_mode}\n"
                "max_client_conn = 500\ndefault_pool_size = 100\n"
                "ignore_startup_parameters = extra_float_digits,options\n"
                f"logfile = {self.logfile}\n"
                "log_connections = 1\nlog_disconnections = 1\n"
            )
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chmod(self.root, 0o700)
            for path in (self.root, userlist, ini):
                os.chown(path, pw.pw_uid, pw.pw_gid)
        return ini

    def start(self, timeout: float = 15) -> PgBouncer:
        """Start pgbouncer and wait until it accepts connections."""
        ini = self._write_config()
        as_user = {}
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            # Popen switches user itself, so that terminate() signals pgbouncer and not a wrapper.
            as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        self.proc = subprocess.Popen(
            [binary(), ini], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.root, **as_user
        )
        try:
            wait_listening(
                self.port, self.proc, timeout, name="pgbouncer", host=self.host, output=self._stderr
            )
        except TimeoutError:
            self.stop()
            raise
        return self

    def _stderr(self) -> str:
        """Return what pgbouncer wrote on stderr (read once it has exited)."""
        return self.proc.stderr.read().decode(errors="replace") if self.proc and self.proc.stderr else ""

    def log(self) -> str:
        """Return pgbouncer's log so far."""
        try:
            with open(self.logfile, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop pgbouncer and remove its directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
