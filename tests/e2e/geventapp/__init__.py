"""The end-to-end project served by gunicorn's gevent worker, on psycopg2 made cooperative by psycogreen.

Each request runs in a greenlet of its own, and under gevent Django's
connections are greenlet-local: with ``CONN_MAX_AGE`` a request's connection
outlives its greenlet, and is left for the garbage collector. ``views.collect``
collects it and says what conntrace still holds.
"""
