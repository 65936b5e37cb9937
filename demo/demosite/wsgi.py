"""WSGI entry point of the demo (``gunicorn demosite.wsgi``)."""

import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demosite.settings")

application = get_wsgi_application()

# Warm-up, as many projects do so that workers answer their first request fast: load the
# URLconf and the views now. Under ``gunicorn --preload`` this runs once, in the master, before
# it forks the workers, as get_wsgi_application() did (the shop app's ready() runs the demo's
# import-time query): any query a module runs at import time leaves a connection open that
# every worker inherits.
get_resolver().url_patterns  # noqa: B018
