"""conntrace's pytest plugin, registered through the ``pytest11`` entry point.

It must never break a project that installs conntrace without using it in its
tests: it watches nothing until Django's settings are configured, nothing by
default unless conntrace is in ``INSTALLED_APPS`` (``--conntrace`` or the ini
option asks for it explicitly), and an error
inside it is reported once in the summary, never raised into a test. In
``report`` mode each test's findings (see ``findings``) are listed at the end;
in ``strict`` mode the test that caused one fails at teardown, so that its own
result is kept. Findings travel on the teardown report, which pytest-xdist
sends from its workers to the controller.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any, Optional

import pytest

from conntrace.names import GuardMode

MODES = tuple(GuardMode)
REPORT_ATTR = "conntrace_findings"  # on a teardown report: the test's findings as plain dicts
WATCHED_ATTR = "conntrace_watched"  # on a teardown report: True if the test was watched
FINDINGS_KEY = pytest.StashKey[list]()
PLUGIN_NAME = "conntrace-guard"


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("conntrace", "database connection findings")
    group.addoption(
        "--conntrace",
        choices=MODES,
        default=None,
        help="off: do nothing; report: list leaked, double-closed and forked connections at the end; "
        "strict: fail the test that caused one. Default: the conntrace ini option, else report "
        "when conntrace is in INSTALLED_APPS.",
    )
    parser.addini("conntrace", "off, report or strict (see --conntrace)", default="")


def pytest_configure(config: pytest.Config) -> None:
    chosen = config.getoption("conntrace") or config.getini("conntrace")
    mode = chosen or GuardMode.REPORT
    if mode not in MODES:
        raise pytest.UsageError(f"conntrace ini option: {mode!r} is not one of {', '.join(MODES)}")
    if mode != GuardMode.OFF:
        config.pluginmanager.register(SuiteGuard(GuardMode(mode), chosen=bool(chosen)), PLUGIN_NAME)


def in_installed_apps() -> bool:
    """Return True if the project lists conntrace in ``INSTALLED_APPS`` (by name or by its AppConfig)."""
    from django.conf import settings

    return any(app == "conntrace" or app.startswith("conntrace.") for app in settings.INSTALLED_APPS)


def django_is_set_up() -> bool:
    """Return True if this run uses Django: its settings are configured (never configure them here)."""
    if "django" not in sys.modules:
        return False
    from django.conf import settings

    return settings.configured


class SuiteGuard:
    """The plugin's state for one run: the watcher (once Django is set up) and every finding."""

    def __init__(self, mode: GuardMode, chosen: bool = True) -> None:
        self.mode = mode
        # Not chosen (no option, no ini): watch only a project that put conntrace in INSTALLED_APPS.
        # Installing it into another project's tests would change what they run (close errors
        # downgraded), which a dependency that merely came along must never do.
        self.chosen = chosen
        self.watcher: Any = None
        self.found: list[Any] = []
        self.watched = 0  # tests watched, here or in pytest-xdist's workers
        self.problem: Optional[str] = None
        # What a failed test-database drop found open (printed with the summary: pytest captures
        # the output of the last test's teardown, where the drop happens).
        self.drop_reports: list[str] = []
        self.exits = ExitStack()

    def failed(self, where: str, exc: BaseException) -> None:
        """Stop watching after an error of the plugin's own; it is reported once, in the summary."""
        if self.problem is None:
            self.problem = f"conntrace: stopped watching after an error of its own in {where}: " + (
                f"{type(exc).__name__}: {exc}"
            )
        self.stop()

    def stop(self) -> None:
        watcher, self.watcher = self.watcher, None
        if watcher is not None:
            watcher.stop()
        self.exits.close()

    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        # After pytest-django's set-up, before collection: import-time connections are recorded.
        try:
            if not django_is_set_up() or not (self.chosen or in_installed_apps()):
                return
            from conntrace import drop_guard, findings, install

            if not install():
                return  # disabled by the project's settings
            self.exits.enter_context(drop_guard.explaining_drop_failures(self.drop_reports.append))
            self.watcher = findings.Watcher()
            self.watcher.start()
        except Exception as exc:
            self.failed("sessionstart", exc)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        try:
            if self.watcher is not None:
                self.watcher.remember_early()
        except Exception as exc:
            self.failed("collection", exc)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        try:
            if self.watcher is not None:
                self.watcher.begin(item.nodeid)
        except Exception as exc:
            self.failed("setup", exc)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: Optional[pytest.Item]) -> Iterator[None]:
        try:
            return (yield)
        finally:
            try:
                if self.watcher is not None:
                    item.stash[FINDINGS_KEY] = self.watcher.end()
            except Exception as exc:
                self.failed("teardown", exc)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo) -> Iterator[Any]:
        report = yield
        if call.when == "teardown" and FINDINGS_KEY in item.stash:
            try:
                self.mark(report, item.stash[FINDINGS_KEY])
            except Exception as exc:
                self.failed("makereport", exc)
        return report

    def mark(self, report: pytest.TestReport, found: list[Any]) -> None:
        """Put the test's findings on its teardown report; in strict mode, fail it with them."""
        setattr(report, WATCHED_ATTR, True)
        if not found:
            return
        from conntrace.findings import report_text

        setattr(report, REPORT_ATTR, [finding.as_dict() for finding in found])
        if self.mode == GuardMode.STRICT and report.passed:
            report.outcome = "failed"
            report.longrepr = "conntrace (strict):\n" + report_text(found)
        elif self.mode == GuardMode.STRICT:  # the teardown failed already: keep its error, add ours
            report.sections.append(("conntrace (strict)", report_text(found)))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # Here too for a report a pytest-xdist worker sent: the controller lists every finding.
        if getattr(report, WATCHED_ATTR, False):
            self.watched += 1
        data = getattr(report, REPORT_ATTR, None)
        if data:
            try:
                from conntrace.findings import Finding

                self.found.extend(Finding.from_dict(item) for item in data)
            except Exception as exc:
                self.failed("logreport", exc)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.problem:
            terminalreporter.write_line(self.problem)
        for text in self.drop_reports:
            terminalreporter.write_sep("=", "conntrace: the test database could not be dropped")
            terminalreporter.write_line(text)
        if self.found:
            from conntrace.findings import report_text

            terminalreporter.write_sep("=", f"conntrace: {len(self.found)} connection finding(s)")
            terminalreporter.write_line(report_text(self.found))
        elif self.watched:
            terminalreporter.write_line(f"conntrace ({self.mode}): {self.watched} tests watched, no finding")

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self.stop()


@pytest.fixture
def conntrace(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The test's tracker (``conntrace.testing.track_connections``): ``assert_no_leaks()``, ``events()``."""
    from conntrace.testing import track_connections

    with track_connections(request.node.nodeid) as tracked:
        yield tracked
