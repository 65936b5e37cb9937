"""OpenTelemetry metrics, read back from the real SDK (``InMemoryMetricReader``) after known sequences.

Every instrument is compared with what opentelemetry-semantic-conventions
generates for it (name, unit, exported kind); the counts are exact after an
open and close, a request, pool checkouts and a timeout, a fork with
``reset``, a double close and an abandoned thread connection.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.signals import request_finished, request_started
from django.db import OperationalError, connections, transaction
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import Histogram, InMemoryMetricReader, Sum
from opentelemetry.semconv._incubating.metrics import db_metrics

import conntrace
from conntrace import metric_hooks, metrics, watchdog
from conntrace.names import Event, Metric
from tests.test_forking import in_child
from tests.test_losses import terminate
from tests.test_pools import (  # noqa: F401 (small_pool: a fixture)
    ALIAS,
    SMALL_POOL,
    Holders,
    OneInLine,
    refuse_a_second_waiter,
    small_pool,
    use_small_pool,
)

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    """Give a reader of conntrace's metrics through a real SDK meter provider of this test's own."""
    connections.close_all()
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics.install(provider)
    yield reader
    metrics.uninstall()
    provider.shutdown()


def collected(reader: InMemoryMetricReader) -> dict[str, Any]:
    """Return {instrument name: the instrument's exported metric} collected now."""
    data = reader.get_metrics_data()
    return {
        metric.name: metric
        for resource in (data.resource_metrics if data else [])
        for scope in resource.scope_metrics
        if scope.scope.name == "conntrace"
        for metric in scope.metrics
    }


def values(reader: InMemoryMetricReader, name: str) -> dict[tuple[str, ...], float]:
    """Return {attribute values: value} of a sum, or {attribute values: count} of a histogram."""
    metric = collected(reader).get(name)
    if metric is None:
        return {}
    found = {}
    for point in metric.data.data_points:
        key = tuple(str(point.attributes[k]) for k in sorted(point.attributes))
        found[key] = point.count if isinstance(metric.data, Histogram) else point.value
    return found


def pool_name(alias: str = "default") -> str:
    """Return the pool name of ``alias``: the small pool points where "default" does."""
    settings = connections["default"].settings_dict
    return f"{alias}/{settings['HOST'] or 'localhost'}:{settings['PORT'] or 5432}/{settings['NAME']}"


def counts(reader: InMemoryMetricReader, alias: str = "default") -> dict[str, float]:
    """Return {state: connections} of ``alias`` (db.client.connection.count)."""
    name = pool_name(alias)
    return {state: n for (pool, state), n in values(reader, Metric.CONNECTION_COUNT).items() if pool == name}


def query(alias: str = "default") -> None:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")


# --------------------------------------------------------------------------- the conventions


def conventions() -> dict[str, tuple[str, type, bool]]:
    """Return {name: (unit, exported type, monotonic)} of the conventions' db.client.connection.* instruments.

    Made with opentelemetry-semantic-conventions' own creators on a throwaway meter.
    """
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("conventions")
    for name in dir(db_metrics):
        if name.startswith("create_db_client_connection_"):
            instrument = getattr(db_metrics, name)(meter)
            (instrument.record if hasattr(instrument, "record") else instrument.add)(1)
    return {
        metric.name: shape(metric)
        for metric in reader.get_metrics_data().resource_metrics[0].scope_metrics[0].metrics
    }


def open_and_close_one_of_each() -> None:
    """Open and close a connection of Django's own, and check one out of the small pool and return it."""
    query()
    connections["default"].close()
    use_small_pool().ensure_connection()
    use_small_pool().close()


def shape(metric: Any) -> tuple[str, type, bool]:
    return metric.unit, type(metric.data), getattr(metric.data, "is_monotonic", False)


@pytest.mark.usefixtures("small_pool")
def test_every_instrument_has_the_conventions_name_unit_and_kind(reader):
    open_and_close_one_of_each()
    # A timeout and an anomaly, straight through the hook: their own tests below make real ones.
    metric_hooks.recorder.timed_out(ALIAS)
    metric_hooks.recorder.anomaly(Event.POOL_EXHAUSTED, ALIAS)
    ours = {name: shape(metric) for name, metric in collected(reader).items()}
    theirs = conventions()
    assert {name: ours[name] for name in theirs} == theirs
    assert sorted(theirs) == sorted(m for m in Metric if m.startswith("db."))
    assert ours[Metric.ANOMALIES] == ("{anomaly}", Sum, True)
    assert ours[Metric.AGE] == ("s", Histogram, False)


@pytest.mark.usefixtures("small_pool")
def test_every_instrument_carries_the_same_pool_name(reader):
    open_and_close_one_of_each()
    names = {
        name: {point.attributes["db.client.connection.pool.name"] for point in metric.data.data_points}
        for name, metric in collected(reader).items()
    }
    settings = connections["default"].settings_dict
    assert names[Metric.CREATE_TIME] == {pool_name()}
    assert names[Metric.WAIT_TIME] == names[Metric.MAX] == {pool_name(ALIAS)}
    assert names[Metric.CONNECTION_COUNT] == {pool_name(), pool_name(ALIAS)}
    assert not any(settings["PASSWORD"] and settings["PASSWORD"] in str(n) for n in names.values())


# --------------------------------------------------------------------------- counts after known sequences


def test_open_request_and_close_move_a_persistent_connection_between_idle_used_and_gone(reader, conn_max_age):
    conn_max_age(None)
    query()  # outside any request: open, idle
    assert counts(reader) == {"idle": 1, "used": 0}
    request_started.send(sender=None)
    assert counts(reader) == {"idle": 1, "used": 0}  # not used in this request yet
    query()
    assert counts(reader) == {"idle": 0, "used": 1}
    request_finished.send(sender=None)  # Django keeps it (CONN_MAX_AGE None)
    assert counts(reader) == {"idle": 1, "used": 0}
    connections["default"].close()
    assert counts(reader) == {"idle": 0, "used": 0}
    name = (pool_name(),)
    assert values(reader, Metric.CREATE_TIME) == {name: 1}
    assert values(reader, Metric.USE_TIME) == values(reader, Metric.AGE) == {name: 1}
    assert values(reader, Metric.ANOMALIES) == {}


def test_a_double_close_is_counted_even_when_the_log_level_drops_its_warning(reader):
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(50))  # CRITICAL only
    conntrace.install()
    query()
    connections["default"].connection.close()  # behind Django's back
    connections["default"].close()
    assert values(reader, Metric.ANOMALIES) == {("connection_double_close", pool_name()): 1}
    assert counts(reader) == {"idle": 0, "used": 0}


