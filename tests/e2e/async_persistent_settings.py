"""The uvicorn project (``async_settings``) with ``CONN_MAX_AGE`` from ``CONNTRACE_E2E_CONN_MAX_AGE``.

With a value other than 0, asgiref's executor threads keep their connections
after each request: what ``asgi_persistent_connections`` warns about. The
``live/`` view shows ``conntrace.live()``.
"""

import os

from tests.e2e.async_settings import *  # noqa: F403

ROOT_URLCONF = "tests.e2e.async_persistent_urls"
DATABASES["default"]["CONN_MAX_AGE"] = int(os.environ.get("CONNTRACE_E2E_CONN_MAX_AGE", "60"))  # noqa: F405
