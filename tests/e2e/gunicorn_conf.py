"""The gunicorn configuration fix the README gives: close connections in the master before forking.

Below the docstring, the README's block character for character
(``tests/test_preflight.py`` checks it). Closing in the master touches nothing
shared: no worker exists yet. (Closing in ``post_fork``, in each worker, also
stops the sharing but sends Terminate on the master's socket, ending the
master's session.)
"""


# gunicorn.conf.py
def pre_fork(server, worker):
    from django.db import connections

    for conn in connections.all(initialized_only=True):
        conn.close()
        if hasattr(conn, "close_pool"):
            conn.close_pool()  # a psycopg pool keeps the sockets of "closed" connections
