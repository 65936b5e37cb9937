"""Bad input: every CONNTRACE key with a wrong type or value, unknown keys, hostile module names.

Each mistake is a system check error with its own id, a message that names the
value and a hint that says what to write, and the same words at run time: one
``conntrace_settings_invalid`` warning, for servers that run no system checks.
Nothing is raised at import, at start-up or from a request, and the bad value
falls back to its default.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.db import connection
from django.test import RequestFactory

import conntrace
from conntrace import checks, conf
from conntrace.checks import check_settings
from tests.conftest import named, unstamped

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# key, bad value, what the message says it is, what the hint says to write
BAD_VALUES: list[tuple[str, Any, str, str]] = [
    ("ENABLED", "yes", "a str", "True or False"),
    ("ENABLED", 1, "an int", "True or False"),
    ("ENABLED", None, "None", "True or False"),
    ("STACK_DEPTH", 0, "0", "an integer between 1 and 200"),
    ("STACK_DEPTH", 201, "201", "an integer between 1 and 200"),
    ("STACK_DEPTH", -5, "-5", "an integer between 1 and 200"),
    ("STACK_DEPTH", True, "a boolean", "an integer between 1 and 200"),
    ("STACK_DEPTH", 1.5, "a float", "an integer between 1 and 200"),
    ("STACK_DEPTH", "30", "a str", "an integer between 1 and 200"),
    ("HIDE_MODULES", "myproject.db", "a str", 'a list of module names, e.g. ["myproject.db"]'),
    ("HIDE_MODULES", 5, "an int", 'a list of module names, e.g. ["myproject.db"]'),
    ("HIDE_MODULES", {"myproject": True}, "a dict", 'a list of module names, e.g. ["myproject.db"]'),
    (
        "HIDE_MODULES",
        ["myproject", None],
        "a list holding something other than module names",
        'a list of module names, e.g. ["myproject.db"]',
    ),
    (
        "HIDE_MODULES",
        ["myproject", ""],
        "a list holding something other than module names",
        'a list of module names, e.g. ["myproject.db"]',
    ),
    ("LOGGER_NAME", "", "an empty string", 'a non-empty string, e.g. "conntrace"'),
    ("LOGGER_NAME", "   ", "an empty string", 'a non-empty string, e.g. "conntrace"'),
    ("LOGGER_NAME", 5, "an int", 'a non-empty string, e.g. "conntrace"'),
    ("LOGGER_NAME", None, "None", 'a non-empty string, e.g. "conntrace"'),
    ("DOWNGRADE_CLOSE_ERRORS", "false", "a str", "True or False"),
    ("DOWNGRADE_CLOSE_ERRORS", 0, "an int", "True or False"),
    ("MAX_RECORDS", -1, "-1", "an integer between 0 and 1000000"),
    ("MAX_RECORDS", 1_000_001, "1000001", "an integer between 0 and 1000000"),
    ("MAX_RECORDS", 2.5, "a float", "an integer between 0 and 1000000"),
    ("MAX_RECORDS", "500", "a str", "an integer between 0 and 1000000"),
    ("MAX_RECORDS", False, "a boolean", "an integer between 0 and 1000000"),
    ("FORK_POLICY", "heal", "'heal'", 'one of "reset", "warn", "raise"'),
    ("FORK_POLICY", "RESET", "'RESET'", 'one of "reset", "warn", "raise"'),
    ("FORK_POLICY", None, "None", 'one of "reset", "warn", "raise"'),
    ("FORK_POLICY", ["reset"], "a list", 'one of "reset", "warn", "raise"'),
    ("SOCKET_CHECK_AFTER_S", -1, "-1", "a number of seconds between 0 and 86400, e.g. 1.0"),
    ("SOCKET_CHECK_AFTER_S", float("nan"), "nan", "a number of seconds between 0 and 86400, e.g. 1.0"),
    ("SOCKET_CHECK_AFTER_S", "1", "a str", "a number of seconds between 0 and 86400, e.g. 1.0"),
    ("SOCKET_CHECK_AFTER_S", True, "a boolean", "a number of seconds between 0 and 86400, e.g. 1.0"),
    ("HELD_WARN_S", -1, "-1", "a number of seconds between 0 and 86400, e.g. 30.0"),
    ("HELD_WARN_S", "30", "a str", "a number of seconds between 0 and 86400, e.g. 30.0"),
    ("HELD_WARN_S", None, "None", "a number of seconds between 0 and 86400, e.g. 30.0"),
    ("IDLE_IN_TRANSACTION_WARN_S", 86401, "86401", "a number of seconds between 0 and 86400, e.g. 10.0"),
    ("IDLE_IN_TRANSACTION_WARN_S", True, "a boolean", "a number of seconds between 0 and 86400, e.g. 10.0"),
    ("WATCHDOG_INTERVAL_S", float("inf"), "inf", "a number of seconds between 0 and 86400, e.g. 5.0"),
    ("WATCHDOG_INTERVAL_S", [5], "a list", "a number of seconds between 0 and 86400, e.g. 5.0"),
    ("METRICS", "yes", "a str", "True or False"),
    ("METRICS", 1, "an int", "True or False"),
    ("LIVE_SIGNAL", "SIGKILL", "'SIGKILL'", 'None, or a signal name such as "SIGUSR2"'),
    ("LIVE_SIGNAL", "usr2", "'usr2'", 'None, or a signal name such as "SIGUSR2"'),
    ("LIVE_SIGNAL", 12, "an int", 'None, or a signal name such as "SIGUSR2"'),
]
IDS = {
    "ENABLED": "conntrace.E003",
    "STACK_DEPTH": "conntrace.E004",
    "HIDE_MODULES": "conntrace.E005",
    "LOGGER_NAME": "conntrace.E006",
    "DOWNGRADE_CLOSE_ERRORS": "conntrace.E007",
    "MAX_RECORDS": "conntrace.E008",
    "FORK_POLICY": "conntrace.E009",
    "SOCKET_CHECK_AFTER_S": "conntrace.E010",
    "HELD_WARN_S": "conntrace.E011",
    "IDLE_IN_TRANSACTION_WARN_S": "conntrace.E012",
    "WATCHDOG_INTERVAL_S": "conntrace.E013",
    "METRICS": "conntrace.E014",
    "LIVE_SIGNAL": "conntrace.E015",
}


def label(case: tuple[str, Any, str, str]) -> str:
    return f"{case[0]}={case[1]!r}"


def test_every_key_has_bad_values_in_the_table():
    assert {case[0] for case in BAD_VALUES} == set(conf.DEFAULTS) == set(IDS)


def settings_warnings(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the run-time warnings about the settings among the captured events, without the stamp."""
    return unstamped(named(logs, "conntrace_settings_invalid"))


