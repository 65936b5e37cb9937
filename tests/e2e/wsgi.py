"""WSGI entry point of the end-to-end project, as gunicorn loads it."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.e2e.settings")

application = get_wsgi_application()
