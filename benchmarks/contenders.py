"""The contenders: what each benchmark process installs, and how it proves it was active.

Each contender runs in a process of its own (``benchmarks/worker.py``).
``prepare()`` runs before ``django.setup()``, ``activity()`` returns a
counter of what the contender recorded (records, events, breadcrumbs,
spans) so the harness can check it really worked, and ``instrumented()``
says whether its instrumentation is in place (it must not be, for the baselines).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from typing import Any

# name -> one line for the report
DESCRIPTIONS = {
    "baseline": "Django alone",
    "do-nothing": "Django alone again, in another process: the cross-process noise floor",
    "conntrace-quiet": "conntrace, debug events dropped by level (make_filtering_bound_logger(INFO))",
    "conntrace-json": "conntrace, every event rendered as JSON to a null sink (level DEBUG)",
    "conntrace-metrics": "conntrace-quiet with METRICS on: the OpenTelemetry SDK, an in-memory reader",
    "toolbar": "django-debug-toolbar shown on every request, with no panel: the toolbar's own cost",
    "conntrace-panel": "conntrace and its debug-toolbar panel (the toolbar with only that panel)",
    "sentry": "sentry-sdk DjangoIntegration, traces_sample_rate=1.0, a transport that drops",
    "otel": "opentelemetry-instrumentation-psycopg2, SDK tracer, batch processor, counting exporter",
}
CONTENDERS = tuple(DESCRIPTIONS)
PEERS = {"sentry": "sentry_sdk", "otel": "opentelemetry.instrumentation.psycopg2"}
# What activity() counts, per contender (for the report).
UNITS = {
    "toolbar": "requests",
    "conntrace-quiet": "records",
    "conntrace-json": "events",
    "conntrace-metrics": "connect times recorded",
    "conntrace-panel": "records",
    "sentry": "breadcrumbs+spans",
    "otel": "spans",
}


def available(name: str) -> bool:
    """Return True if ``name`` can run here (peers and the panel are optional packages)."""
    if name in PEERS:
        return _importable(PEERS[name])
    if name == "toolbar":
        return _importable("debug_toolbar")
    if name == "conntrace-panel":
        return _importable("debug_toolbar") and os.path.exists(
            os.path.join(os.path.dirname(os.path.dirname(__file__)), "conntrace", "panels.py")
        )
    return True


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class _Counter:
    def __init__(self) -> None:
        self.n = 0


_count = _Counter()


def _counting_processor(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    _count.n += 1
    return event_dict


_null_sink: Any = None


def configure_structlog(level: int) -> None:
    """Configure structlog as a production JSON setup would, with a null sink.

    Events below ``level`` are dropped by the bound logger before any processor runs;
    loggers are cached on first use, as structlog recommends for production.
    """
    import structlog

    global _null_sink
    if _null_sink is None:
        _null_sink = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _counting_processor,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=_null_sink),
        cache_logger_on_first_use=True,
    )


def prepare(name: str) -> None:
    """Install ``name``'s instrumentation; called before ``django.setup()``."""
    if name in ("conntrace-quiet", "conntrace-panel", "inprocess"):
        configure_structlog(logging.INFO)
    elif name == "conntrace-metrics":
        configure_structlog(logging.INFO)
        _prepare_metrics()
    elif name == "conntrace-json":
        configure_structlog(logging.DEBUG)
    elif name == "sentry":
        _prepare_sentry()
    elif name == "otel":
        _prepare_otel()


def _prepare_sentry() -> None:
    import sentry_sdk
    from sentry_sdk.integrations.django import DjangoIntegration
    from sentry_sdk.transport import Transport

    class DroppingTransport(Transport):
        """Count envelopes and send nothing."""

        def capture_envelope(self, envelope: Any) -> None:
            pass

    def before_breadcrumb(crumb: dict[str, Any], hint: Any) -> dict[str, Any]:
        _count.n += 1
        return crumb

    def before_send_transaction(event: dict[str, Any], hint: Any) -> dict[str, Any]:
        _count.n += len(event.get("spans") or ())
        return event

    sentry_sdk.init(
        # Nothing listens there, and the transport never sends anyway.
        dsn="http://public@127.0.0.1:9/1",
        transport=DroppingTransport,
        integrations=[DjangoIntegration()],
        traces_sample_rate=1.0,
        before_breadcrumb=before_breadcrumb,
        before_send_transaction=before_send_transaction,
    )


_otel_provider: Any = None


def _prepare_otel() -> None:
    global _otel_provider
    from opentelemetry import trace
    from opentelemetry.instrumentation.psycopg2 import Psycopg2Instrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class CountingExporter(SpanExporter):
        """Count spans and send nothing."""

        def export(self, spans: Any) -> SpanExportResult:
            _count.n += len(spans)
            return SpanExportResult.SUCCESS

    _otel_provider = TracerProvider()
    _otel_provider.add_span_processor(BatchSpanProcessor(CountingExporter()))
    trace.set_tracer_provider(_otel_provider)
    Psycopg2Instrumentor().instrument(tracer_provider=_otel_provider)


_metric_reader: Any = None


def _prepare_metrics() -> None:
    """Set the global meter provider as an application would: the SDK, one reader (collected rarely)."""
    global _metric_reader
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    _metric_reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[_metric_reader]))


def _connect_times_recorded() -> int:
    """Return how many connects ``db.client.connection.create_time`` holds (collected outside the timing)."""
    data = _metric_reader.get_metrics_data()
    return sum(
        point.count
        for resource in (data.resource_metrics if data else ())
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "db.client.connection.create_time"
        for point in metric.data.data_points
    )


def activity(name: str) -> int:
    """Return how much ``name`` has recorded so far in this process."""
    if name in ("conntrace-quiet", "conntrace-panel", "inprocess"):
        return _last_conn_id()
    if name == "conntrace-metrics":
        return _connect_times_recorded()
    if name == "otel" and _otel_provider is not None:
        _otel_provider.force_flush()
    return _count.n


def show_toolbar(request: Any) -> bool:
    """Show the debug toolbar on every request, and count them (its activity)."""
    _count.n += 1
    return True


def events_rendered() -> int:
    """Return how many structlog events reached the JSON renderer."""
    return _count.n


def _last_conn_id() -> int:
    from django.db import connections

    from conntrace import lifecycle

    ids = [0]
    for conn in connections.all(initialized_only=True):
        record = lifecycle.record_of(conn)
        if record is not None:
            ids.append(record.conn_id)
    return max(ids)


def instrumented(name: str) -> bool:
    """Return True if ``name``'s instrumentation is in place (False expected for the baselines)."""
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.backends.utils import CursorWrapper

    if name == "conntrace-metrics":
        import conntrace
        from conntrace import metric_hooks

        return conntrace.is_installed() and metric_hooks.recorder is not None
    if name.startswith("conntrace") or name == "inprocess":
        import conntrace

        return conntrace.is_installed()
    if name == "sentry":
        import sentry_sdk

        return sentry_sdk.get_client().is_active() and hasattr(CursorWrapper.execute, "__wrapped__")
    if name == "otel":
        import psycopg2

        return hasattr(psycopg2.connect, "__wrapped__")
    if name == "toolbar":
        from django.conf import settings

        return "debug_toolbar" in settings.INSTALLED_APPS and "conntrace" not in sys.modules
    # The baselines: nothing may be installed.
    wrapped = BaseDatabaseWrapper.connect.__module__ != "django.db.backends.base.base"
    return wrapped or "conntrace" in sys.modules or "sentry_sdk" in sys.modules