def the_same_words(error: Any, **fields: Any) -> dict[str, Any]:
    """Return the run-time warning that says what the system check ``error`` says."""
    return {
        "event": "conntrace_settings_invalid",
        "log_level": "warning",
        "check_id": error.id,
        "problem": error.msg,
        "hint": error.hint,
        **fields,
    }


@pytest.mark.parametrize("case", BAD_VALUES, ids=label)
def test_each_bad_value_is_one_error_and_one_warning_that_say_what_to_write(settings, captured, case):
    key, value, what, write = case
    checks.forget_reported()
    settings.CONNTRACE = {key: value}  # Django's setting_changed: conntrace re-reads its settings
    [error] = check_settings()
    assert error.id == IDS[key]
    assert error.msg == f"CONNTRACE[{key!r}] is {what}."
    assert error.hint == f"Write {write}; the default is {conf.DEFAULTS[key]!r}."
    assert conf.get()[key] == (tuple(conf.DEFAULTS[key]) if key == "HIDE_MODULES" else conf.DEFAULTS[key])
    assert settings_warnings(captured) == [
        the_same_words(error, key=key, given=repr(value), used=repr(conf.DEFAULTS[key]))
    ]


@pytest.mark.parametrize("setting", conf.SETTINGS, ids=lambda s: s.key)
def test_every_key_written_with_a_valid_value_says_nothing(settings, captured, setting):
    checks.forget_reported()
    settings.CONNTRACE = {setting.key: setting.default}
    assert check_settings() == []
    assert settings_warnings(captured) == []


