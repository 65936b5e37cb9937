"""What a preloading server does in its master between loading the application and forking.

Preflight runs it so that a fix in the server's configuration counts, as it
will in production. gunicorn (read in its ``arbiter.py``, 22 to 27):
``Arbiter.setup()`` loads the preloaded application, then ``start()`` calls the
config file's ``on_starting(arbiter)`` and ``when_ready(arbiter)``, and
``spawn_worker()`` builds the worker object and calls ``pre_fork(arbiter,
worker)`` just before ``os.fork()``. uWSGI with ``lazy-apps`` (or the older
``lazy``) loads the application in each worker after its fork: nothing is
inherited, so there is nothing to check.
"""

from __future__ import annotations

import configparser
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

GUNICORN_HOOKS = ("on_starting", "when_ready", "pre_fork")  # the order gunicorn calls them in
# Without -c, gunicorn reads this file when the directory it starts in has one.
GUNICORN_DEFAULT_CONFIG = "gunicorn.conf.py"
UWSGI_LAZY_OPTIONS = ("lazy-apps", "lazy")
UWSGI_FALSE = ("0", "false", "off", "no")  # uWSGI's own words for a flag turned off


class ConfigError(Exception):
    """The server's configuration cannot be read or one of its hooks raised.

    ``doing`` says what was being done, e.g. "running pre_fork of gunicorn.conf.py";
    the original exception is the ``__cause__``.
    """

    def __init__(self, doing: str) -> None:
        super().__init__(doing)
        self.doing = doing


def load_gunicorn_config(location: str) -> dict[str, Any]:
    """Read a gunicorn config as gunicorn does: ``python:module``, ``file:path`` or a path."""
    try:
        if location.startswith("python:"):
            return vars(importlib.import_module(location.removeprefix("python:")))
        path = location.removeprefix("file:")
        if not os.path.exists(path):
            raise ConfigError(f"gunicorn config {location!r} does not exist")
        # gunicorn's own module name for it: a config that looks itself up finds itself.
        spec = importlib.util.spec_from_file_location("__config__", path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"gunicorn config {location!r} is not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules["__config__"] = module
        spec.loader.exec_module(module)
        return vars(module)
    except ConfigError:
        raise
    except (Exception, SystemExit) as exc:
        raise ConfigError(f"reading gunicorn config {location!r}") from exc


def gunicorn_app(config: dict[str, Any]) -> str | None:
    """Return the config's ``wsgi_app`` (the application it serves when none is given), if any."""
    value = config.get("wsgi_app")
    return value if isinstance(value, str) and value else None


def run_gunicorn_hooks(config: dict[str, Any], location: str, app: Any) -> list[str]:
    """Call the config's master hooks as gunicorn would before its first fork; return their names."""
    cfg = SimpleNamespace(**{name: value for name, value in config.items() if not name.startswith("_")})
    log = logging.getLogger("gunicorn.error")
    arbiter = SimpleNamespace(
        cfg=cfg, log=log, app=app, pid=os.getpid(), WORKERS={}, LISTENERS=[],
        num_workers=config.get("workers", 1), worker_age=0,
    )  # fmt: skip
    ran = []
    for name in GUNICORN_HOOKS:
        hook = config.get(name)
        if not callable(hook):
            continue
        if name == "pre_fork":
            # What Worker.__init__ sets before the fork: the worker has no pid of its own yet.
            arbiter.worker_age += 1
            worker = SimpleNamespace(
                age=arbiter.worker_age, pid="[booting]", ppid=arbiter.pid, sockets=[], app=app,
                timeout=config.get("timeout", 30) / 2.0, cfg=cfg, log=log, booted=False,
                aborted=False, alive=True, nr=0,
            )  # fmt: skip
            _call(hook, name, location, arbiter, worker)
        else:
            _call(hook, name, location, arbiter)
        ran.append(name)
    return ran


def _call(hook: Callable[..., Any], name: str, location: str, *args: Any) -> None:
    try:
        hook(*args)
    except (Exception, SystemExit) as exc:
        raise ConfigError(f"{name} of gunicorn config {location!r}") from exc


def uwsgi_lazy_apps(ini_path: str) -> bool:
    """Return True when the ``[uwsgi]`` section of an ini file sets ``lazy-apps`` (or ``lazy``)."""
    parser = configparser.ConfigParser(interpolation=None, strict=False, allow_no_value=True)
    try:
        with open(ini_path) as ini:
            parser.read_file(ini)
    except (OSError, configparser.Error) as exc:
        raise ConfigError(f"reading uWSGI ini {ini_path!r}") from exc
    if not parser.has_section("uwsgi"):
        return False
    for option in UWSGI_LAZY_OPTIONS:
        if parser.has_option("uwsgi", option):
            value = parser.get("uwsgi", option)
            return value is None or value.strip().lower() not in UWSGI_FALSE
    return False
