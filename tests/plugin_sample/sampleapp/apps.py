"""An app that reads reference data while Django starts, as many projects do (in ready())."""

from django.apps import AppConfig
from django.db import connections


class SampleAppConfig(AppConfig):
    name = "sampleapp"

    def ready(self) -> None:
        with connections["reference"].cursor() as cursor:
            cursor.execute("SELECT 1")  # the session stays open: every later fork shares it
