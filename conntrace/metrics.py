"""OpenTelemetry metrics of the database-metrics conventions, recorded into the application's own SDK.

The only module that imports ``opentelemetry`` (the ``conntrace[otel]``
extra: ``opentelemetry-api`` only), and imported only when
``CONNTRACE["METRICS"]`` is on. Instruments, units and attributes follow the
semantic conventions 1.44.0 (``db.client.connection.*``, experimental), as
opentelemetry-semantic-conventions 0.66b1 generates them.

Nothing is recorded per query. Durations and anomalies come through
``metric_hooks`` from points that already run once per connect, close,
checkout or anomaly; the counts are read when the SDK collects: the live
records of this process and each psycopg pool's own ``get_stats()``. So a
forked child counts only its own connections (the inherited ones were ended
by the fork policy, or belong to the parent under ``warn``), and the parent's
counts never include a child's.
"""

from __future__ import annotations

import sys
import time
from _thread import get_ident
from collections.abc import Iterable
from importlib import metadata
from typing import Any, Optional

from django.core.signals import request_finished, request_started
from django.db import connections
from opentelemetry import metrics as otel
from opentelemetry.metrics import CallbackOptions, Meter, Observation

from conntrace import events, forking, metric_hooks, process, psycopg_pools, records
from conntrace.names import ConnectionState, Event, Metric, MetricAttribute, State

SEMCONV_SCHEMA = "https://opentelemetry.io/schemas/1.44.0"
# The conventions' advice for durations in seconds; a connection's age reaches hours.
SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
AGE_BUCKETS = (*SECONDS_BUCKETS, 30, 60, 300, 900, 1800, 3600, 14400, 86400)
DEFAULT_PORTS = {"postgresql": "5432", "mysql": "3306", "oracle": "1521"}
UNITS_UID = "conntrace.metrics.units"

# Each instrument's unit and description: the conventions' words for theirs.
# fmt: off
SPEC: dict[Metric, tuple[str, str]] = {
    Metric.CONNECTION_COUNT: ("{connection}", "The number of connections that are currently in state "
                              "described by the `state` attribute."),
    Metric.CREATE_TIME: ("s", "The time it took to create a new connection."),
    Metric.USE_TIME: ("s", "The time between borrowing a connection and returning it to the pool."),
    Metric.WAIT_TIME: ("s", "The time it took to obtain an open connection from the pool."),
    Metric.TIMEOUTS: ("{timeout}", "The number of connection timeouts that have occurred trying to "
                      "obtain a connection from the pool."),
    Metric.PENDING_REQUESTS: ("{request}", "The number of current pending requests for an open connection."),
    Metric.MAX: ("{connection}", "The maximum number of open connections allowed."),
    Metric.IDLE_MAX: ("{connection}", "The maximum number of idle open connections allowed."),
    Metric.IDLE_MIN: ("{connection}", "The minimum number of idle open connections allowed."),
    Metric.ANOMALIES: ("{anomaly}", "Anomalies conntrace reports as a warning or worse, by event, "
                       "counted whatever the log level."),
    Metric.AGE: ("s", "How old a connection Django opened itself was when it was closed."),
}
# fmt: on

Attributes = dict[str, str]


def pool_name(alias: str, vendor: str, settings_dict: dict[str, Any]) -> str:
    """Return ``alias/server.address:server.port/db.namespace``: the conventions' suggestion after the alias.

    Built from HOST, PORT and NAME only: never the user or the password.
    """
    name = str(settings_dict.get("NAME") or "")
    host = settings_dict.get("HOST")
    if vendor == "sqlite" or not (host or vendor in DEFAULT_PORTS):
        return f"{alias}/{name}"
    port = settings_dict.get("PORT") or DEFAULT_PORTS.get(vendor, "")
    return f"{alias}/{host or 'localhost'}:{port}/{name}"


