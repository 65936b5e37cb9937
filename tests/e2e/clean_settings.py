"""The end-to-end project without its import-time query: nothing is open when a server forks."""

from tests.e2e.settings import *  # noqa: F403

INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "tests.e2e.branding"]  # noqa: F405
WSGI_APPLICATION = "tests.e2e.clean_wsgi.application"
