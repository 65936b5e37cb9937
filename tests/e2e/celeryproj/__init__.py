"""A Django project with Celery, set up as Celery's documentation sets one up (``celery.py`` here).

The project is the end-to-end one (``tests/e2e/settings.py``: its ``branding``
app reads the database while Django starts) plus this app, whose tasks module
reads the database too when the worker imports it.
"""

from tests.e2e.celeryproj.celery import app as celery_app

__all__ = ["celery_app"]
