"""The end-to-end project with conntrace's metrics on; the SDK: ``tests/e2e/metrics_gunicorn_conf.py``."""

from tests.e2e.settings import *  # noqa: F403

CONNTRACE = {**CONNTRACE, "METRICS": True}  # noqa: F405
ROOT_URLCONF = "tests.e2e.pool_urls"  # /echo/ and /hold/<seconds>/, a request that keeps its connection
