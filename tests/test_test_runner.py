"""``manage.py test --parallel 2`` with ``conntrace.test_runner.ConntraceRunner`` on the sample project.

The sample (tests/plugin_sample/runner_sample.py) has the problems of the
pytest sample as Django test cases; each forked worker follows its own tests
and its findings reach the main process's report. ``sampleapp`` opens a
session while Django starts, so the runner's own forks are a finding too.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_pytest_plugin import QUERY_LINE, READY_LINE, SAMPLE, assert_used, line_of, sample_env

RUNNER_FORK = "manage.py test --parallel (the runner forking its workers)"
BAD = {
    ("ThreadTests.test_bad_thread_keeps_its_connection_open", "thread_left_open"),
    ("ThreadTests.test_bad_thread_ends_without_closing", "abandoned_unclosed"),
    ("CloseTests.test_bad_double_close", "double_close"),
    ("CloseTests.test_bad_close_error", "close_error"),
}
# Clean under --parallel: the worker's copy of the startup session was discarded at the runner's fork.
FORK_TEST = "ForkTests.test_fork_after_a_startup_query"
CLEAN = {"ThreadTests.test_clean_thread_closes_its_connection", "CloseTests.test_clean_query", FORK_TEST}
FINDING = re.compile(
    r"^(?:runner_(?:pool_)?sample\.)?(\w+\.\w+|manage\.py test .+?\)): "
    r"(\w+): '(\w+)' connection opened in (.+?): ",
    re.M,
)
VERDICT = re.compile(r"^(test_\w+) \(runner_sample\.(\w+)\.\1\) \.\.\. (ok|ERROR|FAIL)$", re.M)


def manage_test(
    tmp_path: Path, db: str, *options: str, label: str = "runner_sample", parallel: str = "2", **env: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "django",
            "test",
            label,
            "--noinput",
            "--settings",
            "sample_settings",
            "--testrunner",
            "conntrace.test_runner.ConntraceRunner",
            "--parallel",
            parallel,
            "-v",
            "2",
            *options,
        ],
        cwd=SAMPLE,
        env={**sample_env(tmp_path, db), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def findings(err: str) -> set[tuple[str, str]]:
    return {(test, kind) for test, kind, _, _ in FINDING.findall(err)}


def verdicts(err: str) -> dict[str, set[str]]:
    """Return {test: its verdicts}: in strict mode a bad test is both "ok" (its body) and "ERROR"."""
    found: dict[str, set[str]] = {}
    for name, case, verdict in VERDICT.findall(err):
        found.setdefault(f"{case}.{name}", set()).add(verdict)
    return found


@pytest.mark.slow
@pytest.mark.parametrize(
    ("db", "driver"), [("postgres", "psycopg"), ("postgres", "psycopg2"), ("sqlite", "")]
)
def test_report_from_forked_workers_lists_exactly_the_bad_tests(db, driver, tmp_path):
    run = manage_test(tmp_path, db, "--conntrace=report", SAMPLE_DRIVER=driver)
    assert run.returncode == 0, run.stderr
    assert findings(run.stderr) == {*BAD, (RUNNER_FORK, "import_connection_crossed_fork")}, run.stderr
    lines = {test: (alias, line) for test, _, alias, line in FINDING.findall(run.stderr)}
    assert lines.pop(RUNNER_FORK) == ("reference", READY_LINE)
    assert set(lines.values()) == {("default", QUERY_LINE)}
    assert all(v == {"ok"} for v in verdicts(run.stderr).values())
    assert_used(driver, run.stdout)  # the clean query prints it (in a worker, to stdout)


@pytest.mark.slow
def test_strict_adds_an_error_to_exactly_the_bad_tests(tmp_path):
    run = manage_test(tmp_path, "postgres", "--conntrace=strict")
    assert run.returncode == 1
    result = verdicts(run.stderr)
    assert {test for test, _ in BAD} == {test for test, v in result.items() if v == {"ok", "ERROR"}}
    assert {test for test, v in result.items() if v == {"ok"}} == CLEAN
    assert "conntrace.test_runner.FindingError: conntrace (strict):" in run.stderr
    assert f"{RUNNER_FORK} ... ERROR" in run.stderr


@pytest.mark.slow
def test_off_changes_nothing(tmp_path):
    run = manage_test(tmp_path, "postgres", "--conntrace=off")
    assert run.returncode == 0, run.stderr
    assert findings(run.stderr) == set()
    assert "connection finding" not in run.stderr
    assert len(verdicts(run.stderr)) == 7


@pytest.mark.slow
def test_without_parallel_the_test_that_forks_is_named(tmp_path):
    run = manage_test(tmp_path, "postgres", "--conntrace=report", parallel="1")
    assert run.returncode == 0, run.stderr
    assert findings(run.stderr) == {*BAD, (FORK_TEST, "import_connection_crossed_fork")}, run.stderr


@pytest.mark.slow
def test_a_failed_test_database_drop_first_lists_what_is_open(tmp_path):
    run = manage_test(tmp_path, "postgres", label="runner_pool_sample", parallel="1", SAMPLE_POOL="1")
    assert run.returncode != 0
    listed = run.stderr.index("conntrace: connections still open in process")
    assert listed < run.stderr.index("is being accessed by other users")
    first_use = line_of("runner_pool_sample.py", 'connections["pooled"].cursor()')
    assert f"first used in {first_use} in PoolTests.test_bad_pool_left_open" in run.stderr
    assert findings(run.stderr) == {("PoolTests.test_bad_pool_left_open", "pool_left_open")}
