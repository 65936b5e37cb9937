"""Import a WSGI/ASGI application the way a preloading server does; list the connections left open.

A connection still open once the application is imported is inherited by
every worker that gunicorn ``--preload`` or uWSGI (without ``lazy-apps``)
forks. Used by ``python -m conntrace preflight [MODULE[:ATTR]]`` and by the
``conntrace_preflight`` management command. Without a target it checks
``settings.WSGI_APPLICATION``. With a gunicorn config it also runs the hooks the
master runs before forking (``prefork``), so that the fix recommended here
counts; with uWSGI's ``lazy-apps`` there is nothing to check. Exit status: 0
clean, 1 open connections found, 2 the target could not be loaded (one line, no
traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import traceback
from typing import Any, TextIO

from conntrace import (
    conf,
    drivers,
    events,
    instrument,
    lifecycle,
    prefork,
    process,
    psycopg_pools,
    records,
    stacks,
)

EXIT_CLEAN = 0
EXIT_OPEN = 1
EXIT_ERROR = 2

DEFAULT_ATTR = "application"  # gunicorn's default
BEFORE_INSTALL_NOTE = "opened before conntrace was installed: list 'conntrace' first in INSTALLED_APPS"
ADVICE = (
    "A preloading server forks its workers with these connections open and every worker then shares\n"
    "their sessions. Remove the query at the line above (no queries at import time or in\n"
    "AppConfig.ready()), or close connections before the fork: end the preloaded module with\n"
    "django.db.connections.close_all() (with a psycopg pool, also connections[alias].close_pool():\n"
    "closing only returns a connection to its pool), or do not preload (gunicorn without --preload,\n"
    "uWSGI with lazy-apps = true). If your gunicorn config already closes them in pre_fork, run this\n"
    "check where gunicorn finds ./gunicorn.conf.py, or give it: --gunicorn-config PATH."
)
SETTINGS_SOURCE = "settings.WSGI_APPLICATION"
CONFIG_SOURCE = "wsgi_app of the gunicorn config"
NO_TARGET = (
    "no application given and no settings to read WSGI_APPLICATION from "
    "(set DJANGO_SETTINGS_MODULE, or name it: mysite.wsgi:application)"
)


class PreflightError(Exception):
    """The target cannot be loaded; the message is one line for the user."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the preflight arguments (shared by the CLI and the management command)."""
    parser.add_argument(
        "target",
        nargs="?",
        metavar="MODULE[:ATTR]",
        help=(
            "the application as the server gets it, e.g. mysite.wsgi:application (ATTR: "
            f"{DEFAULT_ATTR}); default: the gunicorn config's wsgi_app, else {SETTINGS_SOURCE}"
        ),
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "-c",
        "--gunicorn-config",
        metavar="CONFIG",
        help="gunicorn's config (a path, file:PATH or python:MODULE; default: ./gunicorn.conf.py when "
        "there is one, as gunicorn reads it): run its on_starting, when_ready and pre_fork hooks after "
        "loading the application, as gunicorn's master does before forking",
    )
    parser.add_argument(
        "--uwsgi-lazy-apps",
        action="store_true",
        help="uWSGI runs with lazy-apps: each worker loads the application itself, nothing to check",
    )
    parser.add_argument(
        "--uwsgi-ini", metavar="INI", help="uWSGI's ini file: nothing to check when it sets lazy-apps"
    )


