"""``manage.py conntrace_preflight [MODULE[:ATTR]]``: the preflight check as a management command."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from conntrace import preflight


class Command(BaseCommand):
    help = (
        "Import a WSGI/ASGI application the way a preloading server does and list the database "
        "connections it leaves open (exit status 1 if any, 2 if it cannot be loaded). Without "
        "MODULE[:ATTR]: settings.WSGI_APPLICATION."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        preflight.add_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        status = preflight.run_options(options, stdout=self.stdout, stderr=self.stderr)
        if status:
            sys.exit(status)
