"""Django settings for the benchmark workers: psycopg2 on a unix socket, trust auth.

Read from the environment the orchestrator sets (``benchmarks/run.py``):
``CONNTRACE_TEST_PGHOST`` / ``CONNTRACE_TEST_PGPORT`` (the server),
``CONNTRACE_BENCH_DB`` (a database of its own) and ``CONNTRACE_BENCH_CONTENDER``.
The superuser connects over the socket with ``trust`` authentication, so a
connect costs what libpq and Django cost, not a SCRAM key derivation.
"""

import os
import tempfile

from tests.base_settings import *  # noqa: F403 (DEBUG, USE_TZ, ALLOWED_HOSTS, DEFAULT_AUTO_FIELD)
from tests.base_settings import installed_apps, use_psycopg2

use_psycopg2()  # the driver OpenTelemetry's instrumentation targets

CONTENDER = os.environ.get("CONNTRACE_BENCH_CONTENDER", "baseline")
WITH_CONNTRACE = CONTENDER.startswith("conntrace") or CONTENDER == "inprocess"

SECRET_KEY = "conntrace-benchmarks-not-secret"
INSTALLED_APPS = installed_apps(with_conntrace=WITH_CONNTRACE)
# A modest production-like stack without sessions (no extra tables).
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "benchmarks.urls"
LOGGING_CONFIG = None
if CONTENDER == "conntrace-metrics":
    CONNTRACE = {"METRICS": True}

if CONTENDER in ("conntrace-panel", "toolbar"):
    # The toolbar shown on every request, results kept in memory: with conntrace's panel
    # alone, or with no panel at all (what the toolbar itself costs).
    INSTALLED_APPS += ["django.contrib.staticfiles", "debug_toolbar"]
    MIDDLEWARE.insert(0, "debug_toolbar.middleware.DebugToolbarMiddleware")
    STATIC_URL = "/static/"
    TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]
    DEBUG_TOOLBAR_PANELS = ["conntrace.panels.ConnectionsPanel"] if CONTENDER == "conntrace-panel" else []
    DEBUG_TOOLBAR_CONFIG = {
        "SHOW_TOOLBAR_CALLBACK": "benchmarks.contenders.show_toolbar",
        "IS_RUNNING_TESTS": False,
    }

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("CONNTRACE_BENCH_DB", "postgres"),
        "USER": "postgres",
        "HOST": os.environ.get("CONNTRACE_TEST_PGHOST", ""),
        "PORT": os.environ.get("CONNTRACE_TEST_PGPORT", ""),
        "CONN_MAX_AGE": 0,
    },
    "lite": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(tempfile.gettempdir(), f"conntrace-bench-{os.getpid()}.sqlite3"),
    },
}