@pytest.mark.parametrize(
    ("value", "what"),
    [("yes", "a str"), (["FORK_POLICY"], "a list"), (5, "an int"), (("ENABLED", True), "a tuple")],
)
def test_a_setting_that_is_not_a_dict_is_e001(settings, captured, value, what):
    checks.forget_reported()
    settings.CONNTRACE = value
    [error] = check_settings()
    assert error.id == "conntrace.E001"
    assert error.msg == f"CONNTRACE must be a dict, not {what}."
    assert error.hint.startswith("Write CONNTRACE = {")
    assert conf.get() == {**conf.DEFAULTS, "HIDE_MODULES": ()}
    assert settings_warnings(captured) == [
        # Every setting in effect, cut as every value shown is (at checks.SHOWN_CHARS).
        the_same_words(error, key=None, given=repr(value), used=checks.shown(conf.get()))
    ]


@pytest.mark.parametrize(
    ("key", "guess"),
    [
        ("FORK_POLICIES", "FORK_POLICY"),
        ("fork_policy", "FORK_POLICY"),
        ("stack_depth", "STACK_DEPTH"),
        ("MAX_RECORD", "MAX_RECORDS"),
        ("COLOUR", None),
    ],
)
def test_an_unknown_key_is_e002_with_a_guess_and_the_known_keys(settings, captured, key, guess):
    checks.forget_reported()
    settings.CONNTRACE = {key: "warn"}
    [error] = check_settings()
    assert error.id == "conntrace.E002"
    assert error.msg == f"CONNTRACE has an unknown key {key!r}."
    assert error.hint.endswith("Remove it, or use one of: " + ", ".join(sorted(conf.DEFAULTS)) + ".")
    assert error.hint.startswith(f"Did you mean {guess!r}? ") == (guess is not None)
    # The value in effect is the guessed key's (its default here): what the user meant to change.
    used = repr(conf.DEFAULTS[guess]) if guess else None
    assert settings_warnings(captured) == [
        the_same_words(error, key=key, given="'warn'", used=used, did_you_mean=guess)
    ]


def test_every_mistake_at_once_is_reported_each_with_its_id(settings):
    settings.CONNTRACE = {"COLOUR": "red", 7: "seven", **{case[0]: case[1] for case in BAD_VALUES}}
    assert sorted(error.id for error in check_settings()) == sorted(
        ["conntrace.E002"] * 2 + list(IDS.values())
    )


def serve_one_request() -> tuple[int, bytes]:
    status: list[str] = []
    response = WSGIHandler()(RequestFactory().get("/count/").environ, lambda s, headers: status.append(s))
    body = b"".join(response)
    response.close()
    return int(status[0].split()[0]), body


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("case", BAD_VALUES, ids=label)
def test_a_request_with_a_bad_value_is_served_and_recorded(settings, captured, case):
    key, value, _, _ = case
    settings.CONNTRACE = {key: value}
    assert serve_one_request() == (200, b"0")
    assert conntrace.is_installed()  # a bad ENABLED falls back to True
    [record] = [r for r in conntrace.history() if r["alias"] == "default"]
    assert record["closes"][0]["outcome"] == "closed"
    assert [e for e in captured if e["event"] == "conntrace_internal_error"] == []


HOSTILE_MODULES = [
    "tests_conntrace_raises_at_import.sub",  # finding it imports a parent package that raises
    "..relative",
    "os.path.not_a_package",
    "a..b",
    "json.",
    "does.not.exist",
]


