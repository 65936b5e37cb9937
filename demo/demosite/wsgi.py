"""WSGI entry point of the demo (``gunicorn demosite.wsgi``)."""

import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demosite.settings")

application = get_wsgi_application()

# Warm-up, as many projects do so that workers answer their first request fast: load the
# URLconf and the views now. Under ``gunicorn --preload`` this runs once, in the master, before
# it forks the workers: any query a module runs at import time (DEMO_IMPORT_TIME_QUERY=1)
# leaves a connection open that every worker inherits.
get_resolver().url_patterns  # noqa: B018
