"""ASGI entry point of the end-to-end project, as uvicorn loads it (async views: ``async_settings``)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.e2e.async_settings")

application = get_asgi_application()
