"""Which frame is the application's: launchers and servers hidden, plain words when none is, async code.

The filter is fed real code objects compiled under the file names a server's
process shows (``bin/gunicorn``, ``gunicorn/arbiter.py``...); the async part
runs real coroutines against the test PostgreSQL, through asgiref's
``sync_to_async`` and Django's async ORM methods, and reads ``opened_in`` /
``closed_in`` from the records.
"""

from __future__ import annotations

import asyncio
import os
import sysconfig
import threading
from pathlib import Path
from types import CodeType
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.db import connections

import conntrace
from conntrace import stacks, tasks
from tests.app.models import Setting
from tests.conftest import named

HERE = Path(__file__)
PROJECT_FILE = str(Path.cwd() / "shop" / "views.py")
LAUNCHER = os.path.join(sysconfig.get_path("scripts"), "gunicorn")
# Servers and workers whose frames are never the application's (every one installed in the test
# environment; daphne and hypercorn are hidden too but not installed).
SERVER_MODULES = (
    "gunicorn",
    "uvicorn",
    "uwsgidecorators",
    "celery",
    "billiard",
    "kombu",
    "vine",
    "gevent",
    "greenlet",
    "psycogreen",
    "asgiref",
)


def code_in(filename: str, name: str = "<module>", line: int = 1) -> CodeType:
    """Return a real code object of ``filename``: its ``<module>``, or function ``name`` on ``line``."""
    if name == "<module>":
        return compile("\n" * (line - 1) + "run()\n", filename, "exec")
    module = compile("\n" * (line - 1) + f"def {name}():\n    pass\n", filename, "exec")
    return next(const for const in module.co_consts if isinstance(const, CodeType))


def stack_of(*codes: CodeType) -> stacks.RawStack:
    """Return a raw stack of ``codes``, innermost first, each at its first instruction that has a line."""
    return tuple(item for code in codes for item in (code, first_offset(code)))


def first_offset(code: CodeType) -> int:
    return next(start for start, _, line in code.co_lines() if line)


def source_file(module: str) -> str:
    """Return a source file of ``module`` (its package's ``__init__.py``)."""
    [location] = stacks.module_locations(module)[:1]
    return os.path.join(location, "__init__.py") if location.endswith(os.sep) else location


def marked_line(marker: str) -> int:
    """Return the number of the one line of this file that ends with the comment ``# <marker>``."""
    [number] = [n for n, text in enumerate(HERE.read_text().splitlines(), 1) if text.endswith(f"# {marker}")]
    return number


def here(marker: str, function: str) -> str:
    """Return ``opened_in`` / ``closed_in`` as it names the marked line of ``function`` in this file."""
    return f"tests/test_stacks.py:{marked_line(marker)} in {function}"


@pytest.fixture
def frame_filter() -> stacks.FrameFilter:
    return stacks.FrameFilter()


# --------------------------------------------------------------------------- launchers and servers


def test_a_console_script_launcher_is_not_the_application(frame_filter):
    view = code_in(PROJECT_FILE, "index", line=12)
    assert frame_filter.first_user_frame(stack_of(view, code_in(LAUNCHER))) == "shop/views.py:12 in index"
    assert frame_filter.first_user_frame(stack_of(code_in(LAUNCHER))).startswith("no application frame")


def test_only_a_launchers_module_frame_is_hidden_not_a_function_of_a_script_in_bin(frame_filter):
    script_function = code_in(LAUNCHER, "main", line=3)
    assert not frame_filter.hides(script_function)
    assert frame_filter.hides(code_in(LAUNCHER))


def test_djangos_manage_py_is_a_launcher_too(frame_filter):
    """runserver closes at request end under ``manage.py``'s module frame: that is not the closer."""
    manage_py = str(Path.cwd() / "manage.py")
    view = code_in(PROJECT_FILE, "index", line=12)
    assert frame_filter.hides(code_in(manage_py, line=11))
    assert frame_filter.hides(code_in(manage_py, "main", line=18))
    assert not frame_filter.hides(code_in(manage_py, "load_fixtures", line=30))
    in_main = stack_of(view, code_in(manage_py, "main"))
    assert frame_filter.first_user_frame(in_main) == "shop/views.py:12 in index"
    assert frame_filter.first_user_frame(stack_of(code_in(manage_py, line=11))) == (
        "no application frame (innermost: manage.py:11 in <module>)"
    )


def test_a_module_frame_of_the_project_stays_the_applications(frame_filter):
    """An import-time query is at ``<module>`` level: outside the scripts directory it is the user's line."""
    import_time = code_in(PROJECT_FILE, line=9)
    assert not frame_filter.hides(import_time)
    assert (
        frame_filter.first_user_frame(stack_of(import_time, code_in(LAUNCHER)))
        == "shop/views.py:9 in <module>"
    )


