from django.http import HttpResponse
from django.urls import path

from tests.app.models import Setting


def count(request):
    return HttpResponse(str(Setting.objects.count()))


urlpatterns = [path("count/", count)]
