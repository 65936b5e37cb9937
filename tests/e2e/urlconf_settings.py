"""The pre-forking servers' project with its import-time query moved from an app's ready() to urls.py."""

from tests.e2e.prefork_settings import *  # noqa: F403

INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "tests.e2e.branding"]  # noqa: F405
ROOT_URLCONF = "tests.e2e.urlconf_query"
WSGI_APPLICATION = "tests.e2e.clean_wsgi.application"
