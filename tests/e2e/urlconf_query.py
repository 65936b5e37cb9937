"""A URLconf that reads the database when it is imported (the classic "setting in urls.py").

Django imports the URLconf when it first resolves a URL: at the first request,
in the worker, unless code resolves one at import (``tests/e2e/reverse_wsgi.py``).
"""

from tests.e2e.shop.models import Setting
from tests.e2e.urls import urlpatterns

SITE_NAME = Setting.objects.get(key="site_name").value  # import-time query in urls.py

__all__ = ["SITE_NAME", "urlpatterns"]
