"""A WSGI module that resolves a URL at import (a module-level ``reverse()``): urls.py is imported."""

import os

from django.core.wsgi import get_wsgi_application
from django.urls import reverse

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.e2e.urlconf_settings")

application = get_wsgi_application()

from tests.e2e.shop import views  # noqa: E402  (after Django is set up)

COUNT_URL = reverse(views.count)  # imports the URLconf, and its query, in the master
