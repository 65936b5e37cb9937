"""``python -m benchmarks.log_report``: how fast ``conntrace report`` reads, and how much memory it takes.

Real events first: ``tests/e2e/forkscenario.py`` runs against the test
PostgreSQL (a connection opened, forked with FORK_POLICY "warn", closed by a
child, lost and closed twice in the parent), one JSON-lines file per process,
debug included. Those events are then replayed into one file of ``--lines``
lines (1,000,000 by default): ``--processes`` processes, each opening and
closing connections as the real ones did (``connection_opened`` then
``connection_closed``), one life in ``--anomaly-every`` replaying the whole
fork story, and one line in four from something else (an access log, another
logger's JSON). Then, in a fresh interpreter, the summary is read from that
file: wall and CPU time, lines per CPU second, and the peak resident set size
(``ru_maxrss``) against the same interpreter before reading.

    python -m benchmarks.log_report [--lines N] [--processes N] [--keep DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OTHER_LINES = (
    '127.0.0.1 - - [28/Nov/2026:10:21:45 +0000] "GET /echo/abc/ HTTP/1.1" 200 42 "-" "bench"',
    '{"event": "request_finished", "request_id": "3f1c", "code": 200, "logger": "django_structlog", '
    '"level": "info", "timestamp": "2026-11-28T10:21:45.120000Z"}',
    "[2026-11-28 10:21:45 +0000] [4242] [INFO] Booting worker with pid: 4243",
)

MEASURE = r"""
import json, resource, sys, time
from conntrace.report import cli
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
wall, cpu = time.perf_counter(), time.process_time()
found = cli.read([sys.argv[1]])
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"lines": found["input"]["lines"], "events": found["input"]["events"],
                  "lives": found["totals"]["lives"], "processes": found["totals"]["processes"],
                  "problems": len(found["problems"]), "wall_s": wall, "cpu_s": cpu,
                  "maxrss_before_kib": before, "maxrss_after_kib": after}))
"""


def real_events(directory: Path) -> list[dict[str, Any]]:
    """Run the fork scenario with one log file per process; return its events in seq order per file."""
    env = {**os.environ, "CONNTRACE_E2E_LOG_DIR": str(directory)}
    out = directory / "scenario"
    out.mkdir()
    subprocess.run(
        [sys.executable, "-m", "tests.e2e.forkscenario", "default", "warn", str(out), "close"],
        cwd=ROOT, env=env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    found = []
    for path in sorted(directory.glob("events-*.jsonl")):
        found += [json.loads(line) for line in path.read_text().splitlines()]
    return found


def replay(events: list[dict[str, Any]], lines: int, processes: int, anomaly_every: int) -> Iterator[str]:
    """Yield ``lines`` log lines made of ``events``: normal lives everywhere, now and then the fork story."""
    opened = next(e for e in events if e["event"] == "connection_opened")
    closed = next(e for e in events if e["event"] == "connection_closed")
    story = [e for e in events if e["event"] not in ("connection_opened", "connection_closed")]
    seq = dict.fromkeys(range(processes), 0)
    written = 0
    life = 0
    clock = 1_795_000_000.0
    while written < lines:
        life += 1
        index = life % processes
        pid = 20_000 + index
        batch = [opened, closed] if life % anomaly_every else [opened, *story, closed]
        for template in batch:
            if written >= lines:
                return
            seq[index] += 1
            clock += 0.0005
            event = {**template, "pid": pid, "conn_id": life, "seq": seq[index], "host": "bench-1"}
            if "opened_by_pid" in event:
                event["opened_by_pid"] = pid
            event["timestamp"] = datetime.fromtimestamp(clock, UTC).isoformat().replace("+00:00", "Z")
            yield json.dumps(event)
            written += 1
            if written % 3 == 0 and written < lines:
                yield OTHER_LINES[written % len(OTHER_LINES)]
                written += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.log_report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--processes", type=int, default=200)
    parser.add_argument("--anomaly-every", type=int, default=100)
    parser.add_argument("--keep", metavar="DIR", help="write the files here and keep them")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(args.keep or scratch)
        directory.mkdir(parents=True, exist_ok=True)
        events = real_events(Path(tempfile.mkdtemp(dir=directory)))
        log = directory / "replayed.jsonl"
        with open(log, "w") as out:
            for line in replay(events, args.lines, args.processes, args.anomaly_every):
                out.write(line + "\n")
        done = subprocess.run(
            [sys.executable, "-c", MEASURE, str(log)], cwd=ROOT, check=True, capture_output=True, text=True
        )
        result = json.loads(done.stdout)
    result["size_mb"] = round(log.stat().st_size / 1e6, 1) if args.keep else None
    result["lines_per_cpu_s"] = round(result["lines"] / result["cpu_s"])
    result["peak_growth_mib"] = round((result["maxrss_after_kib"] - result["maxrss_before_kib"]) / 1024, 1)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['lines']:,} lines ({result['events']:,} conntrace events, {result['lives']:,} lives, "
            f"{result['processes']} processes): {result['cpu_s']:.2f} s CPU, {result['wall_s']:.2f} s wall, "
            f"{result['lines_per_cpu_s']:,} lines/s per core; "
            f"peak RSS {result['maxrss_after_kib'] / 1024:.1f} MiB "
            f"(+{result['peak_growth_mib']} MiB while reading)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
