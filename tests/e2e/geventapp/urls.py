from django.urls import path

from tests.e2e.geventapp import views

urlpatterns = [path("echo/<str:token>/", views.echo), path("collect/", views.collect)]
