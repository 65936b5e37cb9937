from django.db import connection
from django.http import HttpRequest, HttpResponse

from tests.e2e.shop.models import Setting

# Long enough that requests of different workers overlap on a shared socket.
QUERY_SLEEP_S = 0.005


def echo(request: HttpRequest, token: str) -> HttpResponse:
    """Return ``token`` as the database returned it: a shared socket can answer with another request's row."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s::text FROM pg_sleep(%s)", [token, QUERY_SLEEP_S])
        (value,) = cursor.fetchone()
    return HttpResponse(value, content_type="text/plain")


def count(request: HttpRequest) -> HttpResponse:
    return HttpResponse(str(Setting.objects.count()), content_type="text/plain")
