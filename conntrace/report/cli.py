"""``python -m conntrace report`` / ``manage.py conntrace_report``: read the logs, print what they tell.

Exit status: 0 nothing at warning level or above, 1 a warning- or error-level
problem, 2 an input that does not exist or cannot be read (one line on stderr).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from datetime import UTC, datetime
from typing import Any, Optional, TextIO

from conntrace.report import findings as findings_module
from conntrace.report import html, text
from conntrace.report.model import Deployment
from conntrace.report.reading import ReadStats, UnreadableInput, events

DESCRIPTION = (
    "Read conntrace's events back from JSON-lines logs (files, directories, gzip, '-' for stdin; other "
    "lines are skipped) and tell one story: problems by culprit line, most frequent first, the process "
    "families and each connection's life across processes. Exit status: 0 no warning, 1 a warning- or "
    "error-level problem, 2 unreadable input."
)


def moment(value: str) -> float:
    """Parse an ISO 8601 time (naive: UTC) into epoch seconds, for --since / --until."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {value!r}") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the report's arguments to ``parser`` (the CLI's subcommand, or the management command)."""
    parser.add_argument(
        "paths", nargs="+", metavar="FILE_OR_DIR", help="log files or directories; - for stdin"
    )
    parser.add_argument(
        "--since", type=moment, metavar="TIME", help="leave out events before TIME (ISO 8601)"
    )
    parser.add_argument("--until", type=moment, metavar="TIME", help="leave out events after TIME (ISO 8601)")
    parser.add_argument("--html", metavar="OUT.html", help="also write one self-contained HTML page")
    parser.add_argument(
        "--json", action="store_true", help="print the findings as JSON instead of the summary"
    )


def read(paths: list[str], since: Optional[float] = None, until: Optional[float] = None) -> dict[str, Any]:
    """Read ``paths`` and return the findings as data; raise ``UnreadableInput``."""
    stats = ReadStats()
    deployment = Deployment(since=since, until=until)
    add = deployment.add
    # The fold makes no reference cycles, and the collector's passes over the lives it holds
    # cost 15 % of the reading (benchmarks/log_report.py): paused while reading.
    collecting = gc.isenabled()
    gc.disable()
    try:
        for source, event in events(paths, stats):
            add(source, event)
    finally:
        if collecting:
            gc.enable()
    deployment.finish()
    return findings_module.build(deployment, stats)


def run(
    paths: list[str],
    since: Optional[float] = None,
    until: Optional[float] = None,
    html_path: Optional[str] = None,
    as_json: bool = False,
    stdout: Optional[TextIO] = None,
    stderr: Optional[TextIO] = None,
) -> int:
    """Run the report; return the exit status."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    try:
        found = read(paths, since, until)
    except UnreadableInput as exc:
        stderr.write(f"conntrace report: {exc}\n")
        return 2
    if html_path:
        try:
            with open(html_path, "w", encoding="utf-8") as out:
                out.write(html.render(found))
        except OSError as exc:
            stderr.write(f"conntrace report: cannot write {html_path}: {exc.strerror or exc}\n")
            return 2
    if as_json:
        stdout.write(json.dumps(found, indent=1) + "\n")
    else:
        text.render(found, stdout)
    return 1 if findings_module.has_warnings(found) else 0


def run_arguments(args: Any, stdout: Optional[TextIO] = None, stderr: Optional[TextIO] = None) -> int:
    """Run the report from parsed arguments (``add_arguments``)."""
    return run(args.paths, args.since, args.until, args.html, args.json, stdout, stderr)
