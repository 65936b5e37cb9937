"""Celery's prefork pool, end to end: a Django project's worker forks with a connection open.

The project (``tests/e2e/celeryproj``) is set up as Celery's documentation sets
one up: the app reads ``CELERY_*`` from Django's settings and autodiscovers the
tasks, so Celery's Django fixup is installed. Its worker's parent reads the
database at start-up after the fixup closed everything, so every pool process
(4, replaced every 10 tasks) is forked holding the parent's connection. The test
sends 200 tasks with ``.delay()``; each writes a value of its own and reads it
back in one transaction. The fixup discards what a pool process inherited
(``worker_process_init``), so conntrace reports it as handled, at info level,
whatever the policy. A raw ``multiprocessing`` fork of the same project, with no
fixup, is still a warning.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tests import pgserver
from tests.conftest import named
from tests.e2e import celerybroker, client
from tests.e2e import db as e2e_db
from tests.support import source_line, stop

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parent.parent
DATABASE = "conntrace_e2e_celery"
TASK = "tests.e2e.celeryproj.tasks.write_and_read"
TASKS = 200
POOL_PROCESSES = 4
TASKS_PER_CHILD = 10
RESULTS_DEADLINE_S = 45
STOP_TIMEOUT_S = 30
HANDLED_BY_CELERY = "celery_django_fixup"
LOUD_LEVELS = {"warning", "error", "critical"}


WORKER_START_LINE = source_line("tests/e2e/celeryproj/tasks.py", "Setting.objects.get", "warm_site_name")


@pytest.fixture(scope="module")
def database() -> str:
    """Give the project's database, with the table the task writes to."""
    e2e_db.create(DATABASE)
    pgserver.server().psql(
        "CREATE TABLE celeryproj_answer (id serial PRIMARY KEY, token varchar(100) NOT NULL);"
        f"ALTER TABLE celeryproj_answer OWNER TO {pgserver.APP_USER};",
        database=DATABASE,
    )
    return DATABASE


def project_env(run_dir: Path, policy: str, lazy_log: bool = False) -> dict[str, str]:
    """Return the environment that runs the Celery project with ``policy``, its events in ``run_dir``."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.e2e.celeryproj.settings",
        PYTHONPATH=str(ROOT),
        CONNTRACE_E2E_DBNAME=DATABASE,
        CONNTRACE_E2E_FORK_POLICY=policy,
        CONNTRACE_E2E_CELERY_DIR=str(run_dir / "celery"),
    )
    if lazy_log:
        env["CONNTRACE_E2E_LOG_DIR"] = str(run_dir)
    else:
        env["CONNTRACE_E2E_LOG"] = str(run_dir / "events.jsonl")
    return env


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    """Return the events of every process of a run: one file for all, or one per process."""
    return [event for path in sorted(run_dir.glob("*.jsonl")) for event in client.read_events(path)]


def loud(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the events at warning level or above."""
    return [event for event in events if event["level"] in LOUD_LEVELS]


@dataclass
class WorkerRun:
    """One worker under load: the tasks' answers, the worker's pid and log, conntrace's events."""

    run_dir: Path
    answers: list[dict[str, Any]]
    worker_pid: int
    worker_log: str
    events: list[dict[str, Any]]

    @property
    def outcomes(self) -> Counter[str]:
        return Counter(answer["answer"] for answer in self.answers)

    @property
    def task_pids(self) -> set[int]:
        return {answer["pid"] for answer in self.answers if "pid" in answer}

    def summary(self) -> str:
        levels = Counter(f"{event['event']}/{event['level']}" for event in self.events)
        return (
            f"{self.outcomes['ok']}/{TASKS} tasks ok {dict(self.outcomes)}, "
            f"{len(self.task_pids)} pool processes ran tasks, events {dict(levels)}"
        )


