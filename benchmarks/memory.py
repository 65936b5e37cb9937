"""Measure how much a process grows over many connect/close cycles with conntrace installed.

Usage (from the repository root)::

    python benchmarks/memory.py                       # 100,000 cycles, psycopg pool on PostgreSQL
    python benchmarks/memory.py --backend sqlite      # a new SQLite connection every cycle
    python benchmarks/memory.py --backend postgresql  # a new PostgreSQL session every cycle (slow)
    python benchmarks/memory.py --cycles 20000 --json
    python benchmarks/memory.py --without-conntrace   # the baseline: Django alone

Each cycle builds a fresh ``DatabaseWrapper`` (as Django does for every thread),
connects, runs ``SELECT 1``, closes and drops the wrapper, with a structlog
pipeline that keeps every event level (so every event is built) and then drops
it. After a warm-up that fills the bounded history (``MAX_RECORDS``) and every
cache, the script collects garbage, reads the resident set size, runs the
cycles, collects again and prints the growth. PostgreSQL is the test suite's
throwaway server (``tests/pgserver.py``), reused when the ``CONNTRACE_TEST_PG*``
variables name one. The default backend takes a real connection out of a psycopg
pool every cycle: a new server session per cycle costs ~4 ms of connect and
SCRAM authentication, so 100,000 of them take minutes.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1024 * 1024


def rss_bytes() -> int:
    """Return this process's resident set size."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def configure(backend: str, with_conntrace: bool = True) -> dict[str, Any]:
    """Configure Django for ``backend`` and return the settings of the database under test."""
    import django
    from django.conf import settings

    from tests import pgserver

    if backend == "sqlite":
        tmp = tempfile.mkdtemp(prefix="conntrace-memory-")
        atexit.register(shutil.rmtree, tmp, True)
        db = {"ENGINE": "django.db.backends.sqlite3", "NAME": os.path.join(tmp, "bench.sqlite3")}
    else:
        host, port = pgserver.ensure()
        db = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": "conntrace",
            "USER": pgserver.APP_USER,
            "PASSWORD": pgserver.APP_PASSWORD,
            "HOST": host,
            "PORT": str(port),
        }
        if backend == "pool":
            db["OPTIONS"] = {"pool": {"min_size": 1, "max_size": 2}}
    settings.configure(
        DATABASES={"default": db},
        INSTALLED_APPS=["conntrace"] if with_conntrace else [],
        USE_TZ=True,
        LOGGING_CONFIG=None,
    )
    django.setup()
    from django.db import connections

    return connections["default"].settings_dict


class CountAndDrop:
    """structlog processor: count the event, then drop it (the application's pipeline, minus output)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, logger: Any, method: str, event_dict: dict[str, Any]) -> Any:
        import structlog

        self.count += 1
        raise structlog.DropEvent


def cycle(settings_dict: dict[str, Any], n: int) -> None:
    """Open, use, close and drop a new wrapper ``n`` times."""
    from django.db import connections

    backend = connections["default"].__class__
    for _ in range(n):
        wrapper = backend(settings_dict, alias="default")
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT 1")
        wrapper.close()
        del wrapper


def wrappers_alive() -> int:
    from django.db.backends.base.base import BaseDatabaseWrapper

    return sum(1 for obj in gc.get_objects() if isinstance(obj, BaseDatabaseWrapper))


def measure(backend: str, cycles: int, warmup: int, with_conntrace: bool = True) -> dict[str, Any]:
    """Run the warm-up and the measured cycles; return the figures."""
    import structlog

    import conntrace
    from conntrace import conf

    settings_dict = configure(backend, with_conntrace)
    counter = CountAndDrop()
    structlog.configure(
        processors=[counter], wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG)
    )
    assert conntrace.is_installed() == with_conntrace
    cycle(settings_dict, warmup)
    # Count wrappers first: gc.get_objects() builds a big list, and its pages would count as growth.
    gc.collect()
    wrappers_before = wrappers_alive()
    gc.collect()
    before, events_before = rss_bytes(), counter.count
    started = time.perf_counter()
    cycle(settings_dict, cycles)
    took = time.perf_counter() - started
    gc.collect()
    after, wrappers_after = rss_bytes(), wrappers_alive()
    if backend == "pool":
        from django.db import connections

        connections["default"].close_pool()
    return {
        "backend": backend,
        "conntrace": with_conntrace,
        "cycles": cycles,
        "warmup": warmup,
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "growth_bytes": after - before,
        "events": counter.count - events_before,
        "live_records": len(conntrace.live()),
        "history_records": len(conntrace.history()),
        "max_records": conf.get()["MAX_RECORDS"],
        "wrappers_alive_before": wrappers_before,
        "wrappers_alive_after": wrappers_after,
        "seconds": round(took, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("pool", "postgresql", "sqlite"), default="pool")
    parser.add_argument("--cycles", type=int, default=100_000)
    parser.add_argument("--warmup", type=int, default=5_000)
    parser.add_argument("--without-conntrace", action="store_true", help="the baseline: Django alone")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)  # conntrace and tests.pgserver from this checkout
    result = measure(args.backend, args.cycles, args.warmup, not args.without_conntrace)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['cycles']:,} connect/close cycles ({result['backend']}, "
            f"{'with' if result['conntrace'] else 'without'} conntrace) after {result['warmup']:,} warm-up: "
            f"RSS {result['rss_before_bytes'] / MIB:.1f} -> {result['rss_after_bytes'] / MIB:.1f} MiB, "
            f"growth {result['growth_bytes'] / 1024:+.0f} KiB in {result['seconds']} s "
            f"({result['events']:,} events built, {result['history_records']} records kept, "
            f"{result['live_records']} live, DatabaseWrapper objects alive "
            f"{result['wrappers_alive_before']} -> {result['wrappers_alive_after']})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
