"""The one view of workload W3: three ORM queries, a small HTML response."""

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import include, path

from tests.app.models import Setting


def three_queries(request: HttpRequest) -> HttpResponse:
    """Run three ORM queries, the shape of a small real page."""
    count = Setting.objects.count()
    first = Setting.objects.filter(key="k1").first()
    rows = list(Setting.objects.order_by("key")[:5])
    body = f"{count} {first.value if first else ''} {len(rows)}"
    return HttpResponse(f"<!DOCTYPE html><html><head><title>bench</title></head><body>{body}</body></html>")


urlpatterns = [path("bench/", three_queries)]
if "debug_toolbar" in settings.INSTALLED_APPS:
    urlpatterns.append(path("__debug__/", include("debug_toolbar.urls")))
