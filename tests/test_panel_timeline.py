"""The panel's timeline as data: lanes, marks placed as percentages of the request, relative times."""

from __future__ import annotations

from conntrace import panel_timeline


def test_timeline_draws_a_connection_opened_earlier_from_the_left_edge_with_its_age():
    entry = {"conn_id": 7, "alias": "default", "state": "open", "opened_ms": -3200.0, "first_use_ms": 2.5}
    timeline = panel_timeline.build([{**entry, "closes": []}], end_ms=10.0)
    [lane] = timeline["lanes"]
    assert (lane["earlier"], lane["age"], lane["bar_left"], lane["bar_width"]) == (
        True,
        "3.20 s",
        "0.00",
        "100.00",
    )
    assert [(m["kind"], m["left"]) for m in lane["marks"]] == [("used", "25.00"), ("end", "100.00")]
    assert timeline["span"] == "10.0 ms"
    assert panel_timeline.relative(12.34) == "+12.3 ms into the request"
    assert panel_timeline.relative(-1500) == "1.50 s before the request"


def test_a_closed_connection_ends_its_bar_at_its_last_close_and_warning_closes_are_marked():
    closes = [{"outcome": "closed", "at_ms": 5.0}, {"outcome": "already_closed", "at_ms": 8.0}]
    entry = {"conn_id": 3, "alias": "default", "state": "ended", "opened_ms": 1.0, "first_use_ms": 1.0}
    [lane] = panel_timeline.build([{**entry, "closes": closes}], end_ms=10.0)["lanes"]
    assert (lane["bar_left"], lane["bar_width"]) == ("10.00", "70.00")
    assert [(m["kind"], m["left"]) for m in lane["marks"]] == [
        ("opened", "10.00"),
        ("used", "10.00"),
        ("close", "50.00"),
        ("close-warning", "80.00"),
        ("end", "100.00"),
    ]
    assert lane["marks"][3]["title"] == "already_closed, +8.0 ms into the request"
