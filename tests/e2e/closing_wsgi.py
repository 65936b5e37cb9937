"""WSGI entry point that closes its import-time connection at the end, as fork-safety.md advises."""

import os

from django.core.wsgi import get_wsgi_application
from django.db import connections

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.e2e.settings")

application = get_wsgi_application()

connections.close_all()  # nothing is left open when a preloading server forks
