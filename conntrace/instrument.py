"""Install and uninstall conntrace's wrappers on Django's ``BaseDatabaseWrapper``; observers.

``install()`` is idempotent and ``uninstall()`` exact: Django's own methods
come back. The wrappers themselves are in ``wrappers``.
"""

from __future__ import annotations

import sys

from django.conf import settings as django_settings
from django.core.signals import request_started

from conntrace import (
    asgi_check,
    checks,
    conf,
    direct_closes,
    events,
    forking,
    live_signal,
    losses,
    metric_hooks,
    observers,
    patching,
    process,
    records,
    transactions,
    watchdog,
    wrappers,
)
from conntrace.patching import MARK

__all__ = ["MARK", "add_observer", "install", "is_installed", "remove_observer", "uninstall"]

REQUEST_STARTED_UID = "conntrace.request_started"
TASK_PRERUN_UID = "conntrace.task_prerun"


def add_observer(observer: observers.Observer) -> None:
    """Call ``observer`` at every open, first use in a request and close attempt (a debugger's hook)."""
    observers.add(observer)


def remove_observer(observer: observers.Observer) -> None:
    """Stop calling ``observer``."""
    observers.remove(observer)


def install() -> bool:
    """Instrument Django's database wrappers; a second call is a no-op.

    Returns False when ``CONNTRACE["ENABLED"]`` is false. Mistakes in ``CONNTRACE`` are
    warned about here too: servers and workers (gunicorn, uWSGI, Celery) run no system checks.
    """
    if django_settings.configured:  # preflight installs before the project's settings exist
        checks.report_problems(events.emit, events.redact)
    if not conf.get()["ENABLED"]:
        return False
    for name, make in wrappers.WRAPPED.items():
        patching.wrap(name, make)
    losses.install()
    transactions.install()
    direct_closes.install()
    records.registry.resize(conf.get()["MAX_RECORDS"])
    request_started.connect(wrappers.on_unit_of_work_started, dispatch_uid=REQUEST_STARTED_UID)
    celery_signals = sys.modules.get("celery.signals")  # a Celery worker (or its app) is loaded
    if celery_signals is not None:
        celery_signals.task_prerun.connect(
            wrappers.on_unit_of_work_started, weak=False, dispatch_uid=TASK_PRERUN_UID
        )
    forking.register_hooks()
    forking.on_child_started(watchdog.after_fork_in_child)
    conf.on_reload(watchdog.restart)
    asgi_check.install()
    if conf.get()["METRICS"]:  # False without opentelemetry-api (conntrace.E016)
        from conntrace import metrics

        metrics.install()
    process.active = True
    forking.on_child_started(live_signal.after_fork_in_child)
    conf.on_reload(live_signal.apply)
    live_signal.apply()
    if not watchdog.running():
        watchdog.arm()  # started at the next connect
    return True


def uninstall() -> None:
    """Restore Django's original methods (records already made are kept)."""
    process.active = False
    for name in wrappers.WRAPPED:
        patching.unwrap(name)
    losses.uninstall()
    transactions.uninstall()
    direct_closes.uninstall()
    request_started.disconnect(dispatch_uid=REQUEST_STARTED_UID)
    celery_signals = sys.modules.get("celery.signals")
    if celery_signals is not None:
        celery_signals.task_prerun.disconnect(dispatch_uid=TASK_PRERUN_UID)
    asgi_check.uninstall()
    if metric_hooks.recorder is not None:
        from conntrace import metrics

        metrics.uninstall()
    watchdog.disarm()
    live_signal.apply()  # not active any more: removes the handler


def is_installed() -> bool:
    """Return True while conntrace is recording."""
    return process.active