def test_the_interpreters_directory_and_scripts_directory_hold_launchers(frame_filter):
    import sys

    assert os.path.realpath(sysconfig.get_path("scripts")) in frame_filter.launcher_dirs
    assert os.path.abspath(os.path.dirname(sys.executable)) in frame_filter.launcher_dirs
    assert frame_filter.is_launcher(os.path.join(os.path.dirname(sys.executable), "celery"))
    assert not frame_filter.is_launcher(PROJECT_FILE)
    assert not frame_filter.is_launcher("<string>")


@pytest.mark.parametrize("module", SERVER_MODULES)
def test_a_servers_frames_are_not_the_application(frame_filter, module):
    server = code_in(source_file(module), "serve", line=40)
    view = code_in(PROJECT_FILE, "index", line=12)
    assert frame_filter.hides(server)
    assert frame_filter.first_user_frame(stack_of(server, view, server)) == "shop/views.py:12 in index"


def test_a_server_forking_its_workers_reads_no_application_frame(frame_filter):
    """gunicorn's master at fork(), started as ``gunicorn ...`` or ``python -m gunicorn ...``."""
    import runpy

    from gunicorn.arbiter import Arbiter

    spawn, run = Arbiter.spawn_worker.__code__, Arbiter.run.__code__
    innermost = f"gunicorn/arbiter.py:{spawn.co_firstlineno} in Arbiter.spawn_worker"
    started_by_launcher = stack_of(spawn, run, code_in(LAUNCHER, line=8))
    started_with_dash_m = stack_of(
        spawn, run, code_in(source_file("gunicorn.__main__")), runpy._run_code.__code__
    )
    expected = f"no application frame (innermost: {innermost})"
    assert frame_filter.first_user_frame(started_by_launcher) == expected
    assert frame_filter.first_user_frame(started_with_dash_m) == expected
    assert frame_filter.visible_stack(started_by_launcher)[0] == innermost  # the stack still says who


def test_no_application_frame_stays_plain_when_only_connection_plumbing_ran(frame_filter):
    from django.db.backends.utils import CursorWrapper

    from conntrace import lifecycle

    plumbing = stack_of(lifecycle.open_record.__code__, CursorWrapper.execute.__code__)
    assert frame_filter.first_user_frame(plumbing) == "no application frame"
    assert frame_filter.first_user_frame(()) is None  # nothing was captured at all


def test_hide_modules_adds_to_the_servers():
    frame_filter = stacks.FrameFilter(extra_hidden=["tests.app"])
    assert frame_filter.hides(code_in(source_file("tests.app.models"), "helper"))
    assert frame_filter.hides(code_in(source_file("celery"), "helper"))


# --------------------------------------------------------------------------- async code
# The sync callables handed to sync_to_async are Django's (the ORM, connections.close_all), so that
# every frame of the worker thread is hidden, as under the async ORM methods.

on_the_test_databases = pytest.mark.django_db(transaction=True, databases=["default", "other"])
close_this_threads_connections = connections.close_all


async def open_and_close_through_sync_to_async() -> None:
    await sync_to_async(Setting.objects.count)()  # awaits the open
    await sync_to_async(close_this_threads_connections)()  # awaits the close


async def create_count_get() -> int:
    await Setting.objects.acreate(key="k", value="v")  # acreate
    await sync_to_async(close_this_threads_connections)()
    count = await Setting.objects.acount()  # acount
    await sync_to_async(close_this_threads_connections)()
    setting = await Setting.objects.aget(key="k")  # aget
    await sync_to_async(close_this_threads_connections)()
    return count + len(setting.value)


def records_by_open_order() -> list[dict[str, Any]]:
    return sorted(conntrace.live() + conntrace.history(), key=lambda r: r["conn_id"])


@on_the_test_databases
def test_a_connection_opened_through_sync_to_async_names_the_await_line():
    asyncio.run(open_and_close_through_sync_to_async())
    [record] = records_by_open_order()
    assert record["thread"] != threading.current_thread().name  # opened in asgiref's worker thread
    assert record["opened_in"] == here("awaits the open", "open_and_close_through_sync_to_async")
    assert record["closes"][0]["closed_in"] == here(
        "awaits the close", "open_and_close_through_sync_to_async"
    )
    assert record["opened_stack"] == [record["opened_in"]]


@on_the_test_databases
def test_the_async_orm_methods_name_the_await_line(captured):
    assert asyncio.run(create_count_get()) == 2
    opened = named(captured, "connection_opened")
    assert [event["opened_in"] for event in opened] == [
        here("acreate", "create_count_get"),
        here("acount", "create_count_get"),
        here("aget", "create_count_get"),
    ]
    # The full stack shows the worker thread's frames first, then the awaiting coroutines.
    full = records_by_open_order()[0]["opened_stack_full"]
    handler = next(i for i, frame in enumerate(full) if frame.endswith(" in SyncToAsync.thread_handler"))
    assert full[handler + 1].endswith(" in SyncToAsync.__call__")
    assert full[handler + 2].endswith(" in QuerySet.acreate")
    assert full[handler + 3] == here("acreate", "create_count_get")


