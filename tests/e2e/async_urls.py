from django.urls import path

from tests.e2e import async_views

urlpatterns = [path("async/count/", async_views.count), path("async/create/<str:token>/", async_views.create)]
