"""``python -m conntrace preflight`` and ``manage.py conntrace_preflight`` on real projects.

Each run is a fresh interpreter that imports the application the way a
preloading server does, against the test PostgreSQL: the end-to-end project
(``tests/e2e``) reads a ``Setting`` while Django starts, its clean variant does
not, its pooled variant closes its connection but the pool keeps the socket.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import pgserver
from tests.e2e import db as e2e_db
from tests.support import free_port, stop, wait_for

pytestmark = [pytest.mark.postgres]

ROOT = Path(__file__).resolve().parent.parent
IMPORT_TIME_LINE = "tests/e2e/branding/site.py:9 in <module>"


@pytest.fixture(scope="module", autouse=True)
def e2e_database() -> None:
    """Give the end-to-end project its database (the import-time query reads it)."""
    e2e_db.create()


def run(
    *args: str, command: str = "cli", settings: str | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """Run the preflight as a user would, from the project's directory, and check no secret leaks."""
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")}
    if cwd != ROOT:
        env["PYTHONPATH"] = str(ROOT)  # the project's modules, from another directory
    if settings:
        env["DJANGO_SETTINGS_MODULE"] = settings
    if command == "cli":
        argv = [sys.executable, "-m", "conntrace", "preflight", *args]
    else:
        argv = [
            sys.executable,
            "-m",
            "django",
            "conntrace_preflight",
            *args,
            "--settings",
            "tests.e2e.settings",
        ]
        env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert pgserver.APP_PASSWORD not in out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    return out


def test_reports_the_import_time_line_and_exits_1():
    out = run("tests.e2e.wsgi:application")
    assert out.returncode == 1, out.stderr
    lines = out.stdout.splitlines()
    assert (
        lines[0]
        == "conntrace preflight: importing tests.e2e.wsgi:application left 1 database connection open."
    )
    assert f"  default (postgresql), opened in {IMPORT_TIME_LINE}" in lines
    stack = [line.strip() for line in lines if line.startswith("      ")]
    assert stack == [
        IMPORT_TIME_LINE,
        "tests/e2e/branding/apps.py:9 in BrandingConfig.ready",
        "tests/e2e/wsgi.py:9 in <module>",
    ]
    assert "--preload" in out.stdout and "lazy-apps" in out.stdout


def test_json_output_lists_each_open_connection():
    out = run("tests.e2e.wsgi", "--json")
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    assert report["target"] == "tests.e2e.wsgi"
    assert report["clean"] is False
    [entry] = report["open_connections"]
    assert entry["alias"] == "default"
    assert entry["vendor"] == "postgresql"
    assert entry["opened_in"] == IMPORT_TIME_LINE
    assert entry["opened_stack"][0] == IMPORT_TIME_LINE
    assert isinstance(entry["backend_pid"], int)
    assert entry["pooled"] is False


def test_clean_project_exits_0():
    out = run("tests.e2e.clean_wsgi:application")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        "conntrace preflight: importing tests.e2e.clean_wsgi:application left no database connection open: "
        "safe to preload."
    )
    out = run("tests.e2e.clean_wsgi", "--json")
    assert out.returncode == 0
    assert json.loads(out.stdout) == {"target": "tests.e2e.clean_wsgi", "clean": True, "open_connections": []}


def test_a_connection_closed_into_a_psycopg_pool_is_still_reported():
    out = run("tests.e2e.pool_wsgi", "--json")
    assert out.returncode == 1, out.stderr
    found = json.loads(out.stdout)["open_connections"]
    assert found  # one, or two when the pool's filler thread connected too
    for entry in found:
        assert entry["pooled_idle"] is True
        assert entry["opened_in"] == IMPORT_TIME_LINE


def test_management_command_gives_the_same_report():
    out = run("tests.e2e.wsgi", command="manage.py")
    assert out.returncode == 1, out.stderr
    assert f"  default (postgresql), opened in {IMPORT_TIME_LINE}" in out.stdout.splitlines()
    out = run("tests.e2e.wsgi", "--json", command="manage.py")
    assert out.returncode == 1
    assert [e["opened_in"] for e in json.loads(out.stdout)["open_connections"]] == [IMPORT_TIME_LINE]


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("tests.e2e.no_such_module", "no module named 'tests.e2e.no_such_module'"),
        (
            "tests.e2e.broken_wsgi",
            "importing 'tests.e2e.broken_wsgi' raised ConnectionError: cannot reach "
            "postgresql://conntrace_app:***@127.0.0.1:1/shop (at tests/e2e/broken_wsgi.py:5)",
        ),
        ("tests.e2e.wsgi:no_such_app", "module 'tests.e2e.wsgi' has no attribute 'no_such_app'"),
        ("tests.e2e.db:SITE_NAME", "tests.e2e.db:SITE_NAME is a str, not a WSGI/ASGI application"),
        ("tests.e2e.wsgi:", "'tests.e2e.wsgi:' is not MODULE[:ATTR]"),
    ],
)
def test_a_target_that_cannot_be_loaded_exits_2_with_one_line(target, reason):
    out = run(target)
    assert out.returncode == 2
    assert out.stdout == ""
    [line] = [line for line in out.stderr.splitlines() if line.startswith("conntrace preflight:")]
    assert line.startswith(f"conntrace preflight: {reason}")


