"""conntrace's pytest plugin, registered through the ``pytest11`` entry point.

It must never break a project that installs conntrace without using it in its tests,
so it does nothing until asked and until Django is set up.
"""

from __future__ import annotations

from typing import Any

MODES = ("off", "report", "strict")


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("conntrace", "database connection findings")
    group.addoption(
        "--conntrace",
        choices=MODES,
        default=None,
        help="off: do nothing; report: list leaked, double-closed and forked connections at the end; "
        "strict: fail the test that caused one. Default: the conntrace ini option, else report.",
    )
    parser.addini("conntrace", "off, report or strict (see --conntrace)", default="report")
