"""ASGI entry point of the demo (the Connections panel works under ASGI too)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demosite.settings")

application = get_asgi_application()
