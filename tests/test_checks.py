"""System checks for the CONNTRACE setting, and the warning that says the same at run time.

Every mistake is also one ``conntrace_settings_invalid`` warning when conntrace
is installed (gunicorn, uWSGI and Celery run no system checks); each input's
exact words are in ``tests/test_bad_input.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.apps import apps
from django.core.management import call_command
from django.core.management.base import SystemCheckError

import conntrace
from conntrace import checks
from conntrace.apps import report_settings_problems
from conntrace.checks import check_settings
from tests import pgserver
from tests.conftest import named


def ids(settings_value, settings) -> list[str]:
    settings.CONNTRACE = settings_value
    return [error.id for error in check_settings()]


def test_defaults_pass(settings):
    del settings.CONNTRACE
    assert check_settings() == []


def test_valid_settings_pass(settings):
    assert ids({"STACK_DEPTH": 10, "FORK_POLICY": "warn", "HIDE_MODULES": ["myproject.db"]}, settings) == []


def test_not_a_dict_is_e001(settings):
    assert ids(["FORK_POLICY"], settings) == ["conntrace.E001"]


def test_unknown_key_is_e002_and_names_the_known_keys(settings):
    settings.CONNTRACE = {"FORK_POLICIES": "reset"}
    [error] = check_settings()
    assert error.id == "conntrace.E002"
    assert "'FORK_POLICIES'" in error.msg
    assert "FORK_POLICY" in error.hint


@pytest.mark.parametrize(
    ("key", "value", "error_id"),
    [
        ("ENABLED", "yes", "conntrace.E003"),
        ("STACK_DEPTH", 0, "conntrace.E004"),
        ("STACK_DEPTH", True, "conntrace.E004"),
        ("HIDE_MODULES", "myproject", "conntrace.E005"),
        ("LOGGER_NAME", "", "conntrace.E006"),
        ("DOWNGRADE_CLOSE_ERRORS", 1, "conntrace.E007"),
        ("MAX_RECORDS", -1, "conntrace.E008"),
        ("FORK_POLICY", "heal", "conntrace.E009"),
        ("SOCKET_CHECK_AFTER_S", -0.5, "conntrace.E010"),
    ],
)
def test_each_bad_value_has_its_own_id_and_a_hint_that_says_what_to_write(settings, key, value, error_id):
    settings.CONNTRACE = {key: value}
    [error] = check_settings()
    assert error.id == error_id
    assert key in error.msg
    assert error.hint.startswith("Write ")


def test_bad_values_fall_back_to_defaults_at_runtime(settings):
    from conntrace import conf

    settings.CONNTRACE = {"STACK_DEPTH": "deep", "FORK_POLICY": "heal"}
    assert conf.get()["STACK_DEPTH"] == conf.DEFAULTS["STACK_DEPTH"]
    assert conf.get()["FORK_POLICY"] == "reset"


def test_manage_py_check_reports_the_error(settings):
    settings.CONNTRACE = {"FORK_POLICY": "heal"}
    with pytest.raises(SystemCheckError, match=r"conntrace.E009"):
        call_command("check")


# --------------------------------------------------------------------------- the same words at run time


def settings_warnings(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the run-time warnings about the settings among the captured events."""
    return named(logs, "conntrace_settings_invalid")


def test_each_distinct_set_of_mistakes_is_reported_once_per_process(settings, captured):
    checks.forget_reported()
    settings.CONNTRACE = {"fork_policy": "warn"}  # setting_changed: conntrace re-reads and reports
    report_settings_problems()  # as at the next install: the same mistake, not said again
    assert [w["key"] for w in settings_warnings(captured)] == ["fork_policy"]

    settings.CONNTRACE = {"FORK_POLICY": "warn"}  # fixed: nothing to say
    settings.CONNTRACE = {"fork_policy": "warn"}  # the same mistake again: already said in this process
    assert len(settings_warnings(captured)) == 1

    settings.CONNTRACE = {"fork_policy": "warn", "STACK_DEPTH": 0}  # a new set: all of it is said
    assert [w["key"] for w in settings_warnings(captured)] == ["fork_policy", "fork_policy", "STACK_DEPTH"]


def test_ready_warns_as_a_server_starts(settings, captured):
    """``AppConfig.ready()`` is where gunicorn, uWSGI and Celery meet conntrace: they run no checks."""
    settings.CONNTRACE = {"MAX_RECORDS": "500"}
    checks.forget_reported()  # as in a fresh process
    captured.clear()
    apps.get_app_config("conntrace").ready()
    [warning] = settings_warnings(captured)
    assert (warning["check_id"], warning["given"], warning["used"]) == ("conntrace.E008", "'500'", "500")
    assert conntrace.is_installed()


def test_every_mistake_at_once_is_one_warning_each_in_the_words_of_its_check(settings, captured):
    checks.forget_reported()
    settings.CONNTRACE = {"COLOUR": "red", 7: "seven", "ENABLED": "yes", "FORK_POLICY": "heal"}
    said = [(w["check_id"], w["problem"], w["hint"]) for w in settings_warnings(captured)]
    assert said == [(error.id, error.msg, error.hint) for error in check_settings()]
    assert [w["key"] for w in settings_warnings(captured)] == ["COLOUR", "7", "ENABLED", "FORK_POLICY"]
    assert all(w["log_level"] == "warning" for w in settings_warnings(captured))


def test_the_warning_never_shows_a_database_password(settings, captured):
    checks.forget_reported()
    dsn = f"postgresql://{pgserver.APP_USER}:{pgserver.APP_PASSWORD}@127.0.0.1/conntrace"
    settings.CONNTRACE = {
        "FORK_POLICY": dsn,
        "DSN": f"host=127.0.0.1 password={pgserver.APP_PASSWORD}",
        pgserver.APP_PASSWORD: True,
    }
    said = settings_warnings(captured)
    assert len(said) == 3
    assert pgserver.APP_PASSWORD not in json.dumps(said)
    assert said[-1]["given"] == f"'postgresql://{pgserver.APP_USER}:***@127.0.0.1/conntrace'"


class Unprintable:
    def __repr__(self) -> str:
        raise ValueError("no repr")


def test_a_value_that_is_long_or_cannot_be_printed_is_still_reported(settings, captured):
    checks.forget_reported()
    settings.CONNTRACE = {"HIDE_MODULES": [None] * 1000, "COLOUR": Unprintable()}
    colour, hide_modules = settings_warnings(captured)
    assert colour["given"] == "<unprintable Unprintable>"
    assert len(hide_modules["given"]) == checks.SHOWN_CHARS
    assert hide_modules["given"].startswith("[None, None, ") and hide_modules["given"].endswith("...")


def test_an_explicit_install_warns_once_about_mistakes_in_conntrace_settings():
    """A script that calls conntrace.install() itself, outside INSTALLED_APPS, is told too."""
    import subprocess
    import sys

    code = (
        "from django.conf import settings\n"
        "settings.configure(CONNTRACE={'fork_policy': 'warn'})\n"
        "import conntrace\n"
        "conntrace.install()\n"
        "conntrace.install()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = [line for line in (out.stdout + out.stderr).splitlines() if "conntrace_settings_invalid" in line]
    assert len(lines) == 1
    assert "key=fork_policy" in lines[0] and "did_you_mean=FORK_POLICY" in lines[0]
