"""The async views, and ``live/``: this process's open connections as ``conntrace.live()`` gives them."""

from django.http import HttpRequest, JsonResponse
from django.urls import path

import conntrace
from tests.e2e.async_urls import urlpatterns as async_urlpatterns


def live(request: HttpRequest) -> JsonResponse:
    return JsonResponse(conntrace.live(), safe=False)


urlpatterns = [*async_urlpatterns, path("live/", live)]
