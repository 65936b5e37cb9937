"""Fork children from a process holding a database connection, and check the parent's session after.

Run by ``tests/test_forking.py`` in a fresh interpreter, so that children end the
way real ones do: ``os.fork()`` children return from their work and leave through
a normal interpreter exit (atexit handlers, module teardown, garbage collection),
``multiprocessing`` children through ``Process._bootstrap``.

    python -m tests.e2e.forkscenario ALIAS POLICY OUT_DIR [ACTION ...]

ALIAS is ``default`` or ``other`` (PostgreSQL), ``pooled`` (psycopg 3 pool) or
``lite`` (SQLite); POLICY a ``FORK_POLICY`` or ``off`` (conntrace uninstalled).
Each ACTION (default: all) runs in one ``os.fork`` child and one
``multiprocessing`` child, one after the other. Results: one JSON line on
stdout; events as JSON lines in ``OUT_DIR/events.jsonl``, configured here as a
user's project would (or, with ``CONNTRACE_E2E_LOG_DIR``, one file per process there, debug included).
"""

from __future__ import annotations

import atexit
import json
import logging
import multiprocessing
import os
import sys
import time
from typing import Any

ACTIONS = ("close", "close_all", "query_then_close", "nothing")


def configure(alias: str, policy: str, out_dir: str) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    os.environ["CONNTRACE_TEST_FORK_POLICY"] = policy if policy != "off" else "reset"
    import structlog

    import tests.settings as test_settings

    if alias == "pooled":
        default = test_settings.DATABASES["default"]
        pool = {"min_size": 3, "max_size": 6, "timeout": 10}
        test_settings.DATABASES["pooled"] = {**default, "OPTIONS": {**default["OPTIONS"], "pool": pool}}
    if os.environ.get("CONNTRACE_E2E_LOG_DIR"):  # one file per process, debug included (conntrace report)
        from tests.e2e import eventlog

        eventlog.configure(os.environ["CONNTRACE_E2E_LOG_DIR"], logging.DEBUG)
    else:
        log_file = open(os.path.join(out_dir, "events.jsonl"), "a", buffering=1)  # noqa: SIM115
        atexit.register(log_file.close)
        structlog.configure(
            processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
            logger_factory=structlog.WriteLoggerFactory(file=log_file),
        )
    import django

    django.setup()
    if policy == "off":
        import conntrace

        conntrace.uninstall()


def _query(alias: str) -> Any:
    from django.db import connections

    wrapper = connections[alias]
    with wrapper.cursor() as cursor:
        if wrapper.vendor == "postgresql":
            cursor.execute("SELECT pg_backend_pid()")
            return cursor.fetchone()[0]
        cursor.execute("INSERT INTO seen (pid) VALUES (%s)", [os.getpid()])
        cursor.execute("SELECT count(*) FROM seen")
        return cursor.fetchone()[0]


def _child(alias: str, action: str, how: str, out_dir: str) -> None:
    from django.db import connections

    result: dict[str, Any] = {"pid": os.getpid(), "how": how, "action": action}
    try:
        if action == "close":
            connections[alias].close()
        elif action == "close_all":
            connections.close_all()
        elif action == "query_then_close":
            result["answer"] = _query(alias)
            if alias == "pooled":
                from django.db.backends.postgresql.base import DatabaseWrapper

                result["pool_id"] = id(DatabaseWrapper._connection_pools.get(alias))
            connections.close_all()
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    with open(os.path.join(out_dir, f"child-{os.getpid()}.json"), "w") as f:
        json.dump(result, f)


def _wait(pid: int, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return -999  # hung


def _idle_pool_connections(alias: str) -> list[Any]:
    from django.db.backends.postgresql.base import DatabaseWrapper

    pool = DatabaseWrapper._connection_pools[alias]
    deadline = time.monotonic() + 10
    while len(pool._pool) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    return list(pool._pool)


def main(alias: str, policy: str, out_dir: str, actions: tuple[str, ...]) -> dict[str, Any]:
    configure(alias, policy, out_dir)
    from django.db import connection, connections

    wrapper = connections[alias]
    if alias == "lite":
        with wrapper.cursor() as cursor:
            cursor.execute("CREATE TABLE IF NOT EXISTS seen (pid integer)")
            cursor.execute("DELETE FROM seen")
    before = _query(alias)
    driver_conn = wrapper.connection
    idle_before = []
    if alias == "pooled":
        idle_before = [conn.info.backend_pid for conn in _idle_pool_connections(alias)]
    if alias != "default":
        with connection.cursor() as cursor:  # the default alias is open too: every alias crosses
            cursor.execute("SELECT 1")

    exits = []
    context = multiprocessing.get_context("fork")
    for action in actions:
        pid = os.fork()
        if pid == 0:
            _child(alias, action, "os.fork", out_dir)
            sys.exit(0)  # a normal interpreter exit, in the child
        exits.append(_wait(pid))
        process = context.Process(target=_child, args=(alias, action, "multiprocessing", out_dir))
        process.start()
        process.join(20)
        if process.is_alive():
            process.kill()
            process.join()
            exits.append(-999)
        else:
            exits.append(process.exitcode)

    result: dict[str, Any] = {"before": before, "exits": exits, "same_driver_connection": False}
    try:
        result["same_driver_connection"] = wrapper.connection is driver_conn
        result["after"] = _query(alias)
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    if alias == "pooled":
        from django.db.backends.postgresql.base import DatabaseWrapper

        pool = DatabaseWrapper._connection_pools[alias]
        result["pool_id"] = id(pool)
        result["idle_before"] = idle_before
        answers = []
        borrowed = [pool.getconn() for _ in range(len(pool._pool))]
        for conn in borrowed:
            try:
                answers.append(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
            except Exception as exc:
                answers.append(f"{type(exc).__name__}")
        for conn in borrowed:
            pool.putconn(conn)
        result["idle_after"] = answers
    result["children"] = []
    for name in sorted(os.listdir(out_dir)):
        if name.startswith("child-"):
            with open(os.path.join(out_dir, name)) as f:
                result["children"].append(json.load(f))
    connections.close_all()
    if alias == "pooled":
        wrapper.close_pool()
    return result


if __name__ == "__main__":
    alias_arg, policy_arg, out_arg, *action_args = sys.argv[1:]
    print(json.dumps(main(alias_arg, policy_arg, out_arg, tuple(action_args) or ACTIONS)))
