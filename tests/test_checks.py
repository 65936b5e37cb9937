"""System checks for the CONNTRACE setting."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from conntrace.checks import check_settings


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
