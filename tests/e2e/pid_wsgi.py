"""A WSGI application without Django that says, on stdout, which process imported it."""

import os

print(f"pid_wsgi imported in {os.getpid()}", flush=True)


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]
