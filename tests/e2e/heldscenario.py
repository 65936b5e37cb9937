"""A process whose thread holds a transaction and blocks forever, then forks and exits.

Run by ``tests/test_held_exit.py`` in a fresh interpreter, so that the exit is a
real interpreter exit (threading's shutdown, atexit handlers) with conntrace's
watchdog thread running and a daemon thread still blocked inside ``atomic()``:

    python -m tests.e2e.heldscenario OUT_DIR

The parent's holder is reported while blocked; then an ``os.fork()`` child
(``FORK_POLICY`` reset) takes its own connection in a blocked holder, is
reported too (its watchdog started again at its first connect), and leaves
through a normal interpreter exit; then the parent does. Events as JSON lines
in ``OUT_DIR/events.jsonl``; one JSON line on stdout.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

from tests.e2e import forkscenario

WAIT_S = 15


def _configure(out_dir: str) -> None:
    """Set up as ``forkscenario`` does (events as JSON lines in ``OUT_DIR``), with a fast watchdog."""
    import tests.settings as test_settings

    test_settings.CONNTRACE.update(WATCHDOG_INTERVAL_S=0.1, IDLE_IN_TRANSACTION_WARN_S=0.5)
    forkscenario.configure("default", "reset", out_dir)


def hold_forever() -> None:
    """Take a connection inside atomic() and block: nothing will ever release it."""
    from django.db import connection, transaction

    with transaction.atomic():  # held: atomic
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        threading.Event().wait()


def reported(out_dir: str, pid: int) -> bool:
    """Wait until ``connection_held_long`` from process ``pid`` is in the event log."""
    deadline = time.monotonic() + WAIT_S
    per_process = os.environ.get("CONNTRACE_E2E_LOG_DIR")  # one file per process (forkscenario.configure)
    path = (
        os.path.join(per_process, f"events-{pid}.jsonl")
        if per_process
        else os.path.join(out_dir, "events.jsonl")
    )
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path) as log:
                for text in log:
                    event = json.loads(text)
                    if event["event"] == "connection_held_long" and event["pid"] == pid:
                        return True
        time.sleep(0.05)
    return False


def hold_and_wait(out_dir: str) -> dict[str, Any]:
    from conntrace import watchdog

    holder = threading.Thread(target=hold_forever, name=f"holder-{os.getpid()}", daemon=True)
    holder.start()
    seen = reported(out_dir, os.getpid())
    return {
        "pid": os.getpid(),
        "reported": seen,
        "blocked": holder.is_alive(),
        "watchdog": watchdog.running(),
    }


def main(out_dir: str) -> dict[str, Any]:
    _configure(out_dir)
    parent = hold_and_wait(out_dir)
    result_path = os.path.join(out_dir, "child.json")
    child_pid = os.fork()
    if child_pid == 0:
        child = hold_and_wait(out_dir)
        with open(result_path, "w") as out:
            json.dump(child, out)
        sys.exit(0)  # a normal interpreter exit, the blocked holder and the watchdog still running
    _, status = os.waitpid(child_pid, 0)
    with open(result_path) as result:
        child = json.load(result)
    return {"parent": parent, "child": child, "child_exit": os.waitstatus_to_exitcode(status)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])), flush=True)
