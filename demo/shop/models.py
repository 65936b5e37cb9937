"""The demo's one table: site settings, the kind of thing projects read at import time."""

from django.db import models


class Setting(models.Model):
    key = models.CharField(max_length=100, unique=True)
    value = models.CharField(max_length=200)

    def __str__(self) -> str:
        return f"{self.key} = {self.value}"
