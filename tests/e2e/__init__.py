"""A small Django project with the original bug: a query at import time, before the server forks.

``settings.py`` is the buggy project (the ``branding`` app reads a ``Setting``
from the database while Django starts), ``clean_settings.py`` the same project
without that app. Both are driven by environment variables so that the tests
can point them at PostgreSQL directly or through pgbouncer and choose the fork
policy; structlog is configured here, as a production project would do it.
"""
