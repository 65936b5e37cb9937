from django.apps import AppConfig


class BrandingConfig(AppConfig):
    name = "tests.e2e.branding"
    label = "branding"

    def ready(self) -> None:
        from tests.e2e.branding import site  # noqa: F401  (queries the database at import time)
