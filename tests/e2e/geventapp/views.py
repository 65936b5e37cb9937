"""A query per request, counted where it opens a connection; and what the garbage collector leaves."""

import gc
import time
import weakref

import gevent
import structlog
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse

import conntrace
from tests.e2e.shop import views as shop_views

GREENLETS_GONE_WITHIN_S = 5

# Connections opened by requests: each request's greenlet has its own Django connection.
opened_by_requests = 0
# The greenlets that ran echo(), until they are freed.
request_greenlets: "weakref.WeakSet[gevent.Greenlet]" = weakref.WeakSet()


def echo(request: HttpRequest, token: str) -> HttpResponse:
    """Answer ``token`` as PostgreSQL returns it, on this greenlet's connection (opened here)."""
    global opened_by_requests
    request_greenlets.add(gevent.getcurrent())
    if connection.connection is None:
        opened_by_requests += 1
    return shop_views.echo(request, token)


def collect(request: HttpRequest) -> JsonResponse:
    """Collect garbage until the requests' greenlets are gone; say what requests opened, and ``live()``.

    A greenlet that has sent its response is not gone at once: the hub still
    runs its links (the server's pool lets go of it then), and gevent keeps its
    greenlet-local dict, with its Django connection, until the greenlet itself
    is freed. ``live()`` emits the reports the collector queued; the
    ``collected`` event marks the point.
    """
    live_before = len(conntrace.live())
    unreachable = [gc.collect()]
    deadline = time.monotonic() + GREENLETS_GONE_WITHIN_S
    while len(request_greenlets) and time.monotonic() < deadline:
        gevent.sleep(0.01)
        unreachable.append(gc.collect())
    unreachable += [gc.collect() for _ in range(2)]
    live = conntrace.live()
    structlog.get_logger("geventapp").info("collected", opened_by_requests=opened_by_requests)
    return JsonResponse(
        {
            "opened_by_requests": opened_by_requests,
            "greenlets_left": len(request_greenlets),
            "live_before": live_before,
            "unreachable": unreachable,
            "live": live,
        }
    )