@pytest.mark.django_db(transaction=True)
def test_hide_modules_names_that_break_the_import_system_pass_the_check_and_hide_nothing(
    settings, tmp_path, monkeypatch
):
    package = tmp_path / "tests_conntrace_raises_at_import"
    package.mkdir()
    (package / "__init__.py").write_text('raise RuntimeError("raised at import")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    settings.CONNTRACE = {"HIDE_MODULES": HOSTILE_MODULES}
    assert check_settings() == []  # well-formed names: not the check's business whether they import
    assert serve_one_request() == (200, b"0")
    connection.close()
    with connection.cursor() as cursor:  # the opening line
        cursor.execute("SELECT 1")
    [record] = [r for r in conntrace.live() if r["alias"] == "default"]
    assert record["opened_in"].startswith("tests/test_bad_input.py:")
    assert "tests_conntrace_raises_at_import" not in sys.modules


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("max_records", [3, 0])
def test_max_records_applies_when_the_setting_changes(settings, max_records):
    settings.CONNTRACE = {"MAX_RECORDS": max_records}
    for _ in range(5):
        connection.close()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    connection.close()
    assert len(conntrace.history()) == max_records
    assert [r for r in conntrace.live() if r["alias"] == "default"] == []


BAD_SETTINGS = """
from tests.settings import *  # noqa: F403

DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": %r}}
CONNTRACE = %r
"""

START_AND_QUERY = textwrap.dedent(
    """
    import json
    import django
    django.setup()  # runs conntrace's ready(): install with bad settings
    from django.db import connection
    import conntrace
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    connection.close()
    print(json.dumps({"installed": conntrace.is_installed(), "history": len(conntrace.history())}))
    """
)


def run_with_settings(tmp_path: Any, value: Any, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "bad_settings.py").write_text(BAD_SETTINGS % (str(tmp_path / "db.sqlite3"), value))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), ROOT]),
        "DJANGO_SETTINGS_MODULE": "bad_settings",
    }
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )


ALL_MISTAKES = {"COLOUR": "red", **{case[0]: case[1] for case in BAD_VALUES}}


@pytest.mark.parametrize(
    ("value", "mistakes"),
    [(ALL_MISTAKES, len(ALL_MISTAKES)), ("not a dict", 1)],
    ids=["every_key_wrong", "not_a_dict"],
)
def test_a_fresh_process_starts_and_queries_with_bad_settings(tmp_path, value, mistakes):
    """Nothing is raised at import or start-up: the process runs its queries and is traced."""
    run = run_with_settings(tmp_path, value, "-c", START_AND_QUERY)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    *said, result = run.stdout.splitlines()
    assert json.loads(result) == {"installed": True, "history": 1}
    assert len(said) == mistakes  # one warning per mistake, printed by structlog's default configuration
    assert all("[warning  ] conntrace_settings_invalid" in line for line in said)


SETUP_ONLY = "import django; django.setup()"  # what gunicorn, uWSGI and Celery do: no system checks


def readme_example() -> str:
    """Return the warning the README's "Settings" section shows, as structlog prints it."""
    text = (Path(ROOT) / "README.md").read_text()
    section = text[text.index("## Settings") :]
    return re.search(r"^\[warning  \] conntrace_settings_invalid .*$", section, re.MULTILINE).group(0)


def test_a_process_that_runs_no_system_checks_is_warned_of_a_mistaken_key(tmp_path):
    run = run_with_settings(tmp_path, {"fork_policy": "warn"}, "-c", SETUP_ONLY)
    assert (run.returncode, run.stderr) == (0, "")
    [line] = run.stdout.splitlines()  # as structlog prints it when the project never configured it
    assert "check_id=conntrace.E002" in line and "did_you_mean=FORK_POLICY" in line
    # After the time stamp, word for word, but for this machine's name and the process id.
    line = re.sub(r"pid=\d+", "pid=4242", re.sub(r"host=\S+", "host=web-1", line))
    assert line.endswith(readme_example())


