"""A test runner that seeds reference data once the test databases exist, as many projects do.

Its query leaves the runner's connection open, so Django's parallel runner forks
its workers with a connection open (Django 5.2's own set-up closes its
PostgreSQL connection before forking, when it clones the test database).
"""

from typing import Any

from django.test.runner import DiscoverRunner

from tests.e2e.shop.models import Setting


class SeedingRunner(DiscoverRunner):
    def setup_databases(self, **kwargs: Any) -> Any:
        config = super().setup_databases(**kwargs)
        Setting.objects.update_or_create(key="site_name", defaults={"value": "Test Shop"})
        return config
