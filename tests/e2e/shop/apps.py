from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "tests.e2e.shop"
    label = "shop"
    default_auto_field = "django.db.models.AutoField"
