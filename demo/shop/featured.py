"""The classic bug, on unless ``DEMO_IMPORT_TIME_QUERY=0``: a query at import time.

``SITE_NAME`` is read from the database once, when this module is first imported
(the shop app's ``ready()`` imports it, while Django starts). The query opens a
connection in whatever process and thread imports the module, and nothing
closes it. Under ``gunicorn --preload`` that is the master, just before it
forks: every worker inherits the same connection (see ``run-gunicorn.sh``).
"""

from __future__ import annotations

import os

from django.db import DatabaseError

from shop.models import Setting

ENABLED = os.environ.get("DEMO_IMPORT_TIME_QUERY", "1") != "0"
DEFAULT_NAME = "conntrace demo shop"


def _site_name() -> str:
    try:
        # The import-time query:
        value = Setting.objects.filter(key="site_name").values_list("value", flat=True).first()
    except DatabaseError:
        return DEFAULT_NAME  # no table yet: `migrate` imports this module too, before creating it
    return value or DEFAULT_NAME


SITE_NAME = _site_name() if ENABLED else DEFAULT_NAME
