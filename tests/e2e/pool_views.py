"""A slow view: it keeps its pooled connection for as long as its query sleeps."""

import structlog
from django.db import connection
from django.http import HttpRequest, HttpResponse


def hold(request: HttpRequest, seconds: str) -> HttpResponse:
    """Sleep ``seconds`` in PostgreSQL, holding the connection; the request's path is its context."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_path=request.path)
    with connection.cursor() as cursor:  # the slow view's checkout
        cursor.execute("SELECT pg_sleep(%s)", [float(seconds)])
    return HttpResponse("held", content_type="text/plain")
