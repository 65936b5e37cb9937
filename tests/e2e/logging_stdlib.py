"""A project logging as the README's "Logging set-up" says, with structlog and the standard library.

Below the project's own settings is the README's first block, character for
character (``tests/test_logging_setup.py`` checks it). Its processor list repeats
``logging_django_structlog.py``'s on purpose: each README block is complete on its own.
"""

# The README's block, import included, comes after the project's own settings.
# ruff: noqa: E402

from tests.e2e.logging_base import *  # noqa: F403

INSTALLED_APPS = ["conntrace"]
MIDDLEWARE: list[str] = []

# --- README.md, "Logging set-up": structlog with the standard library ---
import structlog

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {
            "()": structlog.stdlib.ProcessorFormatter,
            "processors": [
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
            # Records of plain logging loggers get the same fields.
            "foreign_pre_chain": [
                structlog.contextvars.merge_contextvars,
                structlog.processors.TimeStamper(fmt="iso"),
                structlog.stdlib.add_logger_name,
                structlog.stdlib.add_log_level,
            ],
        },
    },
    "handlers": {
        "json_stdout": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stdout",
            "formatter": "json",
        },
    },
    "loggers": {
        "conntrace": {"handlers": ["json_stdout"], "level": "WARNING", "propagate": False},
        "myproject": {"handlers": ["json_stdout"], "level": "INFO", "propagate": False},  # yours
    },
}

structlog.configure(
    processors=[
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.filter_by_level,
        structlog.processors.TimeStamper(fmt="iso"),
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
    ],
    logger_factory=structlog.stdlib.LoggerFactory(),
    wrapper_class=structlog.stdlib.BoundLogger,
    cache_logger_on_first_use=True,
)
