"""Serving one request the way a WSGI server does, for tests that need request_finished."""

from __future__ import annotations

from typing import Any
from wsgiref.util import setup_testing_defaults

from django.core.handlers.wsgi import WSGIHandler


def serve_wsgi(path_info: str, query: str = "", cookie: str = "") -> tuple[str, dict[str, str], str]:
    """Serve one request through Django's WSGI handler and close it as a WSGI server does.

    Django's test client disconnects close_old_connections; closing the response here
    sends request_finished, so Django's end-of-request close really happens.
    Returns (status line, headers, body).
    """
    environ = {"PATH_INFO": path_info, "QUERY_STRING": query, "REMOTE_ADDR": "127.0.0.1"}
    if cookie:
        environ["HTTP_COOKIE"] = cookie
    setup_testing_defaults(environ)
    got: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        got.update(status=status, headers=dict(headers))

    result = WSGIHandler()(environ, start_response)
    try:
        body = b"".join(result).decode()
    finally:
        result.close()  # sends request_finished: Django's close_old_connections, then the panel
    return got["status"], got["headers"], body


def production_site(settings: Any, urlconf: str) -> WSGIHandler:
    """Return a WSGI handler for ``urlconf`` that turns errors into 500 responses, as in production."""
    settings.ROOT_URLCONF = urlconf
    settings.DEBUG_PROPAGATE_EXCEPTIONS = False
    return WSGIHandler()
