"""The end-to-end project behind a psycopg pool, as the threaded-worker tests run it: every event, at debug.

Environment, besides ``tests/e2e/settings.py``'s: ``CONNTRACE_E2E_POOL_MIN`` /
``CONNTRACE_E2E_POOL_MAX`` / ``CONNTRACE_E2E_POOL_TIMEOUT``: the pool's sizes and
checkout timeout (s). Each event line carries ``process``, the id of the
process that wrote it.
"""

import logging
import os

import structlog

from tests.e2e.settings import *  # noqa: F403
from tests.e2e.settings import DATABASES

ROOT_URLCONF = "tests.e2e.pool_urls"
DATABASES["default"]["CONN_MAX_AGE"] = 0  # required with a pool: "closing" returns the connection
DATABASES["default"]["OPTIONS"] = {
    "pool": {
        "min_size": int(os.environ.get("CONNTRACE_E2E_POOL_MIN", "1")),
        "max_size": int(os.environ.get("CONNTRACE_E2E_POOL_MAX", "2")),
        "timeout": float(os.environ.get("CONNTRACE_E2E_POOL_TIMEOUT", "1")),
    }
}

if os.environ.get("CONNTRACE_E2E_LOG"):
    structlog.configure(
        processors=[
            structlog.processors.CallsiteParameterAdder([structlog.processors.CallsiteParameter.PROCESS]),
            *structlog.get_config()["processors"],
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
    )
