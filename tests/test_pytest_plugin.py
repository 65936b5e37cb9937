"""The pytest plugin on a sample project (tests/plugin_sample/), run in a subprocess with explicit options.

The sample has one test per connection problem (their names start with
``test_bad_``) and clean tests (``test_clean_``): ``report`` lists exactly the
bad ones with their lines, ``strict`` fails exactly them at teardown (their
bodies pass), ``off`` changes nothing; the same under pytest-xdist, whose
workers send their findings to the controller.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests import pgserver

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "plugin_sample"


def line_of(name: str, text: str) -> str:
    """Return ``"name:N"`` for the first line of the sample file ``name`` that contains ``text``."""
    lines = (SAMPLE / name).read_text().splitlines()
    return f"{name}:{next(n for n, line in enumerate(lines, 1) if text in line)}"


QUERY_LINE = f"{line_of('check_sample.py', 'connection.cursor()')} in query"
READY_LINE = "sampleapp/apps.py:11 in SampleAppConfig.ready"
EXPECTED = {
    ("check_fork.py::test_bad_fork_shares_the_reference_session", "import_connection_crossed_fork"),
    ("check_sample.py::test_bad_thread_keeps_its_connection_open", "thread_left_open"),
    ("check_sample.py::test_bad_thread_ends_without_closing", "abandoned_unclosed"),
    ("check_sample.py::test_bad_double_close", "double_close"),
    ("check_sample.py::test_bad_close_error", "close_error"),
}
BAD = {test for test, _ in EXPECTED}
FINDING = re.compile(r"^(check_\w+\.py::\w+): (\w+): '(\w+)' connection opened in (.+?): ", re.M)
# The fork test first: a transactional test closes every connection when it ends.
FILES = ("check_fork.py", "check_sample.py")
OUTCOME = re.compile(r"^(PASSED|FAILED|ERROR) (check_\w+\.py::\w+)", re.M)


def outer_env_removed() -> dict[str, str]:
    """Return this environment without the outer run's Django settings and pytest variables."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST_"))}


