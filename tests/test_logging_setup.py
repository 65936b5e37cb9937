"""The README's "Logging set-up", run as written: conntrace's warnings arrive as JSON lines.

``tests/e2e/logging_stdlib.py`` and ``tests/e2e/logging_django_structlog.py``
hold the README's two blocks character for character. Each project runs under
gunicorn and serves one request whose view closes its database connection
behind Django's back, so that Django's close at the end of the request is a
``connection_double_close`` warning. Without the ``conntrace`` logger
(``tests/e2e/logging_documented_only.py``) that warning is a dict repr on stderr.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import pgserver
from tests.support import REPO, free_port, wait_listening

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

WARNING_DEADLINE_S = 15
VIEW = REPO / "tests" / "e2e" / "double_close.py"
OPENED_IN = "tests/e2e/double_close.py:{} in close_behind_djangos_back".format(
    VIEW.read_text().splitlines().index("    with connection.cursor() as cursor:") + 1
)
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$")


def readme_blocks() -> list[str]:
    """Return the Python code blocks of the README's "Logging set-up" section."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Logging set-up\n") :]
    section = section[: section.index("\n## ")]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


@pytest.mark.parametrize(("block", "project"), [(0, "logging_stdlib"), (1, "logging_django_structlog")])
def test_each_readme_block_is_its_projects_settings_as_written(block, project):
    assert len(readme_blocks()) == 2
    assert readme_blocks()[block] in (REPO / "tests" / "e2e" / f"{project}.py").read_text()


@dataclass
class Served:
    """What one gunicorn run printed."""

    stdout: list[str]
    stderr: list[str]

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout]

    def named(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.json_lines() if line["event"] == event]

    def worker_pid(self) -> int:
        [pid] = re.findall(r"Booting worker with pid: (\d+)", "\n".join(self.stderr))
        return int(pid)


def is_dict_repr(line: str) -> bool:
    """Tell a Python dict's repr: what logging's last-resort handler prints for a structlog event."""
    return line.lstrip().startswith("{'")


def serve_one_double_close(settings_module: str, tmp_path: Path) -> Served:
    """Run the project under gunicorn, serve one request whose view double-closes, stop it, collect."""
    port = free_port()
    out, err = tmp_path / f"{settings_module}.out", tmp_path / f"{settings_module}.err"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUNICORN")}
    env.update(DJANGO_SETTINGS_MODULE=f"tests.e2e.{settings_module}", PYTHONPATH=str(REPO))
    command = [
        sys.executable, "-m", "gunicorn", "django.core.wsgi:get_wsgi_application()",
        "--workers", "1", "--bind", f"127.0.0.1:{port}", "--timeout", "10", "--graceful-timeout", "3",
    ]  # fmt: skip
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        server = subprocess.Popen(command, cwd=REPO, env=env, stdout=stdout, stderr=stderr)
        try:
            wait_listening(port, server, name="gunicorn", output=err.read_text)
            client = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            client.request("GET", "/double-close/")
            response = client.getresponse()
            assert (response.status, response.read()) == (200, b"closed")
            client.close()
            # The warning comes after the response: at request_finished, when Django closes.
            deadline = time.monotonic() + WARNING_DEADLINE_S
            while "connection_double_close" not in out.read_text() + err.read_text():
                assert time.monotonic() < deadline, f"no warning after {WARNING_DEADLINE_S} s"
                time.sleep(0.05)
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    return Served(out.read_text().splitlines(), err.read_text().splitlines())


def conntraces_warning(served: Served) -> dict[str, Any]:
    """Return the one double-close warning, having checked that everything came as it should.

    Every line on stdout is JSON, no line anywhere is a dict repr, no password
    shows, and the conntrace logger's level held back the debug events.
    """
    assert served.json_lines()  # every stdout line parses
    assert [line for line in served.stdout + served.stderr if is_dict_repr(line)] == []
    assert pgserver.APP_PASSWORD not in "\n".join(served.stdout + served.stderr)
    assert served.named("connection_opened") == []  # debug: below the conntrace logger's WARNING
    [warning] = served.named("connection_double_close")
    assert (warning["level"], warning["logger"]) == ("warning", "conntrace")
    assert (warning["closed_by"], warning["opened_in"]) == ("application", OPENED_IN)
    assert warning["pid"] == served.worker_pid()
    return warning


def test_structlog_with_the_standard_library_gives_the_warning_as_a_json_line(tmp_path):
    warning = conntraces_warning(serve_one_double_close("logging_stdlib", tmp_path))
    assert warning["timestamp"]


def test_django_structlog_gives_the_warning_as_a_json_line_with_the_request_id(tmp_path):
    served = serve_one_double_close("logging_django_structlog", tmp_path)
    warning = conntraces_warning(served)
    [started] = served.named("request_started")
    assert started["logger"] == "django_structlog.middlewares.request"
    assert UUID.match(started["request_id"])
    # At request_finished django-structlog has cleared its context: conntrace remembered the request's.
    assert warning["request_id"] == started["request_id"]


def test_without_the_conntrace_logger_the_warning_is_a_dict_repr_on_stderr(tmp_path):
    """django-structlog's documented settings alone: what the README's addition fixes."""
    served = serve_one_double_close("logging_documented_only", tmp_path)
    assert served.named("connection_double_close") == []
    [printed] = [line for line in served.stderr if "connection_double_close" in line]
    assert is_dict_repr(printed)
    assert "'logger': 'conntrace'" in printed and "'level': 'warning'" in printed
