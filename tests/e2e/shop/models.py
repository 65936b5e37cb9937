from django.db import models


class Setting(models.Model):
    """A key/value row, the kind of table projects read at import time."""

    key = models.CharField(max_length=100, unique=True)
    value = models.CharField(max_length=200)

    class Meta:
        app_label = "shop"