def test_a_lost_session_is_one_anomaly_and_its_expected_close_none(reader, pg):
    query()
    terminate(pg)
    with pytest.raises(OperationalError):
        query()
    connections["default"].close()  # connection_double_close at info, with cause: not an anomaly
    assert values(reader, Metric.ANOMALIES) == {("connection_lost", pool_name()): 1}


def test_a_transaction_held_too_long_is_one_anomaly_however_often_the_watchdog_looks(reader):
    with transaction.atomic():
        query()
        for _ in range(3):
            watchdog.check(now=time.monotonic() + 3600)  # an hour later, as the watchdog would see it
    assert values(reader, Metric.ANOMALIES) == {("connection_held_long", pool_name()): 1}


def test_an_abandoned_thread_connection_is_counted_once_and_no_longer_open(reader):
    thread = threading.Thread(target=query, name="forgets-to-close")
    thread.start()
    thread.join()
    gc.collect()
    conntrace.live()  # a safe point: the collector's report is emitted (and counted) here
    assert values(reader, Metric.ANOMALIES) == {("connection_abandoned", pool_name()): 1}
    assert counts(reader) == {"idle": 0, "used": 0}
    assert values(reader, Metric.USE_TIME) == {(pool_name(),): 1}


def pool_settled(available: int) -> None:
    """Wait (at most 10 s) for the small pool to have ``available`` idle sessions."""
    for _ in range(100):
        if [p["available"] for p in conntrace.pools() if p["alias"] == ALIAS] == [available]:
            return
        time.sleep(0.1)
    raise AssertionError(f"the pool never had {available} idle sessions: {conntrace.pools()}")


@pytest.mark.usefixtures("small_pool")
def test_pool_checkout_and_return(reader):
    name = pool_name(ALIAS)
    use_small_pool().ensure_connection()
    pool_settled(1)  # lending its only session, psycopg_pool opens a second one in the background
    assert counts(reader, ALIAS) == {"used": 1, "idle": 1}
    assert values(reader, Metric.MAX) == values(reader, Metric.IDLE_MAX) == {(name,): 2}
    assert values(reader, Metric.IDLE_MIN) == {(name,): 1}
    use_small_pool().close()
    assert counts(reader, ALIAS) == {"used": 0, "idle": 2}
    use_small_pool().ensure_connection()
    use_small_pool().close()
    assert values(reader, Metric.WAIT_TIME) == values(reader, Metric.USE_TIME) == {(name,): 2}
    assert values(reader, Metric.CREATE_TIME) == {}  # the pool's threads open its sessions
    assert values(reader, Metric.PENDING_REQUESTS) == {(name,): 0}


