"""One long-lived benchmark process: ``python -m benchmarks.worker CONTENDER``.

It configures Django with one contender and then answers commands, one JSON
object per line on stdin, with one JSON object per line on the original
stdout (everything else the process prints goes to stderr):

* ``{"cmd": "sample", "workload": "W1", "n": 50, "mode": "quiet"}``: time ``n``
  operations; ``mode`` (only for the ``inprocess`` contender) is ``baseline``,
  ``quiet`` or ``json`` and switches with ``conntrace.uninstall()`` /
  ``install()`` and the structlog configuration, untimed;
* ``{"cmd": "mem", "cycles": 100000, "warmup": 5000}``: RSS growth over
  SQLite connect/close cycles after a warm-up;
* ``{"cmd": "quit"}``.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
import traceback
from typing import Any, TextIO

MODES = ("baseline", "quiet", "json")


class Worker:
    """Hold the state of one benchmark process between commands."""

    def __init__(self, contender: str) -> None:
        self.contender = contender
        self.workload: str | None = None
        self.mode: str | None = None

    def setup(self) -> dict[str, Any]:
        os.environ["CONNTRACE_BENCH_CONTENDER"] = self.contender
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
        from benchmarks import contenders

        contenders.prepare(self.contender)
        import django

        django.setup()
        from benchmarks import workloads

        workloads.setup_data()
        return {"ready": True, "pid": os.getpid(), "instrumented": contenders.instrumented(self.contender)}

    def switch(self, mode: str | None) -> bool:
        """Put the in-process contender in ``mode`` before a sample; return True if it did.

        Every mode gets the same disturbance before its sample, whether it changes or
        not: Django's wrapper class is modified twice (uninstall and install, in the
        order that ends in ``mode``) and structlog is configured once. Modifying a
        class makes the interpreter re-specialise every attribute lookup on its
        instances; a mode that skipped it would look faster than it is.
        """
        if mode is None:
            return False
        import conntrace
        from benchmarks import contenders

        contenders.configure_structlog(logging.DEBUG if mode == "json" else logging.INFO)
        if mode == "baseline":
            conntrace.install()
            conntrace.uninstall()
        else:
            conntrace.uninstall()
            conntrace.install()
        self.mode = mode
        return True

    def sample(self, workload: str, n: int, mode: str | None = None, warmup: int = 0) -> dict[str, Any]:
        from benchmarks import contenders, workloads

        changed = self.switch(mode)
        if changed or workload != self.workload:
            # A connection kept open must be one the current mode opened.
            workloads.reset_connection()
            self.workload = workload
            warmup = max(warmup, 1)
        if warmup:
            workloads.RUNNERS[workload](warmup)
        before, events_before = contenders.activity(self.contender), contenders.events_rendered()
        cpu_ns, wall_ns = workloads.timed(workload, n)
        after, events_after = contenders.activity(self.contender), contenders.events_rendered()
        return {
            "cpu_ns": cpu_ns,
            "wall_ns": wall_ns,
            "activity": after - before,
            "events": events_after - events_before,
            "instrumented": contenders.instrumented(self.contender),
        }

    def count(self, workload: str, n: int) -> dict[str, Any]:
        """Count the calls into conntrace's code while ``workload`` runs ``n`` operations (quiet mode).

        Deterministic, unlike a timing: a per-query path that never enters conntrace costs
        nothing whatever the timing's resolution on a noisy machine.
        """
        import conntrace
        from benchmarks import workloads

        self.switch("quiet")
        workloads.reset_connection()
        self.workload = workload
        workloads.RUNNERS[workload](1)  # opens the connection: that call is not per operation
        package = os.path.join(os.path.dirname(os.path.abspath(conntrace.__file__)), "")
        calls: dict[str, int] = {}

        def hook(frame: Any, event: str, arg: Any) -> None:
            if event == "call" and frame.f_code.co_filename.startswith(package):
                name = frame.f_code.co_qualname
                calls[name] = calls.get(name, 0) + 1

        sys.setprofile(hook)
        try:
            workloads.RUNNERS[workload](n)
        finally:
            sys.setprofile(None)
        return {"ops": n, "calls_per_op": sum(calls.values()) / n, "functions": calls}

    def mem(self, cycles: int, warmup: int) -> dict[str, Any]:
        from django.db import connections

        from benchmarks import workloads

        workloads.reset_connection()
        lite = connections["lite"]

        def cycle(count: int) -> None:
            for _ in range(count):
                lite.ensure_connection()
                lite.close()

        cycle(warmup)
        gc.collect()
        before = rss_bytes()
        cycle(cycles)
        gc.collect()
        after = rss_bytes()
        result: dict[str, Any] = {
            "cycles": cycles,
            "warmup": warmup,
            "rss_before": before,
            "rss_after": after,
        }
        if "conntrace" in sys.modules:
            from conntrace import records

            result["live_records"] = len(records.registry.live)
            result["history_records"] = len(records.registry.history)
        return result


def rss_bytes() -> int:
    """Return this process's resident set size."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def serve(worker: Worker, commands: TextIO, answers: TextIO) -> None:
    """Answer commands until ``quit`` or end of input."""

    def answer(payload: dict[str, Any]) -> None:
        answers.write(json.dumps(payload) + "\n")
        answers.flush()

    try:
        answer(worker.setup())
    except Exception:
        answer({"error": traceback.format_exc()})
        return
    for line in commands:
        command = json.loads(line)
        kind = command.pop("cmd")
        if kind == "quit":
            break
        try:
            if kind == "sample":
                answer(worker.sample(**command))
            elif kind == "mem":
                answer(worker.mem(**command))
            elif kind == "count":
                answer(worker.count(**command))
            else:
                answer({"error": f"unknown command {kind!r}"})
        except Exception:
            answer({"error": traceback.format_exc()})


def main() -> None:
    # The protocol keeps the real stdout; anything printed (a library, a default
    # structlog configuration) goes to stderr instead of corrupting it.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    serve(Worker(sys.argv[1]), sys.stdin, answers)
    from benchmarks import workloads

    workloads.cleanup()


if __name__ == "__main__":
    main()
