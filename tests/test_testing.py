"""The helpers conntrace offers to the application's own tests."""

from __future__ import annotations

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