def test_a_process_with_valid_settings_starts_in_silence(tmp_path):
    run = run_with_settings(tmp_path, {"FORK_POLICY": "warn", "STACK_DEPTH": 10}, "-c", SETUP_ONLY)
    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")


def test_manage_py_check_lists_every_mistake_without_a_traceback(tmp_path):
    run = run_with_settings(tmp_path, ALL_MISTAKES, "-m", "django", "check")
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    for error_id in ["conntrace.E002", *IDS.values()]:
        assert f"?: ({error_id}) CONNTRACE" in run.stderr
    assert "HINT: Write True or False; the default is True." in run.stderr
    assert "HINT: Did you mean" not in run.stderr  # COLOUR is nothing like a known key


# --------------------------------------------------------------------------- preflight given bad targets

BAD_TARGET_MODULES = {
    "raises_at_import.py": 'raise RuntimeError("the cache server is down\\nsecond line of detail")\n',
    "imports_a_missing_module.py": "import no_such_dependency_xyz  # noqa: F401\n",
    "exits_at_import.py": "import sys\nsys.exit(3)\n",
    "syntax_error.py": "def broken(:\n",
    "unprintable_error.py": (
        "class Unprintable(Exception):\n"
        "    def __str__(self):\n"
        '        raise ValueError("no message for you")\n'
        "raise Unprintable()\n"
    ),
    "not_callable.py": "application = 42\nSETTINGS = {'a': 1}\n",
    "settings_not_configured.py": "from django.conf import settings\nsettings.DATABASES\n",
}


@pytest.fixture
def bad_targets(tmp_path: Any) -> Any:
    """Give a directory of application modules that cannot be loaded, each in its own way."""
    for name, source in BAD_TARGET_MODULES.items():
        (tmp_path / name).write_text(source)
    return tmp_path


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("no_such_module_xyz", "no module named 'no_such_module_xyz' (run this from the directory"),
        ("no_such_package_xyz.wsgi:application", "no module named 'no_such_package_xyz.wsgi'"),
        (
            "raises_at_import",
            "importing 'raises_at_import' raised RuntimeError: the cache server is down "
            "(at raises_at_import.py:1)",
        ),
        (
            "imports_a_missing_module",
            "importing 'imports_a_missing_module' raised ModuleNotFoundError: "
            "No module named 'no_such_dependency_xyz' (at imports_a_missing_module.py:1)",
        ),
        ("exits_at_import", "importing 'exits_at_import' raised SystemExit: 3 (at exits_at_import.py:2)"),
        ("syntax_error", "importing 'syntax_error' raised SyntaxError: "),
        ("unprintable_error", "importing 'unprintable_error' raised Unprintable"),
        ("not_callable", "not_callable:application is an int, not a WSGI/ASGI application (not callable)"),
        (
            "not_callable:SETTINGS",
            "not_callable:SETTINGS is a dict, not a WSGI/ASGI application (not callable)",
        ),
        ("not_callable:application.wsgi", "module 'not_callable' has no attribute 'application.wsgi'"),
        ("not_callable:missing", "module 'not_callable' has no attribute 'missing'"),
        ("settings_not_configured", "importing 'settings_not_configured' raised ImproperlyConfigured: "),
        ("", "'' is not MODULE[:ATTR]"),
        (":application", "':application' is not MODULE[:ATTR]"),
        ("not_callable:", "'not_callable:' is not MODULE[:ATTR]"),
    ],
)
def test_preflight_given_a_bad_target_exits_2_with_one_line(bad_targets, target, reason):
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")}
    env["PYTHONPATH"] = ROOT  # conntrace itself; the targets are found from the working directory
    command = [sys.executable, "-m", "conntrace", "preflight", target]
    run = subprocess.run(command, cwd=bad_targets, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stdout == ""
    assert run.stderr.count("\n") == 1, run.stderr  # one line, no traceback
    assert run.stderr.startswith(f"conntrace preflight: {reason}")