def run_options(options: dict[str, Any], stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run with the parsed arguments of ``add_arguments`` (the CLI's and the command's)."""
    return run(
        options["target"],
        as_json=options["json"],
        stdout=stdout,
        stderr=stderr,
        gunicorn_config=options["gunicorn_config"],
        uwsgi_lazy_apps=options["uwsgi_lazy_apps"],
        uwsgi_ini=options["uwsgi_ini"],
    )


def run(
    target: str | None = None,
    as_json: bool = False,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    *,
    gunicorn_config: str | None = None,
    uwsgi_lazy_apps: bool = False,
    uwsgi_ini: str | None = None,
) -> int:
    """Import ``target``, run the server's pre-fork hooks, report what is left open; return the status."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    report: dict[str, Any] = {"target": target}
    try:
        # Whatever the application prints while it loads goes to stderr: stdout carries the report.
        with contextlib.redirect_stdout(getattr(err, "_out", err)):
            if uwsgi_lazy_apps or (uwsgi_ini and prefork.uwsgi_lazy_apps(uwsgi_ini)):
                report |= {"clean": True, "open_connections": [], "lazy_apps": True}
                return _done(out, report, as_json)
            _start_tracing()
            _put_cwd_on_path()
            if gunicorn_config is None and os.path.isfile(prefork.GUNICORN_DEFAULT_CONFIG):
                gunicorn_config = prefork.GUNICORN_DEFAULT_CONFIG
                _say(err, f"conntrace preflight: reading ./{gunicorn_config}, as gunicorn does")
            config = prefork.load_gunicorn_config(gunicorn_config) if gunicorn_config else None
            target, source = _choose_target(target, config)
            report["target"] = target
            if source:
                _say(err, f"conntrace preflight: checking {target} ({source})")
            app = _load(target)
            _settings_changed()
            if config is not None:
                report["gunicorn_hooks"] = prefork.run_gunicorn_hooks(config, gunicorn_config, app)
            found = open_connections()
    except (PreflightError, prefork.ConfigError) as exc:
        reason = events.redact(_reason(exc))
        _say(err, f"conntrace preflight: {reason}")
        if as_json:
            _say(out, json.dumps({"target": report["target"], "error": reason}))
        return EXIT_ERROR
    report |= {"clean": not found, "open_connections": found}
    return _done(out, report, as_json)


def _done(out: TextIO, report: dict[str, Any], as_json: bool) -> int:
    _say(out, json.dumps(report, indent=2) if as_json else _text(report))
    return EXIT_CLEAN if report["clean"] else EXIT_OPEN


def _reason(exc: Exception) -> str:
    if isinstance(exc, prefork.ConfigError) and exc.__cause__ is not None:
        return _failure(exc.doing, exc.__cause__)
    return str(exc)


def _say(stream: TextIO, text: str) -> None:
    stream.write(text + "\n")
    stream.flush()


# --------------------------------------------------------------------------- loading


def _start_tracing() -> None:
    """Trace from before the import, whatever the settings say (they may not even be configured yet)."""
    if process.active:
        return
    # Reading CONNTRACE needs Django's settings, which the target module usually sets up itself.
    conf.use_defaults()
    instrument.install()


def _settings_changed() -> None:
    """Read the project's own CONNTRACE settings (HIDE_MODULES...) now that they exist."""
    from django.conf import settings

    if settings.configured:
        conf.reload()
        stacks.reset_filter()


def _put_cwd_on_path() -> None:
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)  # as gunicorn does


def _choose_target(target: str | None, config: dict[str, Any] | None) -> tuple[str, str | None]:
    """Return the application to check and, when the user named none, where it was found."""
    if target is not None:  # even "": that is a mistake to name, not a request for the default
        return target, None
    configured = prefork.gunicorn_app(config) if config is not None else None
    if configured:
        return configured, CONFIG_SOURCE
    from django.conf import ENVIRONMENT_VARIABLE, settings

    if not settings.configured and not os.environ.get(ENVIRONMENT_VARIABLE):
        raise PreflightError(NO_TARGET)
    try:
        dotted = settings.WSGI_APPLICATION
    except (Exception, SystemExit) as exc:
        raise PreflightError(_failure(f"reading {SETTINGS_SOURCE}", exc)) from None
    if not isinstance(dotted, str) or "." not in dotted:
        raise PreflightError(f"no application given and {SETTINGS_SOURCE} is {dotted!r}: name it")
    module_name, _, attr = dotted.rpartition(".")
    return f"{module_name}:{attr}", SETTINGS_SOURCE