def inner_pytest(
    cwd: Path, env: dict[str, str], *options: str, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run pytest in a subprocess, in ``cwd``, without the cache provider."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *options],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sample_env(tmp_path: Path, db: str) -> dict[str, str]:
    host, port = pgserver.ensure()
    env = outer_env_removed()
    env.update(
        PYTHONPATH=f"{ROOT}{os.pathsep}{SAMPLE}",
        SAMPLE_DIR=str(tmp_path),
        SAMPLE_DB=db,
        SAMPLE_TEST_DB=f"test_sample_{uuid.uuid4().hex[:8]}",
        CONNTRACE_TEST_PGHOST=host,
        CONNTRACE_TEST_PGPORT=str(port),
    )
    return env


def run_sample(
    tmp_path: Path, db: str, *options: str, files: tuple[str, ...] = FILES, **env: str
) -> subprocess.CompletedProcess:
    return inner_pytest(SAMPLE, {**sample_env(tmp_path, db), **env}, "-rA", *options, *files)


def outcomes(out: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {"PASSED": set(), "FAILED": set(), "ERROR": set()}
    for outcome, test in OUTCOME.findall(out):
        found[outcome].add(test)
    return found


def findings(out: str) -> set[tuple[str, str]]:
    return {(test, kind) for test, kind, _, _ in FINDING.findall(out)}


def assert_used(driver: str, out: str) -> None:
    """Check the driver a sample run used: a clean test prints its connection's module."""
    if driver:
        assert re.search(rf"^driver: {driver}\b", out, re.M), out


def all_tests(out: str) -> set[str]:
    return set().union(*outcomes(out).values())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("db", "driver"), [("postgres", "psycopg"), ("postgres", "psycopg2"), ("sqlite", "")]
)
def test_report_lists_exactly_the_bad_tests_with_their_opening_lines(db, driver, tmp_path):
    run = run_sample(tmp_path, db, "--conntrace=report", SAMPLE_DRIVER=driver)
    assert run.returncode == 0, run.stdout + run.stderr
    assert findings(run.stdout) == EXPECTED, run.stdout
    lines = {test: (alias, line) for test, _, alias, line in FINDING.findall(run.stdout)}
    assert lines.pop("check_fork.py::test_bad_fork_shares_the_reference_session") == ("reference", READY_LINE)
    assert set(lines.values()) == {("default", QUERY_LINE)}
    # The stack under each finding names the test's own line.
    double_close_query = line_of("check_sample.py", "def test_bad_double_close").split(":")
    assert f"    check_sample.py:{int(double_close_query[1]) + 2} in test_bad_double_close" in run.stdout
    assert outcomes(run.stdout)["PASSED"] == all_tests(run.stdout)
    assert pgserver.APP_PASSWORD not in run.stdout + run.stderr
    assert_used(driver, run.stdout)  # the clean test prints it (shown by -rA)


@pytest.mark.slow
def test_strict_fails_exactly_the_bad_tests_at_teardown_and_keeps_their_bodies_result(tmp_path):
    run = run_sample(tmp_path, "postgres", "--conntrace=strict")
    assert run.returncode == 1
    result = outcomes(run.stdout)
    assert result["ERROR"] == BAD, run.stdout
    assert result["FAILED"] == set()
    assert result["PASSED"] == all_tests(run.stdout)  # every body passed, the clean tests too
    assert "ERROR at teardown of test_bad_double_close" in run.stdout
    assert f"double_close: 'default' connection opened in {QUERY_LINE}" in run.stdout


@pytest.mark.slow
def test_off_changes_nothing(tmp_path):
    run = run_sample(tmp_path, "postgres", "--conntrace=off")
    assert run.returncode == 0, run.stdout + run.stderr
    assert findings(run.stdout) == set()
    assert "connection finding" not in run.stdout
    assert len(outcomes(run.stdout)["PASSED"]) == 9


@pytest.mark.slow
def test_findings_of_xdist_workers_reach_the_controllers_report(tmp_path):
    """Each worker is a new interpreter (no fork): only the test that forks shares the startup session."""
    run = run_sample(tmp_path, "postgres", "--conntrace=strict", "-p", "xdist", "-n", "2")
    assert findings(run.stdout) == EXPECTED, run.stdout
    assert outcomes(run.stdout)["ERROR"] == BAD


def test_a_project_without_django_sees_nothing(tmp_path):
    (tmp_path / "test_plain.py").write_text("def test_plain():\n    assert 1 + 1 == 2\n")
    env = {**outer_env_removed(), "PYTHONPATH": str(ROOT)}
    for mode in ("report", "strict"):
        run = inner_pytest(tmp_path, env, "-q", f"--conntrace={mode}")
        assert run.returncode == 0, run.stdout + run.stderr
        assert "1 passed" in run.stdout
        assert "conntrace" not in run.stdout + run.stderr


DJANGO_WITHOUT_CONNTRACE = """\
import django
from django.conf import settings

settings.configure(
    INSTALLED_APPS=["django.contrib.contenttypes"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
)
django.setup()
"""

USES_A_CONNECTION = """\
import pytest
from django.db import connection

from conntrace import instrument


@pytest.mark.django_db
def test_a_query():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    print("conntrace installed:", instrument.is_installed())
"""


def test_a_django_project_without_conntrace_in_installed_apps_is_left_alone_unless_asked(tmp_path):
    """conntrace came along as a dependency: its plugin installs nothing in that project's tests."""
    (tmp_path / "conftest.py").write_text(DJANGO_WITHOUT_CONNTRACE)
    (tmp_path / "test_app.py").write_text(USES_A_CONNECTION)
    env = {**outer_env_removed(), "PYTHONPATH": str(ROOT)}
    run = inner_pytest(tmp_path, env, "-q", "-s")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "conntrace installed: False" in run.stdout
    assert "tests watched" not in run.stdout
    asked = inner_pytest(tmp_path, env, "-q", "-s", "--conntrace=report")
    assert "conntrace installed: True" in asked.stdout
    assert "conntrace (report): 1 tests watched, no finding" in asked.stdout


@pytest.mark.slow
def test_a_pool_left_open_is_named_and_so_are_its_sessions_when_the_drop_fails(tmp_path):
    """A pooled test-mirror alias: Django closes the pool of the alias it drops, not the mirror's."""
    run = run_sample(tmp_path, "postgres", "--conntrace=report", files=("check_pool.py",), SAMPLE_POOL="1")
    assert findings(run.stdout) == {("check_pool.py::test_bad_pool_left_open", "pool_left_open")}, run.stdout
    assert "is being accessed by other users" in run.stdout  # Django's error, a warning under pytest-django
    section = run.stdout.split("conntrace: the test database could not be dropped", 1)[1]
    first_use = line_of("check_pool.py", 'connections["pooled"].cursor()')
    assert "'pooled': a psycopg pool still open with" in section
    assert f"first used in {first_use} in test_bad_pool_left_open" in section


def test_an_error_inside_the_plugin_is_reported_once_and_no_test_fails(tmp_path):
    (tmp_path / "break_conntrace.py").write_text(
        "from conntrace import findings\n\n"
        "def broken(self):\n    raise RuntimeError('broken on purpose')\n\n"
        "findings.Watcher.end = broken\n"
    )
    run = run_sample(
        tmp_path,
        "sqlite",
        "--conntrace=strict",
        "-p",
        "break_conntrace",
        PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}{os.pathsep}{SAMPLE}",
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("stopped watching after an error of its own") == 1
    assert "RuntimeError: broken on purpose" in run.stdout
