"""The bug this project reproduces: a module that reads the database when it is imported.

Imported while Django starts (``BrandingConfig.ready()``), so in the master of a
pre-forking server: the connection this opens is inherited by every worker.
"""

from tests.e2e.shop.models import Setting

SITE_NAME = Setting.objects.get(key="site_name").value  # import-time query
