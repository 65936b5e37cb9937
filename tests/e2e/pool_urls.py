from django.urls import path

from tests.e2e import pool_views
from tests.e2e.shop import views

urlpatterns = [path("echo/<str:token>/", views.echo), path("hold/<str:seconds>/", pool_views.hold)]