def count_settings() -> int:
    return Setting.objects.count()  # the application's own sync function


async def count_through_the_applications_sync_function() -> None:
    await sync_to_async(count_settings)()  # awaits it
    await sync_to_async(close_this_threads_connections)()


@on_the_test_databases
def test_a_sync_function_of_the_application_is_named_itself_and_the_await_follows():
    asyncio.run(count_through_the_applications_sync_function())
    [record] = records_by_open_order()
    assert record["opened_stack"] == [
        here("the application's own sync function", "count_settings"),
        here("awaits it", "count_through_the_applications_sync_function"),
    ]
    assert record["opened_in"] == record["opened_stack"][0]


async def open_default_in_a_task(started: asyncio.Event) -> None:
    started.set()
    await sync_to_async(Setting.objects.count)()  # the first task's open


async def open_other_in_a_task(started: asyncio.Event) -> None:
    await started.wait()
    await sync_to_async(Setting.objects.using("other").count)()  # the second task's open


async def two_tasks_share_one_worker_thread() -> None:
    started = asyncio.Event()
    await asyncio.gather(
        asyncio.create_task(open_default_in_a_task(started)),
        asyncio.create_task(open_other_in_a_task(started)),
    )
    await sync_to_async(close_this_threads_connections)()


@on_the_test_databases
def test_each_task_served_by_one_thread_sensitive_worker_is_named_for_its_own_call():
    """asgiref runs both calls on the same thread, one after the other, while both tasks await."""
    asyncio.run(two_tasks_share_one_worker_thread())
    by_alias = {record["alias"]: record for record in records_by_open_order()}
    assert by_alias["default"]["thread"] == by_alias["other"]["thread"]
    assert by_alias["default"]["opened_in"] == here("the first task's open", "open_default_in_a_task")
    assert by_alias["other"]["opened_in"] == here("the second task's open", "open_other_in_a_task")


async def open_in_the_loops_executor() -> None:
    await sync_to_async(Setting.objects.count, thread_sensitive=False)()  # a thread of the loop's executor
    await sync_to_async(close_this_threads_connections, thread_sensitive=False)()


@on_the_test_databases
def test_a_thread_insensitive_call_in_the_loops_executor_names_the_await_line():
    asyncio.run(open_in_the_loops_executor())
    [record] = records_by_open_order()
    assert record["opened_in"] == here("a thread of the loop's executor", "open_in_the_loops_executor")


async def open_back_on_the_sync_thread() -> None:
    await sync_to_async(Setting.objects.count)()  # back on the calling thread


def sync_code_calling_async_code() -> None:
    async_to_sync(open_back_on_the_sync_thread)()  # the sync caller
    connections.close_all()


@on_the_test_databases
def test_a_sync_to_async_call_inside_async_to_sync_names_the_await_not_the_sync_caller():
    """asgiref runs the call on the thread blocked in ``async_to_sync``: the await is the nearer line.

    In a thread of its own, so that the test runner's thread is never marked as a worker.
    """
    worker = threading.Thread(target=sync_code_calling_async_code)
    worker.start()
    worker.join(timeout=30)
    [record] = records_by_open_order()
    assert record["thread"] == worker.name
    assert record["opened_stack"] == [
        here("back on the calling thread", "open_back_on_the_sync_thread"),
        here("the sync caller", "sync_code_calling_async_code"),
    ]


@on_the_test_databases
def test_a_failure_finding_the_awaiting_task_keeps_the_threads_frames(monkeypatch, captured):
    def broken(*args: Any) -> list[Any]:
        raise RuntimeError("conntrace bug")

    monkeypatch.setattr(tasks, "awaiting_frames", broken)
    asyncio.run(open_and_close_through_sync_to_async())
    [record] = records_by_open_order()
    assert record["opened_in"].startswith("no application frame (innermost: django/")
    assert any(" in SyncToAsync.thread_handler" in frame for frame in record["opened_stack_full"])
    [error] = named(captured, "conntrace_internal_error")
    assert (error["where"], error["error"]) == ("await_frames", "conntrace bug")


def test_a_thread_that_never_ran_sync_to_async_is_not_searched_for_a_task():
    """The plain sync path pays one thread-local read: no task lookup in an ordinary thread."""
    seen: list[bool] = []
    thread = threading.Thread(target=lambda: seen.append(tasks.ran_sync_to_async()))
    thread.start()
    thread.join()

    async def ask_in_a_worker() -> bool:
        return await sync_to_async(tasks.ran_sync_to_async, thread_sensitive=False)()

    assert seen == [False]
    assert asyncio.run(ask_in_a_worker()) is True


def test_a_module_that_replaced_itself_without_a_spec_is_still_found():
    """kombu swaps its module for a lazy one without ``__spec__``: find_spec() raises once it is imported."""
    import kombu

    assert getattr(kombu, "__spec__", None) is None  # what makes importlib.util.find_spec raise
    assert stacks.module_locations("kombu") == (os.path.join(os.path.dirname(kombu.__file__), ""),)
