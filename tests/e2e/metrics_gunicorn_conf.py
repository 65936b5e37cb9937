"""gunicorn hooks of the metrics test: each worker gets its own meter provider and Prometheus endpoint.

As an application would do it: the SDK is set up after the fork, in
``post_fork``, so that no exporter thread or meter state crosses it.
conntrace, installed in the master (``--preload``), records through the
global meter provider set here. ``CONNTRACE_E2E_METRICS_PORTS`` lists one
port per worker; ``worker.age`` (1, 2, ...) picks it.
"""

import os
from typing import Any


def post_fork(server: Any, worker: Any) -> None:
    from opentelemetry import metrics
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import start_http_server

    ports = [int(port) for port in os.environ["CONNTRACE_E2E_METRICS_PORTS"].split(",")]
    start_http_server(ports[(worker.age - 1) % len(ports)], addr="127.0.0.1")
    metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))
