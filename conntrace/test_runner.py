"""The guard for Django's own test runner: ``TEST_RUNNER = "conntrace.test_runner.ConntraceRunner"``.

Or mix ``ConntraceRunnerMixin`` into a project's runner. ``manage.py test
--conntrace=report`` (the default) lists each test's findings (see
``findings``) at the end; ``--conntrace=strict`` adds an error to the test
that caused one (its own result is kept); ``--conntrace=off`` changes
nothing. With ``--parallel`` each forked worker follows its own tests and
sends its findings back with the other results (an extra event of
``RemoteTestResult``, replayed in the main process). Connections opened
before the tests (at import, in ``AppConfig.ready()``) that are open when the
runner forks its workers are findings too.
"""

from __future__ import annotations

import sys
import unittest
from typing import Any, Optional

from django.test.runner import DiscoverRunner, ParallelTestSuite, RemoteTestResult, RemoteTestRunner

from conntrace import drop_guard, findings, install, records
from conntrace.names import GuardMode

EVENT = "conntraceFinding"  # the name of the extra result event a worker sends
RUNNER_FORK = "manage.py test --parallel (the runner forking its workers)"

# This process's watcher, made by the runner before it forks: the workers inherit it.
_watcher: Optional[findings.Watcher] = None


class FindingError(AssertionError):
    """A test's connection findings, as the error ``--conntrace=strict`` adds to it."""


class _WatchingResult:
    """Follows each test while it runs; its findings go to ``conntraceFinding``."""

    # False in the main process of a --parallel run: there the results are only replayed.
    conntrace_watches = True

    def startTest(self, test: Any) -> None:
        if _watcher is not None and self.conntrace_watches:
            _watcher.begin(test.id())
        super().startTest(test)  # type: ignore[misc]

    def stopTest(self, test: Any) -> None:
        if _watcher is not None and self.conntrace_watches:
            for finding in _watcher.end():
                self.conntraceFinding(test, finding.as_dict())
        super().stopTest(test)  # type: ignore[misc]

    def conntraceFinding(self, test: Any, data: dict[str, Any]) -> None:
        raise NotImplementedError


class WorkerResult(_WatchingResult, RemoteTestResult):
    """A ``--parallel`` worker's result: a finding becomes an event the main process replays."""

    def conntraceFinding(self, test: Any, data: dict[str, Any]) -> None:
        self.events.append((EVENT, self.test_index, data))


class WorkerRunner(RemoteTestRunner):
    resultclass = WorkerResult


class WatchedParallelTestSuite(ParallelTestSuite):
    runner_class = WorkerRunner


class _CollectingResult(_WatchingResult):
    """The main process's result: keeps every finding; in strict mode adds it as the test's error."""

    conntrace_strict = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conntrace_findings: list[findings.Finding] = []

    def startTest(self, test: Any) -> None:
        if not self.conntrace_watches:
            self.note_runner_forks()  # replaying a worker's results: the workers exist
        super().startTest(test)

    def conntraceFinding(self, test: Any, data: dict[str, Any]) -> None:
        finding = findings.Finding.from_dict(data)
        self.conntrace_findings.append(finding)
        if self.conntrace_strict:
            error = FindingError(f"conntrace (strict):\n{finding.text()}")
            self.addError(test, (FindingError, error, None))  # type: ignore[attr-defined]

    def note_runner_forks(self) -> None:
        """Add the connections opened before the tests that were open when the runner forked (once each)."""
        if _watcher is not None:
            holder = unittest.suite._ErrorHolder(RUNNER_FORK)
            for finding in _watcher.crossed_forks(RUNNER_FORK):
                self.conntraceFinding(holder, finding.as_dict())


class ConntraceRunnerMixin:
    """Adds ``--conntrace=off|report|strict`` to a ``DiscoverRunner``."""

    parallel_test_suite = WatchedParallelTestSuite

    def __init__(self, *args: Any, conntrace: str = GuardMode.REPORT, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conntrace_mode = GuardMode(conntrace)
        self.conntrace_parallel = False
        if self.conntrace_mode == GuardMode.OFF:
            self.parallel_test_suite = ParallelTestSuite

    @classmethod
    def add_arguments(cls, parser: Any) -> None:
        super().add_arguments(parser)  # type: ignore[misc]
        parser.add_argument(
            "--conntrace",
            choices=tuple(GuardMode),
            default=GuardMode.REPORT,
            help="off: do nothing; report: list each test's connection findings at the end; "
            "strict: add an error to the test that caused one.",
        )

    @property
    def watching(self) -> bool:
        return self.conntrace_mode != GuardMode.OFF

    def build_suite(self, *args: Any, **kwargs: Any) -> Any:
        global _watcher
        if self.watching and _watcher is None and install():
            _watcher = findings.Watcher()
            _watcher.start()
        suite = super().build_suite(*args, **kwargs)  # type: ignore[misc]
        self.conntrace_parallel = isinstance(suite, ParallelTestSuite)
        if _watcher is not None:
            # What is open now was opened at startup or import: the test databases come later.
            _watcher.remember_early(last_id=records.take_id())
        return suite

    def get_resultclass(self) -> Any:
        base = super().get_resultclass()  # type: ignore[misc]
        if not self.watching:
            return base
        strict = self.conntrace_mode == GuardMode.STRICT
        return type(
            "ConntraceResult",
            (_CollectingResult, base or unittest.TextTestResult),
            {"conntrace_strict": strict, "conntrace_watches": not self.conntrace_parallel},
        )

    def run_suite(self, suite: Any, **kwargs: Any) -> Any:
        result = super().run_suite(suite, **kwargs)  # type: ignore[misc]
        if not isinstance(result, _CollectingResult):
            return result
        result.note_runner_forks()
        found = result.conntrace_findings
        if found:
            line = "=" * 70
            print(f"{line}\nconntrace: {len(found)} connection finding(s)\n{line}", file=sys.stderr)
            print(findings.report_text(found), file=sys.stderr)
        return result

    def teardown_databases(self, *args: Any, **kwargs: Any) -> Any:
        if not self.watching:
            return super().teardown_databases(*args, **kwargs)  # type: ignore[misc]
        with drop_guard.explaining_drop_failures(lambda text: print(text, file=sys.stderr)):
            return super().teardown_databases(*args, **kwargs)  # type: ignore[misc]


class ConntraceRunner(ConntraceRunnerMixin, DiscoverRunner):
    """Django's ``DiscoverRunner`` with conntrace's guard."""
