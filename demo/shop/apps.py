from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "shop"
    default_auto_field = "django.db.models.AutoField"

    def ready(self) -> None:
        # The classic bug's way in: a module imported at start-up runs a query (shop/featured.py).
        # Whatever process sets Django up runs it, before any request: under `gunicorn --preload`
        # the master, just before it forks; under runserver's autoreloader, the main thread, which
        # serves no request. Django itself warns (RuntimeWarning: accessing the database during app
        # initialization is discouraged).
        from shop import featured  # noqa: F401
