"""What conntrace says about a connection that crossed ``fork()``: levels, hints and fields.

Emitted by ``forking`` at safe points only (see its docstring). Under Django's
parallel test runner with a policy that heals the child, the events are info
with a hint that there is nothing to fix.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from conntrace import drivers, events, pools, process, records, stacks
from conntrace.fields import base_fields
from conntrace.names import Event, Policy

TEST_RUNNER_HINT = (
    "Django's parallel test runner forks its workers with connections open. With FORK_POLICY "
    "'reset' (or 'raise') each worker discards its copy without touching the parent's session "
    "and opens its own: expected, nothing to fix."
)
TEST_RUNNER_WARN_HINT = (
    "Django's parallel test runner forks its workers with connections open, and each worker "
    "closes its copy: with FORK_POLICY 'warn' that close ends the parent's session. "
    "Use FORK_POLICY 'reset' (the default)."
)
DEPLOY_HINT = (
    "A connection opened before fork() is shared by every child: their queries interleave on one "
    "session and can read each other's rows. Remove the query at opened_in (usually run at import "
    "time), or close connections in the parent before it forks (gunicorn: connections.close_all() "
    "in a pre_fork hook or at the end of the preloaded module, plus close_pool() with a psycopg pool, "
    "or no --preload; uWSGI: lazy-apps = true). "
    "Check before deploying with: python -m conntrace preflight MODULE:ATTR"
)

ACTIONS = {
    Policy.RESET: "discarded without touching the shared socket; this process opens its own on first use",
    Policy.RAISE: (
        "discarded without touching the shared socket; its first use raises InheritedConnectionError"
    ),
    Policy.WARN: "left in place: this process shares the parent's session",
}


def level_and_hint(policy: str, by_runner: bool, default: int) -> tuple[int, str]:
    """Return the level and hint of a fork report: quieter where the test runner heals the child."""
    if by_runner and policy != Policy.WARN:
        return logging.INFO, TEST_RUNNER_HINT
    if by_runner:
        return default, TEST_RUNNER_WARN_HINT
    return default, DEPLOY_HINT


def fork_fields(record: records.ConnectionRecord) -> dict[str, Any]:
    """Return the fields of a report about ``record`` crossing a fork."""
    fields = base_fields(record)
    fields.update(
        opened_by_pid=record.pid,
        opened_thread=record.thread,
        age_s=record.age_s(),
        open_at_forks=record.open_at_forks,
    )
    return fields


def report_open_at_fork(
    crossing: list[records.ConnectionRecord],
    idle_pools: list[pools.PoolInfo],
    policy: str,
    by_runner: bool,
    stack: stacks.RawStack,
) -> None:
    """In the parent, once the child exists: one event per connection that crossed the fork."""
    level, hint = level_and_hint(policy, by_runner, logging.WARNING)
    if not events.enabled(level):
        return
    forked_in = stacks.frame_filter().first_user_frame(stack)
    for record in crossing:
        fields = fork_fields(record)
        fields.update(forked_in=forked_in, policy=policy, hint=hint)
        events.emit(level, Event.CONNECTION_OPEN_AT_FORK, fields)
    for alias, _, idle in idle_pools:
        for conn in idle:
            fields = pools.idle_fields(alias, drivers.backend_pid(conn), process.pid)
            fields.update(forked_in=forked_in, policy=policy, hint=hint)
            events.emit(level, Event.CONNECTION_OPEN_AT_FORK, fields)


def report_inherited(record: records.ConnectionRecord, by_runner: bool) -> None:
    """In the child: the connection ``record`` was inherited, and what its policy did with it."""
    policy = record.fork_policy or Policy.RESET
    level, hint = level_and_hint(policy, by_runner, logging.ERROR)
    if not events.enabled(level):
        return
    fields = fork_fields(record)
    fields.update(parent_pid=process.parent_pid, policy=policy, action=ACTIONS[policy], hint=hint)
    events.emit(level, Event.CONNECTION_FORK_INHERITED, fields)


def report_pooled(alias: str, backend_pid: Optional[int], policy: str, by_runner: bool) -> None:
    """In the child: an idle connection of a psycopg pool was inherited."""
    level, hint = level_and_hint(policy, by_runner, logging.ERROR)
    if not events.enabled(level):
        return
    fields = pools.idle_fields(alias, backend_pid, process.parent_pid)
    fields.update(parent_pid=process.parent_pid, policy=policy, action=ACTIONS[policy], hint=hint)
    events.emit(level, Event.CONNECTION_FORK_INHERITED, fields)


def report_inherited_used(record: records.ConnectionRecord, policy: str) -> None:
    """Policy ``warn``: the child uses the parent's session."""
    if events.enabled(logging.WARNING):
        fields = fork_fields(record)
        fields.update(parent_pid=process.parent_pid, policy=policy, hint=DEPLOY_HINT)
        events.emit(logging.WARNING, Event.CONNECTION_INHERITED_USED, fields)
