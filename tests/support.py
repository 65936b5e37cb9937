"""Servers the tests start as subprocesses: a free port, waiting until one listens, the demo's environment.

Standard library only: ``tests/pgserver.py`` imports it while Django reads ``tests/settings.py``.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "demo"


def free_port() -> int:
    """Return a loopback TCP port nothing listens on (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(
    port: int,
    server: subprocess.Popen,
    timeout: float = 30,
    *,
    name: str = "the server",
    host: str = "127.0.0.1",
    output: Callable[[], str] | None = None,
) -> None:
    """Wait until something accepts connections on ``host:port``.

    Raises ``RuntimeError`` if ``server`` exits first (with what ``output()`` returns: its log),
    ``TimeoutError`` if nothing listens after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            said = output().strip() if output else ""
            raise RuntimeError(f"{name} exited with code {server.returncode}" + (f": {said}" if said else ""))
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} is not listening on {host}:{port} after {timeout:g} s") from None
            time.sleep(0.05)


def demo_env(**extra: str) -> dict[str, str]:
    """Return the environment for the demo's own commands (``demo/run.sh``, ``demo/run-gunicorn.sh``).

    This interpreter (``DEMO_PYTHON``: the test environment already has the demo's dependencies),
    the repository on ``PYTHONPATH``, none of the test suite's Django settings or ``DATABASE_URL``
    (the demo then uses SQLite), then ``extra``.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL")}
    env["DEMO_PYTHON"] = sys.executable
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def http_get(port: int, path: str, timeout: float = 10, host: str = "127.0.0.1") -> tuple[int, str]:
    """Send one GET on a new connection; return the status and the body (undecodable bytes replaced)."""
    client = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        client.request("GET", path)
        response = client.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        client.close()


def source_line(path: str, text: str, function: str) -> str:
    """Return ``"path:line in function"``, as conntrace's ``opened_in``, for the first line with ``text``.

    ``path`` is from the repository root.
    """
    lines = (REPO / path).read_text().splitlines()
    return f"{path}:{next(number for number, line in enumerate(lines, 1) if text in line)} in {function}"


def children_of(pid: int) -> set[int]:
    """Return the ids of the live processes whose parent is ``pid`` (read from ``/proc``; Linux)."""
    children = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after it.
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue  # it ended while we looked
        if int(fields[1]) == pid and fields[0] != "Z":
            children.add(int(entry))
    return children


def stop(server: subprocess.Popen, timeout: float = 15) -> int:
    """Send SIGTERM to ``server`` and wait for it to exit (SIGKILL after ``timeout`` s); return its code."""
    server.terminate()
    try:
        return server.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        server.kill()
        return server.wait()


def wait_for(condition: Callable[[], bool], timeout: float = 30, *, what: str = "the condition") -> None:
    """Wait until ``condition()`` is true; raise ``TimeoutError`` naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: still not true after {timeout:g} s")
        time.sleep(0.05)


def server_env(settings: str, **extra: str) -> dict[str, str]:
    """Return the environment of a server under test: Django's ``settings``, the repository, ``extra``.

    The servers' own variables (GUNICORN_*, UWSGI_*) of this process are left out.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GUNICORN", "UWSGI"))}
    env.update(DJANGO_SETTINGS_MODULE=settings, PYTHONPATH=str(REPO), **extra)
    return env


def run_module(
    module: str, *args: str, timeout: float = 120, python_options: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m module args`` from the repository in a fresh interpreter, without the test settings."""
    return subprocess.run(
        [sys.executable, *python_options, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"},
    )
