from django.urls import path

from tests.e2e.shop import views

urlpatterns = [path("echo/<str:token>/", views.echo), path("count/", views.count)]
