"""A view that closes its database connection behind Django's back, and the URLconf that serves it.

Django's own close at the end of the request then finds the connection already
closed: conntrace's ``connection_double_close`` warning, the event the logging
set-ups of ``tests/test_logging_setup.py`` must deliver.
"""

from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.urls import path


def close_behind_djangos_back(request: HttpRequest) -> HttpResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    connection.connection.close()  # the driver's connection, closed directly
    return HttpResponse("closed", content_type="text/plain")


urlpatterns = [path("double-close/", close_behind_djangos_back)]
