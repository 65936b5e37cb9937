"""``conntrace report`` on the logs of real runs, one file per process: each story's culprit is named.

The runs are the suite's own end-to-end scenarios, with every process writing
its events (debug included) to a file of its own, as a deployment's log
shipper would collect them: gunicorn ``--preload`` behind pgbouncer (an import-
time query inherited by every worker), ``os.fork`` and ``multiprocessing``
children sharing a session (FORK_POLICY "warn": one child's close kills it
for everyone), a thread that holds a transaction forever, and one process
whose driver connection is closed behind Django's back and whose next session
is ended with ``pg_terminate_backend()``. The gunicorn run's HTML page is
opened in headless Chromium.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.browser import ARTIFACTS, chromium
from tests.e2e import client
from tests.support import REPO, run_module
from tests.test_e2e_gunicorn import WORKERS, bouncer, serve_and_load  # noqa: F401 (bouncer: a fixture)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def report(log_dir: Path, tmp_path: Path) -> tuple[int, dict[str, Any]]:
    """Run ``python -m conntrace report --json`` on ``log_dir``; return its exit status and findings."""
    done = run_module("conntrace", "report", "--json", "--html", str(tmp_path / "report.html"), str(log_dir))
    assert done.stderr == ""
    return done.returncode, json.loads(done.stdout)


def by_pid(findings: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {process["pid"]: process for process in findings["processes"]}


def children_pids(findings: dict[str, Any], pid: int) -> set[int]:
    processes = findings["processes"]
    return {processes[child]["pid"] for child in by_pid(findings)[pid]["children"]}


def line_number(path: str, marker: str) -> int:
    """Return the number of the line of ``path`` (from the repository) that holds ``marker``."""
    lines = (REPO / path).read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if marker in line)


def scenario_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, *args: str
) -> tuple[Path, dict]:
    """Run ``tests/e2e/<module>.py``, one log file per process; return the log directory and its result."""
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    monkeypatch.setenv("CONNTRACE_E2E_LOG_DIR", str(log_dir))
    done = run_module(f"tests.e2e.{module}", *args)
    assert done.returncode == 0, done.stderr
    return log_dir, json.loads(done.stdout.splitlines()[-1])


def test_gunicorn_preload_names_the_import_time_line_inherited_by_every_worker(bouncer, tmp_path):  # noqa: F811
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    run = serve_and_load(bouncer, tmp_path, installed=True, policy="reset", requests=40, log_dir=log_dir)
    assert len(run.worker_pids) == WORKERS
    assert sorted(path.name for path in log_dir.iterdir()) == sorted(
        f"events-{pid}.jsonl" for pid in {run.master_pid, *run.worker_pids}
    )
    status, findings = report(log_dir, tmp_path)

    assert status == 1  # the fork reports are warnings
    top = findings["problems"][0]
    assert top["culprit"] == client.IMPORT_TIME_LINE
    assert top["kinds"] == {"connection_fork_inherited": WORKERS, "connection_open_at_fork": 1}
    assert top["inheritors"] == WORKERS
    assert {findings["processes"][n]["pid"] for n in top["processes"]} == {run.master_pid, *run.worker_pids}
    assert "preflight" in top["what_to_do"]
    # The fork tree is gunicorn's: the master and its workers, by their real pids.
    assert children_pids(findings, run.master_pid) == run.worker_pids
    assert by_pid(findings)[run.master_pid]["parent"] is None
    # The master's connection is one life, inherited by every worker; a worker that served a
    # request opened a session of its own (how gunicorn spreads 40 requests is its business).
    [inherited] = [life for life in findings["lives"] if life["id"] in top["lives"]]
    assert findings["processes"][inherited["opened_by"]]["pid"] == run.master_pid
    assert {findings["processes"][n]["pid"] for n in inherited["inherited_by"]} == run.worker_pids
    own = [life for life in findings["lives"] if life["opened_by"] != inherited["opened_by"]]
    assert own and {findings["processes"][life["opened_by"]]["pid"] for life in own} <= run.worker_pids
    echo = line_number("tests/e2e/shop/views.py", "with connection.cursor() as cursor:")
    assert {life["opened_in"] for life in own} == {f"tests/e2e/shop/views.py:{echo} in echo"}
    assert findings["input"]["corrupt_lines"] == 0

    screenshot_of_the_timeline(tmp_path / "report.html", top["culprit"])


def screenshot_of_the_timeline(page_path: Path, culprit: str) -> None:
    """Open the page in headless Chromium: no console error, the culprit seen unscrolled, a screenshot."""
    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.on("console", lambda message: message.type == "error" and errors.append(message.text))
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("request", lambda request: request.url.startswith("file:") or errors.append(request.url))
        page.goto(page_path.as_uri())
        first = page.locator(".culprit").first
        assert first.inner_text() == culprit
        box = first.bounding_box()
        assert box is not None and box["y"] + box["height"] <= 800  # above the fold
        timeline = page.locator("#timeline")
        assert timeline.locator("rect[fill='#c0392b']").count() >= 1  # the inherited life, in red
        timeline.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "report-gunicorn.png"), full_page=True)
        timeline.screenshot(path=str(ARTIFACTS / "report-gunicorn-timeline.png"))
    assert errors == []


def test_a_child_closing_the_shared_session_is_named_as_its_killer(tmp_path, monkeypatch):
    log_dir, result = scenario_logs(
        tmp_path, monkeypatch, "forkscenario", "default", "warn", str(tmp_path), "close"
    )
    children = {child["how"]: child["pid"] for child in result["children"]}
    status, findings = report(log_dir, tmp_path)
    assert status == 1
    [problem] = findings["problems"]
    opening = line_number("tests/e2e/forkscenario.py", "with wrapper.cursor() as cursor:")
    assert problem["culprit"] == f"tests/e2e/forkscenario.py:{opening} in _query"
    assert problem["kinds"]["connection_fork_inherited"] == 2
    assert problem["kinds"]["connection_lost:forked_sibling"] == 1
    assert problem["level"] == "error"  # FORK_POLICY "warn": the children share the session
    # The os.fork child closed it first (its close ended the session), then the parent's query failed.
    assert list(problem["killed_by"]) == [f"{findings['processes'][0]['host']} pid {children['os.fork']}"]
    parent = next(p for p in findings["processes"] if p["parent"] is None)
    assert children_pids(findings, parent["pid"]) == set(children.values())


def test_a_thread_holding_a_transaction_names_the_atomic_block_in_parent_and_child(tmp_path, monkeypatch):
    log_dir, result = scenario_logs(tmp_path, monkeypatch, "heldscenario", str(tmp_path))
    status, findings = report(log_dir, tmp_path)
    assert status == 1
    atomic = line_number("tests/e2e/heldscenario.py", "# held: atomic")
    [held] = [p for p in findings["problems"] if "connection_held_long" in p["kinds"]]
    assert held["culprit"] == f"tests/e2e/heldscenario.py:{atomic} in hold_forever"
    assert {findings["processes"][n]["pid"] for n in held["processes"]} == {
        result["parent"]["pid"],
        result["child"]["pid"],
    }
    assert children_pids(findings, result["parent"]["pid"]) == {result["child"]["pid"]}


def test_a_direct_close_and_a_killed_session_are_each_named(tmp_path, monkeypatch):
    log_dir, result = scenario_logs(tmp_path, monkeypatch, "lossscenario", str(tmp_path))
    assert result["lost"]
    status, findings = report(log_dir, tmp_path)
    assert status == 1
    problems = {p["culprit"]: p for p in findings["problems"]}
    path = "tests/e2e/lossscenario.py"
    closed = problems[f"{path}:{line_number(path, 'closed behind')} in main"]
    assert closed["kinds"] == {"connection_double_close": 1}
    assert "connection.close()" in closed["what_to_do"]
    killed = problems[f"{path}:{line_number(path, 'will be killed')} in main"]
    assert killed["kinds"]["connection_lost:terminated_by_admin"] == 1
    assert killed["details"]["connection_lost:terminated_by_admin"]["failed_in"] == (
        f"{path}:{line_number(path, 'fails, the session is gone')} in main"
    )
    assert "pg_terminate_backend" in killed["what_to_do"]
    [life] = [life for life in findings["lives"] if life["id"] in killed["lives"]]
    assert life["backend_pid"] == result["backend"]
    assert re.fullmatch(r".* pid \d+", findings["processes"][0]["label"])
