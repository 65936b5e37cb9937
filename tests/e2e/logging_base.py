"""What the logging set-ups' projects share: the test PostgreSQL and the double-close view.

Each project (``logging_stdlib``, ``logging_django_structlog``) sets its own
``INSTALLED_APPS`` and ``MIDDLEWARE``, then holds the README's "Logging set-up"
block as written.
"""

from tests import pgserver
from tests.base_settings import *  # noqa: F403 (DEBUG, USE_TZ, ALLOWED_HOSTS, DEFAULT_AUTO_FIELD)

_pg_host, _pg_port = pgserver.ensure()

SECRET_KEY = "conntrace-logging-not-secret"
ROOT_URLCONF = "tests.e2e.double_close"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "conntrace",
        "USER": pgserver.APP_USER,
        "PASSWORD": pgserver.APP_PASSWORD,
        "HOST": _pg_host,
        "PORT": str(_pg_port),
        "CONN_MAX_AGE": 0,  # Django closes the connection at the end of each request
    }
}
