"""Settings shared by the two Django projects built on ``tests.app``'s models.

They are the test suite's (``tests/settings.py``) and the benchmark workers' (``benchmarks/settings.py``).
Each takes the constants with ``from tests.base_settings import *`` and the helpers by name, then
sets its own secret key, middleware, URLconf and databases. Nothing here needs pytest or a server.
"""

import sys

__all__ = ["ALLOWED_HOSTS", "DEBUG", "DEFAULT_AUTO_FIELD", "USE_TZ"]

DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["*"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"


def installed_apps(with_conntrace: bool = True) -> list[str]:
    """Return ``INSTALLED_APPS``: what ``tests.app`` needs, with or without conntrace."""
    return [
        "django.contrib.contenttypes",
        "django.contrib.auth",
        *(["conntrace"] if with_conntrace else []),
        "tests.app",
    ]


def use_psycopg2() -> None:
    """Make Django use psycopg2: Django 5.2 prefers psycopg 3 whenever it is importable, so hide it."""
    sys.modules["psycopg"] = None  # type: ignore[assignment]
    sys.modules["psycopg_pool"] = None  # type: ignore[assignment]