@pytest.mark.usefixtures("small_pool")
def test_a_pool_timeout_counts_one_timeout_and_one_pool_exhausted(reader):
    name = pool_name(ALIAS)
    with Holders():
        assert counts(reader, ALIAS) == {"used": 2, "idle": 0}
        with pytest.raises(OperationalError):
            use_small_pool().ensure_connection()
    assert values(reader, Metric.TIMEOUTS) == {(name,): 1}
    assert values(reader, Metric.ANOMALIES) == {("pool_exhausted", name): 1}
    assert counts(reader, ALIAS)["used"] == 0


@pytest.mark.usefixtures("small_pool")
def test_a_checkout_refused_with_requests_waiting_is_pool_exhausted_but_no_timeout(reader):
    name = pool_name(ALIAS)
    refuse_a_second_waiter(SMALL_POOL)
    in_line = OneInLine()
    with Holders():
        in_line.start()
        assert values(reader, Metric.PENDING_REQUESTS) == {(name,): 1}
        with pytest.raises(OperationalError):
            use_small_pool().ensure_connection()
    in_line.join()
    assert values(reader, Metric.TIMEOUTS) == {}
    assert values(reader, Metric.ANOMALIES) == {("pool_exhausted", name): 1}


def test_a_forked_child_counts_its_own_connections_and_the_parent_only_its_own(reader):
    query()
    before = counts(reader)

    def child() -> Any:
        conntrace.live()  # a safe point: the fork reports go out (and are counted)
        inherited = counts(reader)
        query()  # reset: the child opens its own
        return inherited, counts(reader), [[*key, n] for key, n in values(reader, Metric.ANOMALIES).items()]

    inherited, own, anomalies = in_child(child)
    assert before == {"idle": 1, "used": 0}
    assert inherited == {"idle": 0, "used": 0}
    assert own == {"idle": 1, "used": 0}
    assert anomalies == [["connection_fork_inherited", pool_name(), 1]]
    assert counts(reader) == before  # the parent: its own connection, nothing of the child's
    assert values(reader, Metric.ANOMALIES) == {}


# --------------------------------------------------------------------------- off, and without the extra

PROCESS = """
import json, sys
if sys.argv[2] == "without-otel":
    sys.modules["opentelemetry"] = None  # as if conntrace[otel] were not installed
import django, structlog
from django.conf import settings
settings.configure(
    INSTALLED_APPS=["conntrace"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    CONNTRACE={"METRICS": sys.argv[1] == "on"},
)
with structlog.testing.capture_logs() as logs:
    django.setup()
    from django.core import checks
    from django.db import connection
    connection.ensure_connection()
    connection.close()
    ids = [message.id for message in checks.run_checks()]
from conntrace import metric_hooks
print(json.dumps({
    "check_ids": ids,
    "warned": [(e["event"], e.get("check_id"), e.get("hint")) for e in logs if e["log_level"] == "warning"],
    "imported": sorted(
        name for name, module in sys.modules.items()
        if name.startswith(("opentelemetry", "conntrace.metrics")) and module is not None
    ),
    "recording": metric_hooks.recorder is not None,
}))
"""


def run_process(metrics_setting: str, otel: str = "with-otel") -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", PROCESS, metrics_setting, otel],
        cwd=Path(conntrace.__file__).parent.parent, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    return json.loads(done.stdout)


def test_with_metrics_off_nothing_of_opentelemetry_is_imported():
    assert run_process("off") == {"check_ids": [], "warned": [], "imported": [], "recording": False}


def test_with_metrics_on_the_metrics_module_records_through_the_global_meter_provider():
    result = run_process("on")
    assert "conntrace.metrics" in result["imported"] and "opentelemetry.metrics" in result["imported"]
    assert (result["check_ids"], result["warned"], result["recording"]) == ([], [], True)


def test_metrics_on_without_opentelemetry_is_check_e016_and_one_warning_never_a_traceback():
    result = run_process("on", "without-otel")
    hint = 'Install the extra that brings opentelemetry-api: pip install "conntrace[otel]"; or set it False.'
    assert result == {
        "check_ids": ["conntrace.E016"],
        "warned": [["conntrace_settings_invalid", "conntrace.E016", hint]],
        "imported": [],
        "recording": False,
    }