class Recorder:
    """The instruments on one meter, and what they read; ``metric_hooks.recorder`` while installed."""

    def __init__(self, meter: Meter) -> None:
        self.names: dict[str, str] = {}  # alias -> pool name, learnt at its first connect
        self.attributes: dict[tuple[str, Optional[str]], Attributes] = {}
        self.anomaly_attributes: dict[tuple[str, str], Attributes] = {}
        # conn_id -> when a pool lent the connection (use_time starts there, not at the wait).
        self.lent_at: dict[int, float] = {}
        # thread id -> when the request or Celery task it runs now started.
        self.units: dict[int, float] = {}

        def histogram(metric: Metric, buckets: tuple[float, ...] = SECONDS_BUCKETS) -> Any:
            return meter.create_histogram(metric, *SPEC[metric], explicit_bucket_boundaries_advisory=buckets)

        def observe(metric: Metric, callback: Any) -> None:
            meter.create_observable_up_down_counter(metric, [callback], *SPEC[metric])

        self.create_time = histogram(Metric.CREATE_TIME)
        self.wait_time = histogram(Metric.WAIT_TIME)
        self.use_time = histogram(Metric.USE_TIME)
        self.age = histogram(Metric.AGE, AGE_BUCKETS)
        self.timeouts = meter.create_counter(Metric.TIMEOUTS, *SPEC[Metric.TIMEOUTS])
        self.anomalies = meter.create_counter(Metric.ANOMALIES, *SPEC[Metric.ANOMALIES])
        observe(Metric.CONNECTION_COUNT, self.observe_count)
        observe(Metric.PENDING_REQUESTS, self.pool_stat("requests_waiting"))
        observe(Metric.MAX, self.pool_stat("pool_max"))
        # psycopg_pool keeps up to max_size idle connections, and tops up to min_size.
        observe(Metric.IDLE_MAX, self.pool_stat("pool_max"))
        observe(Metric.IDLE_MIN, self.pool_stat("pool_min"))

    # -- the pool name, the same on every instrument so that they join

    def attributes_of(self, alias: str, state: Optional[str] = None) -> Attributes:
        """Return the attributes of ``alias`` (and a connection ``state``), made once."""
        found = self.attributes.get((alias, state))
        if found is None:
            found = {MetricAttribute.POOL_NAME.value: self.name_of(alias)}
            if state is not None:
                found[MetricAttribute.STATE.value] = str(state)
            self.attributes[(alias, state)] = found
        return found

    def name_of(self, alias: str) -> str:
        name = self.names.get(alias)
        if name is None:
            settings_dict = connections.settings.get(alias) or {}
            vendor = str(settings_dict.get("ENGINE", "")).rsplit(".", 1)[-1]
            name = self.names[alias] = pool_name(alias, vendor, settings_dict)
        return name

    def learn(self, wrapper: Any) -> None:
        """Name ``wrapper``'s alias from its own settings (an alias made at run time is in no DATABASES)."""
        if wrapper.alias not in self.names:
            self.names[wrapper.alias] = pool_name(wrapper.alias, wrapper.vendor, wrapper.settings_dict)

    # -- metric_hooks.Recorder: told at connect, close, checkout and anomaly

    def connected(self, wrapper: Any, record: records.ConnectionRecord, seconds: float) -> None:
        try:
            self.learn(wrapper)
            attributes = self.attributes_of(record.alias)
            if record.pooled:
                self.lent_at[record.conn_id] = record.opened_mono + seconds
                self.wait_time.record(seconds, attributes)
            else:
                self.create_time.record(seconds, attributes)
        except Exception as exc:
            events.internal_error("metrics", exc)

    def ended(self, record: records.ConnectionRecord) -> None:
        try:
            lent_at = self.lent_at.pop(record.conn_id, record.opened_mono)
            if record.fork_gen != process.fork_gen:
                return  # the parent's connection: its times are the parent's
            end = record.closed_mono or time.monotonic()
            attributes = self.attributes_of(record.alias)
            self.use_time.record(end - lent_at, attributes)
            if not record.pooled:
                self.age.record(end - record.opened_mono, attributes)
        except Exception as exc:
            events.internal_error("metrics", exc)

    def anomaly(self, event: Event, alias: str) -> None:
        try:
            attributes = self.anomaly_attributes.get((alias, event))
            if attributes is None:
                attributes = dict(self.attributes_of(alias))
                attributes[MetricAttribute.EVENT.value] = event.value
                self.anomaly_attributes[(alias, event)] = attributes
            self.anomalies.add(1, attributes)
        except Exception as exc:
            events.internal_error("metrics", exc)

    def timed_out(self, alias: str) -> None:
        try:
            self.timeouts.add(1, self.attributes_of(alias))
        except Exception as exc:
            events.internal_error("metrics", exc)

    # -- units of work: what "used" means for a connection Django keeps open itself

    def unit_started(self, **kwargs: Any) -> None:
        self.units[get_ident()] = time.monotonic()

    def unit_finished(self, **kwargs: Any) -> None:
        self.units.pop(get_ident(), None)

    def state_of(self, record: records.ConnectionRecord) -> Optional[str]:
        """Return ``used`` or ``idle`` for a connection open in this process; None for a waiting checkout.

        A pooled record is one checkout: used. Django's own connection is used
        from the first use (or the open) in a request or Celery task until the
        end of that unit of work, idle otherwise (between requests, or in a
        thread that runs none).
        """
        if record.pooled:
            return ConnectionState.USED if record.thread_ref is not None else None
        wrapper = record.wrapper_ref() if record.wrapper_ref is not None else None
        # Django's wrapper remembers the thread it belongs to (its validate_thread_sharing() reads it).
        started = self.units.get(wrapper._thread_ident) if wrapper is not None else None
        if started is not None and max(record.opened_mono, record.use_mono or 0.0) >= started:
            return ConnectionState.USED
        return ConnectionState.IDLE

    # -- read at collection time

    def observe_count(self, options: CallbackOptions) -> Iterable[Observation]:
        if metric_hooks.recorder is not self:
            return []
        counts = {(alias, state): 0 for alias in list(self.names) for state in ConnectionState}
        for record in records.registry.open_records():
            if record.state is not State.OPEN or record.fork_gen != process.fork_gen:
                continue  # ended meanwhile, or the parent's
            state = self.state_of(record)
            if state is not None:
                counts[(record.alias, state)] = counts.get((record.alias, state), 0) + 1
        for alias, stats in self.pool_stats():
            key = (alias, ConnectionState.IDLE)
            counts[key] = counts.get(key, 0) + stats.get("pool_available", 0)
        return [Observation(n, self.attributes_of(alias, state)) for (alias, state), n in counts.items()]

    def pool_stats(self) -> list[tuple[str, dict[str, int]]]:
        """Return each of this process's psycopg pools' counters (``get_stats()`` takes no lock)."""
        return [
            (alias, pool.get_stats()) for alias, pool in list((psycopg_pools.django_pools() or {}).items())
        ]

    def pool_stat(self, key: str) -> Any:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            if metric_hooks.recorder is not self:
                return []
            return [
                Observation(stats.get(key, 0), self.attributes_of(alias))
                for alias, stats in self.pool_stats()
            ]

        return observe

    def after_fork_in_child(self) -> None:
        """Forget the parent's threads and checkouts (called in the child's at-fork hook: no lock taken)."""
        self.units.clear()
        self.lent_at.clear()


