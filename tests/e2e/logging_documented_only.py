"""django-structlog's documented settings alone, without the README's two additions for conntrace.

What a project has before reading the README's "Logging set-up": no ``conntrace``
logger, so conntrace's warnings reach stderr through Python's last-resort
handler, as a dict repr.
"""

import logging

import structlog

from tests.e2e.logging_django_structlog import *  # noqa: F403
from tests.e2e.logging_django_structlog import LOGGING

LOGGING = {**LOGGING, "loggers": {k: v for k, v in LOGGING["loggers"].items() if k != "conntrace"}}
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.NOTSET))  # the default
