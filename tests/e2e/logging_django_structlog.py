"""A project logging as the README's "Logging set-up" says, with django-structlog.

Below the project's own settings is the README's second block, character for
character (``tests/test_logging_setup.py`` checks it):
django-structlog's documented settings with conntrace's two additions.
"""

# The README's block, import included, comes after the project's own settings.
# ruff: noqa: E402

from tests.e2e.logging_base import *  # noqa: F403

INSTALLED_APPS = ["conntrace"]
MIDDLEWARE: list[str] = []

# --- README.md, "Logging set-up": django-structlog ---
import structlog

INSTALLED_APPS += ["django_structlog"]
MIDDLEWARE += ["django_structlog.middlewares.RequestMiddleware"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json_formatter": {
            "()": structlog.stdlib.ProcessorFormatter,
            "processor": structlog.processors.JSONRenderer(),
        },
    },
    "handlers": {
        "json_console": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stdout",
            "formatter": "json_formatter",
        },
    },
    "loggers": {
        "django_structlog": {"handlers": ["json_console"], "level": "INFO"},
        "myproject": {"handlers": ["json_console"], "level": "INFO"},  # yours
        "conntrace": {"handlers": ["json_console"], "level": "WARNING"},  # added for conntrace
    },
}

structlog.configure(
    processors=[
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.filter_by_level,
        structlog.processors.TimeStamper(fmt="iso"),
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        structlog.processors.UnicodeDecoder(),
        structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
    ],
    logger_factory=structlog.stdlib.LoggerFactory(),
    cache_logger_on_first_use=True,
)
