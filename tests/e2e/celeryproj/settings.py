"""Settings of the Celery project: the end-to-end project's, plus this app and Celery's settings.

Environment, besides ``tests/e2e/settings.py``'s:
``CONNTRACE_E2E_CELERY_DIR``: the directory of the broker's messages and of the results;
``CONNTRACE_E2E_LOG_DIR``: instead of ``CONNTRACE_E2E_LOG``, one event file per process, each
opened lazily at that process's first event (``tests/e2e/eventlog.py``).
"""

import os

from tests.e2e import celerybroker, eventlog
from tests.e2e.settings import *  # noqa: F403
from tests.e2e.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.e2e.celeryproj"]

_celery = celerybroker.config(os.environ.get("CONNTRACE_E2E_CELERY_DIR", "/tmp/conntrace-e2e-celery"))
CELERY_BROKER_URL = _celery["broker_url"]
CELERY_BROKER_TRANSPORT_OPTIONS = _celery["broker_transport_options"]
CELERY_RESULT_BACKEND = _celery["result_backend"]

if os.environ.get("CONNTRACE_E2E_LOG_DIR"):
    eventlog.configure(os.environ["CONNTRACE_E2E_LOG_DIR"])
