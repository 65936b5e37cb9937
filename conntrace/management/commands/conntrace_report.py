"""``manage.py conntrace_report FILE_OR_DIR...``: the log report as a management command."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from conntrace.report import cli


class Command(BaseCommand):
    help = cli.DESCRIPTION
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        cli.add_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        status = cli.run(
            options["paths"], options["since"], options["until"], options["html"], options["json"],
            stdout=self.stdout, stderr=self.stderr,
        )  # fmt: skip
        if status:
            sys.exit(status)
