"""gunicorn with the gevent worker, psycopg2 made cooperative in the worker (psycogreen)."""

from typing import Any

worker_class = "gevent"
workers = 1


def post_fork(server: Any, worker: Any) -> None:
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()
