"""The Celery application, configured from Django's settings (``CELERY_*``) with the tasks autodiscovered.

``DJANGO_SETTINGS_MODULE`` is set before the app exists, so Celery installs its
Django fixup: ``django.setup()`` before the tasks are imported, connections
closed around every task and in every pool process at ``worker_process_init``.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.e2e.celeryproj.settings")

app = Celery("celeryproj")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
