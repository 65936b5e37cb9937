"""URLs of the demo: one page per connection story, and the debug toolbar."""

from debug_toolbar.toolbar import debug_toolbar_urls
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import path
from shop import views

urlpatterns = [
    path("", views.index, name="index"),
    path("normal/", views.normal, name="normal"),
    path("persistent/", views.persistent, name="persistent"),
    path("double-close/", views.double_close, name="double-close"),
    path("close-fails/", views.close_fails, name="close-fails"),
    path("import-time/", views.import_time, name="import-time"),
    path("thread-leak/", views.thread_leak, name="thread-leak"),
    *debug_toolbar_urls(),
    # Served by Django itself (DEBUG only), so that the toolbar works under gunicorn too.
    *staticfiles_urlpatterns(),
]
