"""A process with a thread blocked holding a connection is reported, then exits without hanging.

``tests/e2e/heldscenario.py`` runs in a fresh interpreter: a daemon thread
blocks forever inside ``atomic()``; the watchdog reports it while it blocks,
in the parent and in an ``os.fork()`` child (whose watchdog is started again),
and both processes leave through a normal interpreter exit with the watchdog
thread running. A hang would be the subprocess's timeout.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import named
from tests.support import run_module

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "tests" / "e2e" / "heldscenario.py"


def marked_line(marker: str, function: str) -> str:
    lines = SCENARIO.read_text().splitlines()
    [number] = [n for n, text in enumerate(lines, 1) if text.endswith(f"# held: {marker}")]
    return f"tests/e2e/heldscenario.py:{number} in {function}"


def test_a_blocked_holder_is_reported_and_parent_and_forked_child_exit_cleanly(tmp_path):
    out = run_module("tests.e2e.heldscenario", str(tmp_path), timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    parent, child = result["parent"], result["child"]
    assert parent["pid"] != child["pid"]
    for process in (parent, child):
        assert {k: process[k] for k in ("reported", "blocked", "watchdog")} == {
            "reported": True,
            "blocked": True,
            "watchdog": True,
        }
    assert result["child_exit"] == 0
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    held = named(events, "connection_held_long")
    assert sorted(e["pid"] for e in held) == sorted([parent["pid"], child["pid"]])
    for event in held:
        assert event["transaction_started_in"] == marked_line("atomic", "hold_forever")
        assert event["thread"] == f"holder-{event['pid']}"
        assert event["thread_alive"] is True
    assert named(events, "conntrace_internal_error") == []
    assert "Traceback" not in out.stderr, out.stderr
