"""What the metrics recorder adds per connect + close: ``python -m benchmarks.metrics_ab [--no-sdk]``.

One process, conntrace installed with debug events dropped by level, SQLite
in a temporary file (a real connect and close, and little else, so that the
difference shows). Samples alternate recording off (``metrics.uninstall()``)
and on (``metrics.install()``), pair by pair; the median of the per-pair
differences in process CPU time is the recorder's cost. With the SDK: a
``MeterProvider`` with an ``InMemoryMetricReader`` (collected never, as a
60 s export interval nearly is); ``--no-sdk``: the API's no-op meter.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time

PAIRS = 25
CYCLES = 2000


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.metrics_ab")
    parser.add_argument("--no-sdk", action="store_true", help="no meter provider: the API's no-op meter")
    args = parser.parse_args()

    import django
    import structlog
    from django.conf import settings

    path = os.path.join(tempfile.mkdtemp(), "ab.sqlite3")
    databases = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": path}}
    settings.configure(INSTALLED_APPS=["conntrace"], DATABASES=databases)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    django.setup()
    from django.db import connection
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from conntrace import metrics

    provider = None if args.no_sdk else MeterProvider(metric_readers=[InMemoryMetricReader()])

    def sample() -> float:
        start = time.process_time()
        for _ in range(CYCLES):
            connection.ensure_connection()
            connection.close()
        return (time.process_time() - start) / CYCLES * 1e6

    deltas = []
    for _ in range(PAIRS):
        metrics.uninstall()
        off = sample()
        metrics.install(provider)
        deltas.append(sample() - off)
    metrics.uninstall()
    spread = f"median of {PAIRS} pairs, {min(deltas):.1f} to {max(deltas):.1f}"
    print(
        f"{'no SDK' if args.no_sdk else 'SDK'}: off {sample():.1f} µs per connect+close; "
        f"metrics on +{statistics.median(deltas):.1f} µs ({spread})"
    )


if __name__ == "__main__":
    main()
