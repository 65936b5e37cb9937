"""An application module that fails while it is imported, with credentials in its error (as some do)."""

from tests import pgserver

raise ConnectionError(
    f"cannot reach postgresql://{pgserver.APP_USER}:{pgserver.APP_PASSWORD}@127.0.0.1:1/shop"
)