# One recorder per meter provider: the SDK keeps the first instrument of a name, callbacks included.
_recorders: dict[Any, Recorder] = {}


def meter(meter_provider: Any = None) -> Meter:
    """Return conntrace's meter: from the global meter provider unless one is given."""
    try:
        version = metadata.version("conntrace")
    except metadata.PackageNotFoundError:
        version = ""
    return otel.get_meter("conntrace", version, meter_provider=meter_provider, schema_url=SEMCONV_SCHEMA)


def install(meter_provider: Any = None) -> Recorder:
    """Record into ``meter_provider``; by default the global one, which the application may set later."""
    recorder = _recorders.get(meter_provider)
    if recorder is None:
        recorder = _recorders[meter_provider] = Recorder(meter(meter_provider))
    previous = metric_hooks.recorder
    if previous is not None and previous is not recorder:
        uninstall()
    metric_hooks.recorder = recorder
    request_started.connect(recorder.unit_started, weak=False, dispatch_uid=UNITS_UID)
    request_finished.connect(recorder.unit_finished, weak=False, dispatch_uid=UNITS_UID)
    celery_signals = sys.modules.get("celery.signals")
    if celery_signals is not None:
        celery_signals.task_prerun.connect(recorder.unit_started, weak=False, dispatch_uid=UNITS_UID)
        celery_signals.task_postrun.connect(recorder.unit_finished, weak=False, dispatch_uid=UNITS_UID)
    forking.on_child_started(after_fork_in_child)
    return recorder


def uninstall() -> None:
    """Stop recording; the instruments stay with their meter and observe nothing."""
    metric_hooks.recorder = None
    request_started.disconnect(dispatch_uid=UNITS_UID)
    request_finished.disconnect(dispatch_uid=UNITS_UID)
    celery_signals = sys.modules.get("celery.signals")
    if celery_signals is not None:
        celery_signals.task_prerun.disconnect(dispatch_uid=UNITS_UID)
        celery_signals.task_postrun.disconnect(dispatch_uid=UNITS_UID)


def after_fork_in_child() -> None:
    recorder = metric_hooks.recorder
    if isinstance(recorder, Recorder):
        recorder.after_fork_in_child()
