"""WSGI entry point of the clean variant of the end-to-end project."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.e2e.clean_settings")

application = get_wsgi_application()
