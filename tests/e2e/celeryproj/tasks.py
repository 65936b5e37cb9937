"""The project's task, and a worker start-up step that reads the database in the worker's parent.

Celery's Django fixup closes every connection when the worker starts
(``worker_init``); ``warm_site_name`` is connected after it, as a project's own
start-up receiver is, so the worker's parent holds a connection when it forks
the pool's processes, and again whenever it replaces one (``--max-tasks-per-child``).
"""

import os
from typing import Any

import structlog
from celery import shared_task
from celery.signals import worker_init
from django.db import connection, transaction

from tests.e2e.celeryproj.models import Answer
from tests.e2e.shop.models import Setting

SITE_NAME = ""
log = structlog.get_logger("celeryproj")


@worker_init.connect
def warm_site_name(**kwargs: Any) -> None:
    """Read a setting once per worker, in the worker's parent process."""
    global SITE_NAME
    SITE_NAME = Setting.objects.get(key="site_name").value  # still open when the pool forks


@shared_task
def write_and_read(token: str) -> dict[str, Any]:
    """Write ``token`` and read it back in one transaction: ``ok``, or what came back instead."""
    with transaction.atomic():
        row = Answer.objects.create(token=token)
        log.info("answer_written", answer_id=row.pk)
        with connection.cursor() as cursor:
            cursor.execute("SELECT token FROM celeryproj_answer WHERE id = %s", [row.pk])
            (read,) = cursor.fetchone()
    return {"answer": "ok" if read == token else f"wrong: {read!r}", "pid": os.getpid()}
