"""The end-to-end project served by uvicorn (ASGI): async views, and every event at debug level.

``CONN_MAX_AGE = 0``: each request opens its own connection in asgiref's worker
thread and Django closes it at the request's end, so every request is seen
opening one. ``CONNTRACE_E2E_LOG`` receives the JSON lines as in ``settings.py``,
debug level included.
"""

import logging
import os

import structlog

from tests.e2e.clean_settings import *  # noqa: F403

ROOT_URLCONF = "tests.e2e.async_urls"
DATABASES["default"]["CONN_MAX_AGE"] = 0  # noqa: F405

if os.environ.get("CONNTRACE_E2E_LOG"):
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
