"""A Django process whose threads hold connections while its main thread keeps logging.

Run by ``tests/test_live_signal.py`` in a fresh interpreter, with
``CONNTRACE["LIVE_SIGNAL"] = "SIGUSR2"``:

    python -m tests.e2e.livescenario OUT_DIR

Two threads each open a connection and wait. The main thread prints one JSON
line (its pid and the holders' backend pids), then logs through the same
structlog file logger as conntrace, in a loop, until ``OUT_DIR/stop`` appears:
a signal then most often interrupts it inside the logger's lock, which an event
emitted from the signal handler itself would wait for forever. Events as JSON
lines in ``OUT_DIR/events.jsonl``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

from tests.e2e import forkscenario

HOLDERS = ("holder-1", "holder-2")
DEADLINE_S = 30


def hold(opened: list[int], release: threading.Event) -> None:
    from django.db import connection

    with connection.cursor() as cursor:  # the holders' opening line
        cursor.execute("SELECT 1")
    opened.append(connection.connection.info.backend_pid)
    release.wait(DEADLINE_S)
    connection.close()


def main(out_dir: str) -> None:
    import tests.settings as test_settings

    test_settings.CONNTRACE["LIVE_SIGNAL"] = "SIGUSR2"
    forkscenario.configure("default", "reset", out_dir)
    import structlog

    release = threading.Event()
    opened: list[int] = []
    holders = [threading.Thread(target=hold, args=(opened, release), name=name) for name in HOLDERS]
    for holder in holders:
        holder.start()
    while len(opened) < len(HOLDERS):
        time.sleep(0.01)
    print(json.dumps({"pid": os.getpid(), "backend_pids": sorted(opened)}), flush=True)
    log = structlog.get_logger("app")
    stop = os.path.join(out_dir, "stop")
    deadline = time.monotonic() + DEADLINE_S
    ticks = 0
    while not os.path.exists(stop) and time.monotonic() < deadline:
        for _ in range(200):
            log.info("tick", n=ticks)
            ticks += 1
    release.set()
    for holder in holders:
        holder.join()
    print(json.dumps({"ticks": ticks, "stopped": os.path.exists(stop)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
