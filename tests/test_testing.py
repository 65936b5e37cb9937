"""The helpers conntrace offers to the application's own tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.db import connection

from conntrace.testing import assert_no_open_connections, track_connections

pytestmark = [pytest.mark.django_db(transaction=True)]


def query() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def test_track_connections_sees_what_the_block_opened_and_left_open():
    connection.close()
    with track_connections() as tracked:
        query()
    [left] = tracked.left_open()
    assert left["opened_in"].endswith(" in query")
    with pytest.raises(AssertionError, match=r"1 connection\(s\) left open: default opened in .* in query"):
        assert_no_open_connections(tracked)
    connection.close()
    assert tracked.left_open() == []
    assert_no_open_connections(tracked)
    assert [r["closes"][-1]["outcome"] for r in tracked.opened()] == ["closed"]


def test_anomalies_lists_double_closes_only():
    connection.close()
    with track_connections() as tracked:
        query()
        connection.close()
        query()
        connection.connection.close()
        connection.close()
    [anomaly] = tracked.anomalies()
    assert anomaly["outcome"] == "already_closed"
    assert anomaly["closed_by"] == "application"


def readme_example() -> str:
    """Return the README's track_connections example ("In your test suite"), as written there."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    [block] = [b for b in text.split("```python\n")[1:] if b.startswith("# test_nightly_report.py")]
    return block.split("```")[0]


def run_example(source: str) -> None:
    """Run the example's test function, as pytest would inside this django_db(transaction=True) test."""
    namespace: dict[str, object] = {"__name__": "test_nightly_report"}
    exec(compile(source, "test_nightly_report.py", "exec"), namespace)
    namespace["test_nightly_report_leaves_no_connection_open"]()


def test_the_readme_example_runs_as_written():
    run_example(readme_example())
    assert connection.connection is None  # the report closed it


def test_the_readme_example_fails_when_the_code_leaves_its_connection_open():
    leaky = readme_example().replace("    connections.close_all()\n    return value", "    return value")
    assert leaky != readme_example()
    with pytest.raises(AssertionError, match=r"1 connection\(s\) left open: default .* nightly_report"):
        run_example(leaky)


def test_assert_no_leaks_names_a_threads_connection_left_open_and_events_show_the_block():
    import threading

    connection.close()
    release = threading.Event()
    opened = threading.Event()

    def hold() -> None:
        query()
        opened.set()
        release.wait(10)
        connection.close()

    with track_connections() as tracked:
        thread = threading.Thread(target=hold, name="holder")
        thread.start()
        assert opened.wait(10)
        query()  # the main thread's own connection is not a leak
        with pytest.raises(
            AssertionError, match=r"thread_left_open: 'default' connection opened in .* in query"
        ):
            tracked.assert_no_leaks()
    release.set()
    thread.join(10)
    tracked.assert_no_leaks()  # closed since: nothing left
    # What happened inside the block, in order (the holder's close came after it).
    assert [(e["observed"], e["thread"]) for e in tracked.events()] == [
        ("opened", "holder"),
        ("opened", "MainThread"),
    ]
