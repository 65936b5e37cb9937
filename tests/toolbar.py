"""django-debug-toolbar around a test URLconf, with the Connections panel, and reading back what it stored.

Used by ``tests/test_panels.py`` (the views of ``tests/panel_views.py``) and ``tests/test_security.py``
(its hostile view). The toolbar is installed only while a test runs: its app reads ``STATIC_URL`` as soon
as it is installed, and its URLs import its models, which need the app installed. So a URLconf serving
the toolbar builds its ``urlpatterns`` when Django first asks (``toolbar_urlconf``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.db import connections
from django.http import HttpRequest
from django.test import override_settings
from django.urls import URLPattern, include, path

TOOLBAR_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.staticfiles",
    "debug_toolbar",
    "conntrace",
    "tests.app",
]
# What Django's close at the end of a request is called in the panel's stats.
REQUEST_END = "Django's close_old_connections at request_finished"

show = {"toolbar": True}


def show_toolbar(request: HttpRequest) -> bool:
    """The toolbar's SHOW_TOOLBAR_CALLBACK: shown, unless a test sets ``show["toolbar"]`` to False."""
    return show["toolbar"]


def toolbar_config(store: str = "MemoryStore") -> dict[str, Any]:
    """Return ``DEBUG_TOOLBAR_CONFIG``: this module's callback, the toolbar's store class named ``store``."""
    return {
        "SHOW_TOOLBAR_CALLBACK": f"{__name__}.show_toolbar",
        "IS_RUNNING_TESTS": False,
        "TOOLBAR_STORE_CLASS": f"debug_toolbar.store.{store}",
    }


@contextmanager
def behind_the_toolbar(urlconf: str, panels: list[str]) -> Iterator[None]:
    """Serve ``urlconf`` behind the toolbar showing ``panels``, results kept in its MemoryStore."""
    # In this order: the toolbar's app reads STATIC_URL as soon as it is installed, and its
    # settings handlers import its models, which need the app installed.
    with (
        override_settings(
            MIDDLEWARE=["debug_toolbar.middleware.DebugToolbarMiddleware"],
            ROOT_URLCONF=urlconf,
            STATIC_URL="/static/",
            TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}],
        ),
        override_settings(INSTALLED_APPS=TOOLBAR_APPS),
        override_settings(DEBUG_TOOLBAR_PANELS=panels, DEBUG_TOOLBAR_CONFIG=toolbar_config()),
    ):
        from debug_toolbar.middleware import show_toolbar_func_or_path
        from debug_toolbar.store import MemoryStore

        show_toolbar_func_or_path.cache_clear()
        MemoryStore.clear()
        show["toolbar"] = True
        yield
        MemoryStore.clear()
    connections.close_all()


def toolbar_urlconf(patterns: list[URLPattern]) -> Callable[[str], Any]:
    """Return a URLconf module's ``__getattr__``: ``urlpatterns`` are ``patterns`` and the toolbar's URLs."""

    def __getattr__(name: str) -> Any:
        if name != "urlpatterns":
            raise AttributeError(name)
        return [*patterns, path("__debug__/", include("debug_toolbar.urls"))]

    return __getattr__


def closes(entry: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Return a connection's closes in the panel's stats as (outcome, when, by which Django code)."""
    return [(c["outcome"], c["when"], c["by_django"]) for c in entry["closes"]]