def _load(target: str) -> Any:
    module_name, colon, attr = target.partition(":")
    if not module_name or (colon and not attr):
        raise PreflightError(f"{target!r} is not MODULE[:ATTR], e.g. mysite.wsgi:application")
    attr = attr or DEFAULT_ATTR
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise PreflightError(
                f"no module named {module_name!r} (run this from the directory your server starts in)"
            ) from None
        raise PreflightError(_failure(f"importing {module_name!r}", exc)) from None
    except (Exception, SystemExit) as exc:
        raise PreflightError(_failure(f"importing {module_name!r}", exc)) from None
    app: Any = module
    for part in attr.split("."):
        try:
            app = getattr(app, part)
        except AttributeError:
            raise PreflightError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(app):
        raise PreflightError(
            f"{module_name}:{attr} is {conf.kind_of(app)}, not a WSGI/ASGI application (not callable)"
        )
    return app


def _failure(doing: str, exc: BaseException) -> str:
    try:
        message = str(exc).strip().splitlines()
    except Exception:  # an exception whose __str__ raises still gets its one line
        message = []
    where = ""
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        where = f" (at {stacks.frame_filter().short_path(last.filename)}:{last.lineno})"
    detail = f": {message[0]}" if message else ""
    return f"{doing} raised {type(exc).__name__}{detail}{where}"


# --------------------------------------------------------------------------- what is open


def open_connections() -> list[dict[str, Any]]:
    """Return every database connection open in this process now, as plain data."""
    if process.pending:
        process.flush_pending()
    found = [_record_entry(record) for record in records.registry.open_records()]
    for alias, _, idle in psycopg_pools.idle_pools():
        for conn in idle:
            fields = psycopg_pools.idle_fields(alias, drivers.backend_pid(conn), process.pid)
            found.append({key: fields[key] for key in _KEYS if key in fields} | {"pooled_idle": True})
    found.extend(_untracked(records.registry.open_records()))
    return found


_KEYS = ("alias", "vendor", "conn_id", "backend_pid", "opened_in", "opened_stack", "thread")


def _record_entry(record: records.ConnectionRecord) -> dict[str, Any]:
    data = record.as_dict()
    entry = {key: data[key] for key in _KEYS}
    entry["pooled"] = record.pooled
    return entry


def _untracked(tracked: list[records.ConnectionRecord]) -> list[dict[str, Any]]:
    """Return open connections of this thread that conntrace did not see being opened."""
    if "django.db" not in sys.modules:
        return []
    from django.conf import settings
    from django.db import connections

    if not settings.configured:
        return []
    seen = {id(record) for record in tracked}
    found = []
    for wrapper in connections.all(initialized_only=True):
        if wrapper.connection is None:
            continue
        record = lifecycle.record_of(wrapper)
        if record is not None and id(record) in seen:
            continue
        found.append(
            {
                "alias": wrapper.alias,
                "vendor": wrapper.vendor,
                "conn_id": None,
                "backend_pid": drivers.backend_pid(wrapper.connection),
                "opened_in": None,
                "opened_stack": [],
                "thread": process.thread_name(),
                "note": BEFORE_INSTALL_NOTE,
            }
        )
    return found


def _text(report: dict[str, Any]) -> str:
    target, found = report["target"], report["open_connections"]
    if report.get("lazy_apps"):
        what = target or "the application"
        return (
            f"conntrace preflight: uWSGI with lazy-apps loads {what} in each worker, after the fork: "
            "no connection crosses it, nothing to check."
        )
    doing = f"importing {target}"
    hooks = report.get("gunicorn_hooks")
    if hooks:
        doing += f" and running gunicorn's {', '.join(hooks)}"
    if not found:
        return f"conntrace preflight: {doing} left no database connection open: safe to preload."
    count = f"{len(found)} database connection{'s' if len(found) > 1 else ''}"
    lines = [f"conntrace preflight: {doing} left {count} open.", ""]
    for entry in found:
        kind = ", idle in its pool" if entry.get("pooled_idle") else ""
        where = entry["opened_in"] or entry.get("note") or "unknown"
        lines.append(f"  {entry['alias']} ({entry['vendor']}{kind}), opened in {where}")
        lines.extend(f"      {frame}" for frame in entry["opened_stack"])
    lines += ["", ADVICE]
    return "\n".join(lines)