def test_json_reports_a_load_failure_too():
    out = run("tests.e2e.no_such_module", "--json")
    assert out.returncode == 2
    assert json.loads(out.stdout)["error"].startswith("no module named")


def test_the_management_command_exits_2_on_a_bad_target():
    out = run("tests.e2e.no_such_module", command="manage.py")
    assert out.returncode == 2
    assert "conntrace preflight: no module named 'tests.e2e.no_such_module'" in out.stderr


# --------------------------------------------------------------------------- the default target


def test_without_a_target_the_command_checks_settings_wsgi_application():
    out = run(command="manage.py")
    assert out.returncode == 1, out.stderr
    assert "conntrace preflight: checking tests.e2e.wsgi:application (settings.WSGI_APPLICATION)" in (
        out.stderr.splitlines()
    )
    assert out.stdout.splitlines()[0] == (
        "conntrace preflight: importing tests.e2e.wsgi:application left 1 database connection open."
    )


def test_without_a_target_the_cli_reads_django_settings_module():
    out = run("--json", settings="tests.e2e.clean_settings")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {
        "target": "tests.e2e.clean_wsgi:application",
        "clean": True,
        "open_connections": [],
    }
    assert "(settings.WSGI_APPLICATION)" in out.stderr


def test_without_a_target_or_settings_the_cli_says_so_in_one_line():
    out = run()
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        "conntrace preflight: no application given and no settings to read WSGI_APPLICATION from "
        "(set DJANGO_SETTINGS_MODULE, or name it: mysite.wsgi:application)"
    ]


# --------------------------------------------------------------------------- the fixes it recommends


def readme_pre_fork_hook() -> str:
    """Return the gunicorn config the README gives (its ``pre_fork`` hook), as written there."""
    text = (ROOT / "README.md").read_text()
    [block] = [b for b in text.split("```python\n")[1:] if b.startswith("# gunicorn.conf.py")]
    return block.split("```")[0]


def test_the_readme_pre_fork_hook_is_the_end_to_end_projects_config():
    """tests/test_e2e_gunicorn.py serves with tests/e2e/gunicorn_conf.py: the README's block as written."""
    assert readme_pre_fork_hook() in (ROOT / "tests/e2e/gunicorn_conf.py").read_text()


def test_the_readme_pre_fork_hook_makes_preflight_pass(tmp_path):
    config = tmp_path / "gunicorn.conf.py"
    config.write_text(readme_pre_fork_hook())
    out = run("tests.e2e.wsgi", "--gunicorn-config", str(config))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == (
        "conntrace preflight: importing tests.e2e.wsgi and running gunicorn's pre_fork left no database "
        "connection open: safe to preload."
    )
    # The management command reads it too (here with settings.WSGI_APPLICATION as the target).
    out = run("-c", "python:tests.e2e.gunicorn_conf", command="manage.py")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "running gunicorn's pre_fork left no database connection open" in out.stdout
    # The same project without the hook fails, and a config without pre_fork changes nothing.
    assert run("tests.e2e.wsgi").returncode == 1
    (tmp_path / "plain.conf.py").write_text("workers = 4\n")
    out = run("tests.e2e.wsgi", "-c", str(tmp_path / "plain.conf.py"), "--json")
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    assert report["gunicorn_hooks"] == []
    assert [e["opened_in"] for e in report["open_connections"]] == [IMPORT_TIME_LINE]