def collect(result: Any, deadline: float) -> dict[str, Any]:
    """Return a task's answer, or ``not_collected`` / ``error_<type>`` as its ``answer``."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return {"answer": "not_collected"}
    try:
        return result.get(timeout=remaining, interval=0.05)
    except Exception as exc:
        return {"answer": f"error_{type(exc).__name__}"}


def run_worker(tmp_path: Path, policy: str, lazy_log: bool = False) -> WorkerRun:
    """Start a prefork worker, send it the tasks from this process, collect the answers, stop it."""
    run_dir = tmp_path / f"{policy}{'-lazy-log' if lazy_log else ''}"
    run_dir.mkdir()
    command = [
        sys.executable, "-m", "celery", "-A", "tests.e2e.celeryproj", "worker",
        "--pool", "prefork", "-c", str(POOL_PROCESSES), "--max-tasks-per-child", str(TASKS_PER_CHILD),
        "--loglevel", "INFO",
    ]  # fmt: skip
    producer = Celery("producer", fixups=[], set_as_current=False)
    producer.conf.update(celerybroker.config(run_dir / "celery"))
    log_path = run_dir / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            command, cwd=ROOT, env=project_env(run_dir, policy, lazy_log), stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            results = [
                producer.signature(TASK, args=(f"{policy}-{i}-{uuid.uuid4().hex[:12]}",)).delay()
                for i in range(TASKS)
            ]
            deadline = time.monotonic() + RESULTS_DEADLINE_S
            answers = [collect(result, deadline) for result in results]
        finally:
            producer.close()
            code = stop(worker, STOP_TIMEOUT_S)
            if code == -signal.SIGKILL:
                os.killpg(worker.pid, signal.SIGKILL)  # its pool's processes too
            assert code == 0, f"the worker exited with {code} (-9: it did not stop within {STOP_TIMEOUT_S} s)"
    return WorkerRun(run_dir, answers, worker.pid, log_path.read_text(errors="replace"), read_events(run_dir))


@pytest.mark.parametrize("policy", ["reset", "warn", "raise"])
def test_every_task_is_right_and_the_inherited_connection_is_reported_as_handled(database, tmp_path, policy):
    run = run_worker(tmp_path, policy)
    print(f"\nFORK_POLICY {policy}: {run.summary()}")
    assert run.outcomes == Counter(ok=TASKS)
    assert len(run.task_pids) >= TASKS // TASKS_PER_CHILD  # pool processes were replaced, and forked again
    assert loud(run.events) == []

    at_fork = named(run.events, "connection_open_at_fork")
    inherited = named(run.events, "connection_fork_inherited")
    # The parent reports the line once, however many times it forks; every pool process that ran a task
    # reports what it inherited.
    assert [event["pid"] for event in at_fork] == [run.worker_pid]
    assert run.task_pids <= {event["pid"] for event in inherited}
    for event in at_fork + inherited:
        assert event["level"] == "info"
        assert event["handled_by"] == HANDLED_BY_CELERY
        assert event["opened_in"] == WORKER_START_LINE
        assert event["opened_by_pid"] == run.worker_pid
    for event in inherited:
        assert event["policy"] == policy
        assert event["parent_pid"] == run.worker_pid
        assert event["fork_noticed"] == "at_fork_hook"
    # Its later forks are counted, and said once when the worker exits.
    (repeated,) = named(run.events, "conntrace_reports_repeated")
    assert (repeated["pid"], repeated["level"]) == (run.worker_pid, "info")
    (repeats,) = repeated["repeats"]
    forks = repeats.pop("count") + 1
    assert repeats == {"event": "connection_open_at_fork", "alias": "default", "opened_in": WORKER_START_LINE}
    assert len(run.task_pids) <= forks
    assert len(inherited) <= forks
    assert "Traceback" not in run.worker_log
    assert pgserver.APP_PASSWORD not in run.worker_log + json.dumps(run.events)


def test_a_log_file_each_pool_process_opens_at_its_first_event_leaves_every_task_right(database, tmp_path):
    """The fixup os.close()s the inherited socket: no report may open a file on that free descriptor."""
    run = run_worker(tmp_path, "warn", lazy_log=True)
    print(f"\nFORK_POLICY warn, a log file opened lazily per process: {run.summary()}")
    assert run.outcomes == Counter(ok=TASKS)
    assert loud(run.events) == []
    # Every pool process that ran a task reported what it inherited, in a file of its own.
    assert run.task_pids <= {event["pid"] for event in named(run.events, "connection_fork_inherited")}
    files = {int(path.stem.removeprefix("events-")): path for path in run.run_dir.glob("*.jsonl")}
    assert run.task_pids | {run.worker_pid} <= set(files)
    for pid, path in files.items():
        assert {event["pid"] for event in client.read_events(path) if "conn_id" in event} <= {pid}


def test_a_raw_multiprocessing_fork_of_the_project_still_warns(database, tmp_path):
    """Without Celery's worker fixup nobody else handles the inherited connection: it is a warning."""
    run_dir = tmp_path / "rawfork"
    run_dir.mkdir()
    token = f"raw-{uuid.uuid4().hex[:12]}"
    done = subprocess.run(
        [sys.executable, "-m", "tests.e2e.celeryproj.rawfork", token],
        cwd=ROOT, env=project_env(run_dir, "reset"), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    events = read_events(run_dir)
    print(f"\nraw multiprocessing fork, reset: {result}, events {[e['event'] for e in events]}")
    assert result["child"]["answer"] == "ok"
    assert result["parent_after"] == e2e_db.SITE_NAME

    at_fork = named(events, "connection_open_at_fork")
    inherited = named(events, "connection_fork_inherited")
    assert [(event["pid"], event["level"]) for event in at_fork] == [(result["pid"], "warning")]
    assert [(event["pid"], event["level"]) for event in inherited] == [(result["child"]["pid"], "warning")]
    for event in at_fork + inherited:
        assert event["opened_in"] == client.IMPORT_TIME_LINE
        assert event["opened_by_pid"] == result["pid"]
        assert event.get("handled_by") is None
    assert inherited[0]["policy"] == "reset"
    assert inherited[0]["fork_noticed"] == "at_fork_hook"
    assert "Traceback" not in done.stderr
