from django.db import models


class Answer(models.Model):
    """One task's token, written and read back in one transaction."""

    token = models.CharField(max_length=100)

    class Meta:
        app_label = "celeryproj"
