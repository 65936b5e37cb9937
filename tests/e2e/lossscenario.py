"""One process that closes a driver connection behind Django's back, then has its session killed.

Run by ``tests/test_report_e2e.py`` in a fresh interpreter with one log file per
process (``CONNTRACE_E2E_LOG_DIR``, set up as ``forkscenario`` does):

    python -m tests.e2e.lossscenario OUT_DIR

First the driver connection is closed directly and Django closes it again
(``connection_double_close``, naming the direct close); then a new session is
ended with ``pg_terminate_backend()`` from another connection, and the next
query fails (``connection_lost``, ``terminated_by_admin``). One JSON line on
stdout: the pid and the killed backend.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from tests.e2e import forkscenario


def main(out_dir: str) -> dict[str, Any]:
    forkscenario.configure("default", "reset", out_dir)
    from django.db import OperationalError, connection, connections

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    connection.connection.close()  # report: closed behind Django's back
    connection.close()

    with connection.cursor() as cursor:  # report: the session that will be killed
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    with connections["other"].cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [backend])
    lost = False
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")  # report: fails, the session is gone
    except OperationalError:
        lost = True
    connections.close_all()
    return {"pid": os.getpid(), "backend": backend, "lost": lost}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])), flush=True)
