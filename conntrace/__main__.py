"""Command line: ``python -m conntrace preflight [MODULE[:ATTR]] [--json] [-c GUNICORN_CONFIG] ...``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the command; return the exit status."""
    from conntrace import preflight

    parser = argparse.ArgumentParser(
        prog="python -m conntrace", description="conntrace's command line tools."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser(
        "preflight",
        help="list the database connections an application leaves open at import (before a server forks)",
        description=(
            "Import a WSGI/ASGI application the way a preloading server (gunicorn --preload, uWSGI "
            "without lazy-apps) does, and list every database connection left open: each would be "
            "shared by every worker. Without MODULE[:ATTR]: settings.WSGI_APPLICATION "
            "(DJANGO_SETTINGS_MODULE must be set). Exit status: 0 none, 1 some, 2 the application could "
            "not be loaded."
        ),
    )
    preflight.add_arguments(check)
    args = parser.parse_args(argv)
    return preflight.run_options(vars(args))


if __name__ == "__main__":
    sys.exit(main())
