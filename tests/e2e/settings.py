"""Settings of the end-to-end project (see ``tests/e2e/__init__.py``).

Environment:
``CONNTRACE_E2E_DBHOST`` / ``CONNTRACE_E2E_DBPORT`` / ``CONNTRACE_E2E_DBNAME``: where the project's
database is (default: the test PostgreSQL, database ``conntrace_e2e``);
``CONNTRACE_E2E_INSTALLED``: ``0`` leaves conntrace out of ``INSTALLED_APPS``;
``CONNTRACE_E2E_FORK_POLICY``: conntrace's ``FORK_POLICY``;
``CONNTRACE_E2E_LIVE_SIGNAL``: conntrace's ``LIVE_SIGNAL`` (unset: None);
``CONNTRACE_E2E_LOG``: a file that receives structlog's events as JSON lines;
``CONNTRACE_E2E_LOG_DIR``: a directory that receives them as one file per process, debug level included
(what ``conntrace report`` reads).
"""

import logging
import os

import structlog

from tests import pgserver

_pg_host, _pg_port = pgserver.ensure()

SECRET_KEY = "conntrace-e2e-not-secret"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.e2e.urls"
WSGI_APPLICATION = "tests.e2e.wsgi.application"
MIDDLEWARE: list[str] = []
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

INSTALLED_APPS = [
    *(["conntrace"] if os.environ.get("CONNTRACE_E2E_INSTALLED", "1") == "1" else []),
    "tests.e2e.shop",
    "tests.e2e.branding",  # reads the site name from the database while Django starts
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("CONNTRACE_E2E_DBNAME", "conntrace_e2e"),
        "USER": pgserver.APP_USER,
        "PASSWORD": pgserver.APP_PASSWORD,
        "HOST": os.environ.get("CONNTRACE_E2E_DBHOST", _pg_host),
        "PORT": os.environ.get("CONNTRACE_E2E_DBPORT", str(_pg_port)),
        "CONN_MAX_AGE": 60,
        "TEST": {"NAME": "test_conntrace_e2e"},
    }
}

CONNTRACE = {
    "FORK_POLICY": os.environ.get("CONNTRACE_E2E_FORK_POLICY", "reset"),
    # A test may have the watchdog look often, to show that a healthy application never warns.
    "WATCHDOG_INTERVAL_S": float(os.environ.get("CONNTRACE_E2E_WATCHDOG_INTERVAL_S", "5")),
    "LIVE_SIGNAL": os.environ.get("CONNTRACE_E2E_LIVE_SIGNAL") or None,
}

# Django's request errors go to stderr (gunicorn's error log), where the end-to-end test counts them.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["stderr"], "level": "ERROR", "propagate": False}},
}

_log_path = os.environ.get("CONNTRACE_E2E_LOG")
if _log_path:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        # Line-buffered append: each event is one write, so forked workers' lines do not interleave.
        logger_factory=structlog.WriteLoggerFactory(file=open(_log_path, "a", buffering=1)),  # noqa: SIM115
        cache_logger_on_first_use=False,
    )

if os.environ.get("CONNTRACE_E2E_LOG_DIR"):
    from tests.e2e import eventlog

    eventlog.configure(os.environ["CONNTRACE_E2E_LOG_DIR"], logging.DEBUG)