def test_without_c_a_gunicorn_conf_py_in_the_directory_is_read_as_gunicorn_reads_it(tmp_path):
    (tmp_path / "gunicorn.conf.py").write_text(readme_pre_fork_hook())
    out = run("tests.e2e.wsgi", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "reading ./gunicorn.conf.py, as gunicorn does" in out.stderr
    assert "running gunicorn's pre_fork left no database connection open" in out.stdout
    (tmp_path / "gunicorn.conf.py").unlink()
    assert run("tests.e2e.wsgi", cwd=tmp_path).returncode == 1  # no config: the hook is not there


def test_hooks_run_in_gunicorn_order_with_a_server_and_a_worker(tmp_path):
    """on_starting(arbiter), when_ready(arbiter), pre_fork(arbiter, worker), as gunicorn calls them."""
    calls = tmp_path / "calls.json"
    (tmp_path / "gunicorn.conf.py").write_text(
        "import json, os\n"
        "wsgi_app = 'tests.e2e.clean_wsgi:application'\n"
        "seen = []\n"
        "def on_starting(server):\n"
        "    server.log.info('starting'); seen.append(['on_starting', server.pid == os.getpid()])\n"
        "def when_ready(server):\n"
        "    seen.append(['when_ready', callable(server.app)])\n"
        "def pre_fork(server, worker):\n"
        "    seen.append(['pre_fork', worker.age, worker.pid,\n"
        "                 worker.ppid == server.pid, server.cfg.workers])\n"
        f"    open({str(calls)!r}, 'w').write(json.dumps(seen))\n"
        "workers = 3\n"
    )
    out = run("-c", f"file:{tmp_path / 'gunicorn.conf.py'}", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["gunicorn_hooks"] == ["on_starting", "when_ready", "pre_fork"]
    assert json.loads(out.stdout)["target"] == "tests.e2e.clean_wsgi:application"
    assert "(wsgi_app of the gunicorn config)" in out.stderr
    assert json.loads(calls.read_text()) == [
        ["on_starting", True],
        ["when_ready", True],
        ["pre_fork", 1, "[booting]", True, 3],
    ]


def test_a_hook_that_raises_exits_2_with_one_line(tmp_path):
    (tmp_path / "gunicorn.conf.py").write_text("def when_ready(server):\n    raise RuntimeError('no')\n")
    out = run("tests.e2e.clean_wsgi", "-c", str(tmp_path / "gunicorn.conf.py"))
    assert out.returncode == 2
    [line] = out.stderr.splitlines()
    assert line.startswith(
        f"conntrace preflight: when_ready of gunicorn config '{tmp_path / 'gunicorn.conf.py'}' raised "
        "RuntimeError: no (at "
    )
    out = run("tests.e2e.clean_wsgi", "-c", str(tmp_path / "missing.py"))
    assert (out.returncode, out.stderr.strip()) == (
        2,
        f"conntrace preflight: gunicorn config '{tmp_path / 'missing.py'}' does not exist",
    )


def test_a_connection_closed_at_the_end_of_the_preloaded_module_passes():
    out = run("tests.e2e.closing_wsgi")
    assert out.returncode == 0, out.stdout
    assert out.stdout.strip().endswith("left no database connection open: safe to preload.")


UWSGI_INIS = [
    ("[uwsgi]\nlazy-apps = true\n", True),
    ("[uwsgi]\nlazy-apps\n", True),
    ("[uwsgi]\nlazy = 1\n", True),
    ("[uwsgi]\nlazy-apps = off\n", False),
    ("[uwsgi]\nlazy-apps = false\nmaster = true\n", False),
    ("[uwsgi]\nmaster = true\n", False),
]


@pytest.mark.parametrize(("ini", "lazy"), UWSGI_INIS)
def test_uwsgi_lazy_apps_means_nothing_to_check(tmp_path, ini, lazy):
    (tmp_path / "uwsgi.ini").write_text(ini)
    out = run("tests.e2e.wsgi", "--uwsgi-ini", str(tmp_path / "uwsgi.ini"))
    if lazy:
        assert out.returncode == 0, out.stdout
        assert out.stdout.strip() == (
            "conntrace preflight: uWSGI with lazy-apps loads tests.e2e.wsgi in each worker, after the fork: "
            "no connection crosses it, nothing to check."
        )
    else:
        assert out.returncode == 1, out.stdout  # loaded in the master: the import-time query counts


@pytest.mark.slow
@pytest.mark.parametrize("ini", [ini for ini, _ in UWSGI_INIS])
def test_uwsgi_itself_agrees_with_the_ini_reading(tmp_path, ini):
    """Run uWSGI with the ini: the application is imported in the master exactly when preflight checks."""
    (tmp_path / "uwsgi.ini").write_text(ini)
    log = tmp_path / "uwsgi.log"
    command = [
        str(Path(sys.executable).with_name("uwsgi")), "--ini", str(tmp_path / "uwsgi.ini"), "--master",
        "--processes", "1", "--http-socket", f"127.0.0.1:{free_port()}", "--module",
        "tests.e2e.pid_wsgi:application", "--need-app", "--die-on-term",
    ]  # fmt: skip
    with open(log, "wb") as out:
        server = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: all(word in log.read_text() for word in ("pid_wsgi imported", "uWSGI worker")))
        finally:
            stop(server)
    text = log.read_text()
    master = int(re.search(r"spawned uWSGI master process \(pid: (\d+)\)", text).group(1))
    imported_in = int(re.search(r"pid_wsgi imported in (\d+)", text).group(1))
    lazy = run("tests.e2e.wsgi", "--uwsgi-ini", str(tmp_path / "uwsgi.ini")).returncode == 0
    assert lazy == (imported_in != master)


def test_the_uwsgi_lazy_apps_flag_says_the_same_in_json():
    out = run("tests.e2e.wsgi", "--uwsgi-lazy-apps", "--json")
    assert out.returncode == 0
    assert json.loads(out.stdout) == {
        "target": "tests.e2e.wsgi",
        "clean": True,
        "open_connections": [],
        "lazy_apps": True,
    }
