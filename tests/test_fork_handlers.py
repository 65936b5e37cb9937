"""Who else makes a child's inherited connections safe: Celery's Django fixup, on a real billiard pool.

Celery's fixup closes inherited sockets in ``worker_process_init`` without
sending anything, so a billiard pool fork made while it is installed is no
problem: reported at info level, with ``handled_by``. Billiard alone is not
enough: without the fixup, a pool fork is as dangerous as any other.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import billiard
import pytest
from celery import Celery, signals
from celery.fixups.django import DjangoWorkerFixup
from django.db import connection

from conntrace import fork_handlers
from tests.conftest import named

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def celery_fixup() -> Iterator[DjangoWorkerFixup]:
    """Give Celery's Django fixup installed on a Celery app, as a Django project's worker has it."""
    fixup = DjangoWorkerFixup(Celery("conntrace-tests", set_as_current=False)).install()
    yield fixup
    signals.beat_embedded_init.disconnect(fixup.close_database)
    signals.task_prerun.disconnect(fixup.on_task_prerun)
    signals.task_postrun.disconnect(fixup.on_task_postrun)
    signals.worker_process_init.disconnect(fixup.on_worker_process_init)


def fork_a_pool_worker() -> int:
    """Start a one-process billiard pool (Celery's prefork pool is billiard's) and return its pid."""
    pool = billiard.Pool(1)
    try:
        return pool.apply(os.getpid)
    finally:
        pool.terminate()
        pool.join()


def open_a_connection() -> Any:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def test_the_fixup_is_recognised_once_installed(celery_fixup):
    assert fork_handlers.celery_fixup_installed()


def test_without_the_fixup_nothing_is_recognised():
    assert not fork_handlers.celery_fixup_installed()


def test_a_pool_fork_with_celerys_fixup_installed_is_info(celery_fixup, captured):
    open_a_connection()
    assert fork_a_pool_worker() != os.getpid()
    [at_fork] = named(captured, "connection_open_at_fork")
    assert at_fork["log_level"] == "info"
    assert at_fork["handled_by"] == "celery_django_fixup"
    assert "Celery" in at_fork["hint"]


def test_a_pool_fork_without_celerys_fixup_still_warns(captured):
    open_a_connection()
    assert fork_a_pool_worker() != os.getpid()
    [at_fork] = named(captured, "connection_open_at_fork")
    assert at_fork["log_level"] == "warning"
    assert "handled_by" not in at_fork
