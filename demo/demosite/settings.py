"""Settings of the conntrace demo: SQLite by default, PostgreSQL when ``DATABASE_URL`` is set.

Environment variables (all optional):

* ``DATABASE_URL``: ``postgres://user:password@host:port/name`` to use PostgreSQL;
* ``DEMO_SQLITE_PATH``: where the SQLite database lives (default ``demo/db.sqlite3``);
* ``DEMO_IMPORT_TIME_QUERY=0``: switch off the classic bug, a query at import time (``shop/featured.py``);
* ``DEMO_TOOLBAR_STORE``: ``memory`` (default, one process) or ``db`` (shared by several worker processes);
* ``DEMO_FORK_POLICY``: conntrace's ``FORK_POLICY`` (``reset``, ``warn`` or ``raise``);
* ``DEMO_LOG_LEVEL`` (``debug``, ``info``, ``warning``) and ``DEMO_LOG_FORMAT`` (``console`` or ``json``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import structlog

from demosite import dburl

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "conntrace-demo-not-a-secret"
DEBUG = True
# Loopback only: the demo and its toolbar are for the person at this machine.
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
INTERNAL_IPS = ["127.0.0.1", "::1"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.staticfiles",
    "debug_toolbar",
    "conntrace",
    "shop",
]
MIDDLEWARE = ["debug_toolbar.middleware.DebugToolbarMiddleware"]
ROOT_URLCONF = "demosite.urls"
WSGI_APPLICATION = "demosite.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]
STATIC_URL = "static/"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

if os.environ.get("DATABASE_URL"):
    _db = dburl.parse(os.environ["DATABASE_URL"])
else:
    _db = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DEMO_SQLITE_PATH") or str(BASE_DIR / "db.sqlite3"),
        # Several gunicorn workers write the toolbar's history: take the write lock up front, and let
        # readers go on while one writes.
        "OPTIONS": {"transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"},
    }
DATABASES = {
    # Closed at the end of every request (Django's default).
    "default": {**_db, "CONN_MAX_AGE": 0},
    # The same database through a persistent connection, reused across requests.
    "persistent": {**_db, "CONN_MAX_AGE": 600},
}

CONNTRACE = {"FORK_POLICY": os.environ.get("DEMO_FORK_POLICY", "reset")}

DEBUG_TOOLBAR_PANELS = [
    "debug_toolbar.panels.history.HistoryPanel",
    "debug_toolbar.panels.timer.TimerPanel",
    "conntrace.panels.ConnectionsPanel",
    "debug_toolbar.panels.sql.SQLPanel",
    "debug_toolbar.panels.request.RequestPanel",
    "debug_toolbar.panels.headers.HeadersPanel",
    "debug_toolbar.panels.settings.SettingsPanel",
    "debug_toolbar.panels.versions.VersionsPanel",
]
_STORES = {"memory": "debug_toolbar.store.MemoryStore", "db": "debug_toolbar.store.DatabaseStore"}
DEBUG_TOOLBAR_CONFIG = {
    "TOOLBAR_STORE_CLASS": _STORES[os.environ.get("DEMO_TOOLBAR_STORE", "memory")],
    # The demo is served by the tests too: it is no test settings module.
    "IS_RUNNING_TESTS": False,
}

# The demo is an application, so it configures structlog (conntrace itself never does).
_level = logging.getLevelNamesMapping()[os.environ.get("DEMO_LOG_LEVEL", "info").upper()]
_renderer = (
    structlog.processors.JSONRenderer()
    if os.environ.get("DEMO_LOG_FORMAT", "console") == "json"
    else structlog.dev.ConsoleRenderer(colors=False)
)
structlog.configure(
    processors=[
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso"),
        _renderer,
    ],
    wrapper_class=structlog.make_filtering_bound_logger(_level),
    # One write() per event: the workers of run-gunicorn.sh share one stdout.
    logger_factory=structlog.WriteLoggerFactory(),
    cache_logger_on_first_use=False,
)
