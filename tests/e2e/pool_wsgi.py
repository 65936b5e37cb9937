"""WSGI entry point of the pooled variant: it closes its connections, but a pool keeps their sockets."""

import os

from django.core.wsgi import get_wsgi_application
from django.db import connections

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.e2e.pool_settings")

application = get_wsgi_application()

# Returns the import-time connection to the pool: its socket stays open there, and crosses fork().
connections.close_all()
