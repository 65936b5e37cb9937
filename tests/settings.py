"""Settings for conntrace's own test suite: two PostgreSQL aliases and one SQLite alias.

``DATABASES`` comes from the environment; without ``CONNTRACE_TEST_PGHOST`` a
throwaway PostgreSQL server is started (see ``tests/pgserver.py``).
``CONNTRACE_TEST_DRIVER=psycopg2`` hides psycopg 3 so that Django uses psycopg2.
"""

import os
import tempfile

from tests import pgserver
from tests.base_settings import *  # noqa: F403 (DEBUG, USE_TZ, ALLOWED_HOSTS, DEFAULT_AUTO_FIELD)
from tests.base_settings import installed_apps, use_psycopg2

DRIVER = os.environ.get("CONNTRACE_TEST_DRIVER", "psycopg")
if DRIVER == "psycopg2":
    use_psycopg2()

PG_HOST, PG_PORT = pgserver.ensure()

SECRET_KEY = "conntrace-tests-not-secret"
INSTALLED_APPS = installed_apps()
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "tests.app.urls"

_pg = {
    "ENGINE": "django.db.backends.postgresql",
    "NAME": "conntrace",
    "USER": pgserver.APP_USER,
    "PASSWORD": pgserver.APP_PASSWORD,
    "HOST": PG_HOST,
    "PORT": str(PG_PORT),
    "OPTIONS": {"password": pgserver.APP_PASSWORD},
}
DATABASES = {
    "default": _pg,
    "other": {**_pg, "NAME": "conntrace_other", "TEST": {"NAME": "test_conntrace_other"}},
    "lite": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(tempfile.gettempdir(), f"conntrace-test-{os.getpid()}.sqlite3"),
        "TEST": {"NAME": os.path.join(tempfile.gettempdir(), f"conntrace-test-{os.getpid()}-t.sqlite3")},
    },
}

CONNTRACE = {
    "FORK_POLICY": os.environ.get("CONNTRACE_TEST_FORK_POLICY", "reset"),
    # Poll the socket at every close, so that sessions a test ends on the server side are seen
    # however young; the default (1 s) is covered by its own test in test_instrument.py.
    "SOCKET_CHECK_AFTER_S": 0,
}
