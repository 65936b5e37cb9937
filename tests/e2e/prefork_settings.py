"""The end-to-end project as the pre-forking server tests run it: persistent sessions, events by process.

The master and its workers (respawned ones too) append their events to the one
``CONNTRACE_E2E_LOG`` file; each line here also carries ``process``, the id of
the process that wrote it, so that a test reads who said what. The rest is
``tests/e2e/settings.py``.
"""

import os

import structlog

from tests.e2e.settings import *  # noqa: F403
from tests.e2e.settings import DATABASES

# Long enough that no worker drops the session it inherited for its age during a test.
DATABASES["default"]["CONN_MAX_AGE"] = 600

if os.environ.get("CONNTRACE_E2E_LOG"):
    structlog.configure(
        processors=[
            structlog.processors.CallsiteParameterAdder([structlog.processors.CallsiteParameter.PROCESS]),
            *structlog.get_config()["processors"],
        ]
    )
