"""Django wiring: everything happens in ``ready()``, nothing at import."""

from __future__ import annotations

from django.apps import AppConfig
from django.core import checks
from django.core.signals import setting_changed


class ConntraceConfig(AppConfig):
    name = "conntrace"
    verbose_name = "conntrace"
    default_auto_field = "django.db.models.AutoField"

    def ready(self) -> None:
        from conntrace import checks as conntrace_checks
        from conntrace import conf, events, instrument, stacks

        checks.register(conntrace_checks.check_settings, "conntrace")
        setting_changed.connect(conf.reload, dispatch_uid="conntrace.conf.reload")
        conf.on_reload(stacks.reset_filter)
        conf.on_reload(events.reset)
        conf.on_reload(events.forget_secrets)
        conf.on_reload(report_settings_problems)
        conf.on_reload(_apply_enabled)
        # Also warns about mistakes in CONNTRACE. Runs again whenever a test suite re-populates
        # the app registry: install() is idempotent.
        instrument.install()


def report_settings_problems() -> None:
    """Warn about mistakes in ``CONNTRACE`` once per process (per distinct set of mistakes)."""
    from conntrace import checks, events

    checks.report_problems(events.emit, events.redact)


def _apply_enabled() -> None:
    from conntrace import conf, instrument, process, records

    if conf.get()["ENABLED"]:
        if not process.active:
            instrument.install()
        records.registry.resize(conf.get()["MAX_RECORDS"])  # install() alone skips it when active
    elif process.active:
        instrument.uninstall()
