"""Command line: ``python -m conntrace preflight [MODULE[:ATTR]] [--json] [-c GUNICORN_CONFIG] ...``,
``python -m conntrace report FILE_OR_DIR... [--json] [--html OUT]``."""

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
    from conntrace.report import cli as report_cli

    report = commands.add_parser(
        "report", help="read conntrace's events back from logs: one answer for a deployment",
        description=report_cli.DESCRIPTION,
    )  # fmt: skip
    report_cli.add_arguments(report)
    args = parser.parse_args(argv)
    if args.command == "report":
        return report_cli.run_arguments(args)
    return preflight.run_options(vars(args))


if __name__ == "__main__":
    sys.exit(main())
