"""Where conntrace's time goes: ``python -m benchmarks.profiling [--json] [--pyinstrument]``.

Two views of workload W1 (connect + close on PostgreSQL), measured in place
because code right after a connect runs with cold caches:

* overhead per wrapped method: Django's original method and conntrace's
  wrapper around it are each timed, call by call, and the median of the
  per-call differences is conntrace's own cost, with no timer inside
  conntrace's code;
* optionally a pyinstrument profile of the loop, for what dominates inside.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from collections import defaultdict
from typing import Any

from benchmarks.run import ROOT

# The use hook (_cursor) is timed only where conntrace installed it (structlog context bound).
METHODS = ("connect", "close", "_cursor")


def _setup(json_events: bool) -> None:
    sys.path.insert(0, ROOT)
    from tests import pgserver

    pgserver.ensure()
    database = f"conntrace_prof_{os.getpid()}"
    pgserver.server().psql(f"CREATE DATABASE {database}")
    os.environ.update(
        CONNTRACE_BENCH_DB=database,
        CONNTRACE_BENCH_CONTENDER="conntrace-json" if json_events else "conntrace-quiet",
        DJANGO_SETTINGS_MODULE="benchmarks.settings",
    )
    from benchmarks import contenders

    contenders.prepare(os.environ["CONNTRACE_BENCH_CONTENDER"])
    import django

    django.setup()


def overhead_per_method(cycles: int, workload: str = "W1") -> dict[str, dict[str, float]]:
    """Return conntrace's in-place cost per call of each wrapped method.

    Per method: the median, p10 and p90 in µs, and the calls per connect/close cycle.
    """
    from django.db.backends.base.base import BaseDatabaseWrapper

    import conntrace
    from benchmarks import workloads
    from conntrace import instrument

    clock = time.perf_counter_ns
    inner: dict[str, list[int]] = defaultdict(list)  # stack of running inner timings, per method
    diffs: dict[str, list[int]] = defaultdict(list)

    def time_original(name: str, original: Any) -> Any:
        def timed(self: Any, *args: Any) -> Any:
            t0 = clock()
            try:
                return original(self, *args)
            finally:
                if inner[name]:  # called from our wrapper
                    inner[name][-1] += clock() - t0

        return timed

    def time_wrapper(name: str, wrapper: Any) -> Any:
        def timed(self: Any, *args: Any) -> Any:
            inner[name].append(0)
            t0 = clock()
            try:
                return wrapper(self, *args)
            finally:
                total = clock() - t0
                diffs[name].append(total - inner[name].pop())

        setattr(timed, instrument.MARK, getattr(wrapper, instrument.MARK))
        return timed

    conntrace.uninstall()
    saved = {name: BaseDatabaseWrapper.__dict__[name] for name in METHODS}
    try:
        for name in METHODS:
            setattr(BaseDatabaseWrapper, name, time_original(name, saved[name]))
        conntrace.install()
        for name in METHODS:
            current = BaseDatabaseWrapper.__dict__[name]
            if getattr(current, instrument.MARK, None) is not None:
                setattr(BaseDatabaseWrapper, name, time_wrapper(name, current))
        run = workloads.RUNNERS[workload]
        for round_cycles in (cycles // 10, cycles):
            diffs.clear()
            run(round_cycles)
    finally:
        for name in METHODS:
            setattr(BaseDatabaseWrapper, name, saved[name])
        conntrace.install()
    out = {}
    for name, values in diffs.items():
        values.sort()
        out[name] = {
            "median_us": statistics.median(values) / 1000,
            "p10_us": values[len(values) // 10] / 1000,
            "p90_us": values[len(values) * 9 // 10] / 1000,
            "calls_per_cycle": len(values) / cycles,
        }
    return out


def pyinstrument_profile(cycles: int) -> str:
    """Return pyinstrument's text profile of W1, or a note that it is not installed."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        return "pyinstrument is not installed (pip install -e '.[bench]')"
    from benchmarks import workloads

    profiler = Profiler(interval=0.0001)
    profiler.start()
    workloads.run_w1(cycles)
    profiler.stop()
    return profiler.output_text(unicode=True, color=False, show_all=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.profiling", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--cycles", type=int, default=2000, help="operations measured")
    parser.add_argument("--workload", default="W1", help="W1 (connect/close) or W3a (requests)")
    parser.add_argument(
        "--json", action="store_true", help="render events as JSON (default: dropped by level)"
    )
    parser.add_argument("--pyinstrument", action="store_true", help="also print a pyinstrument profile")
    args = parser.parse_args(argv)
    _setup(args.json)
    logging.getLogger().setLevel(logging.WARNING)
    from benchmarks import workloads

    workloads.setup_data()
    result = overhead_per_method(args.cycles, args.workload)
    total = sum(r["median_us"] * r["calls_per_cycle"] for r in result.values())
    events_mode = "json" if args.json else "quiet"
    print(
        f"conntrace's own cost per wrapped call, in place, {args.workload} x {args.cycles} ({events_mode}):"
    )
    for name, r in result.items():
        print(
            f"  {name:18s} median {r['median_us']:6.2f} µs  [p10 {r['p10_us']:6.2f}, p90 {r['p90_us']:6.2f}]"
            f"  x {r['calls_per_cycle']:.0f} per operation"
        )
    print(f"  per operation: {total:.1f} µs (sum of medians)")
    if args.pyinstrument:
        print(pyinstrument_profile(args.cycles))
    workloads.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
