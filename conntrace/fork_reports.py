"""What conntrace says about a connection that crossed ``fork()``: levels, hints and fields.

Emitted by ``forking`` at safe points only (see its docstring). Quiet where
the fork is healthy: info where someone else makes the child safe (Django's
parallel test runner, Celery's Django fixup), a warning in a child that
FORK_POLICY "reset" healed, an error only where the child still shares the
session (or will raise); and a parent that forks again and again (a
respawning master) reports each line once, then counts.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from conntrace import drivers, events, metric_hooks, process, psycopg_pools, records, stacks
from conntrace.fields import base_fields
from conntrace.names import Event, ForkNoticed, HandledBy, Policy

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
CELERY_HINT = (
    "Celery's Django fixup closes the connections each pool child inherits (worker_process_init) "
    "without touching the parent's session: expected, nothing to fix. See docs/fork-safety.md#celery"
)
DEPLOY_HINT = (
    "Every child shares this session. Remove the query at opened_in (often run at import time) or "
    "close connections before forking; check with: manage.py conntrace_preflight. "
    "See docs/fork-safety.md#fix-it"
)

ACTIONS = {
    Policy.RESET: "discarded without touching the shared socket; this process opens its own on first use",
    Policy.RAISE: (
        "discarded without touching the shared socket; its first use raises InheritedConnectionError"
    ),
    Policy.WARN: "left in place: this process shares the parent's session",
}


def level_and_hint(policy: str, handled: Optional[HandledBy], in_child: bool) -> tuple[int, str]:
    """Return the level and hint of a fork report.

    Info where someone else makes the child safe; otherwise a warning, and in
    the child an error unless FORK_POLICY "reset" already healed it.
    """
    if handled is HandledBy.CELERY_DJANGO_FIXUP:
        return logging.INFO, CELERY_HINT
    if handled is HandledBy.DJANGO_TEST_RUNNER and policy != Policy.WARN:
        return logging.INFO, TEST_RUNNER_HINT
    hint = TEST_RUNNER_WARN_HINT if handled is HandledBy.DJANGO_TEST_RUNNER else DEPLOY_HINT
    if in_child and policy != Policy.RESET:
        return logging.ERROR, hint
    return logging.WARNING, hint


# (event, alias, opened_in) -> reports of it left out since the first, in this process.
_repeats: dict[tuple[str, str, Optional[str]], int] = {}


def first_time(event: Event, alias: str, opened_in: Optional[str]) -> bool:
    """Return True the first time this process reports ``event`` for this line; count later ones."""
    key = (event.value, alias, opened_in)
    if key in _repeats:
        _repeats[key] += 1
        return False
    _repeats[key] = 0
    return True


def report_repeats() -> None:
    """Say, once at exit, how many reports were left out after the first (a respawning master)."""
    repeated = [
        {"event": event, "alias": alias, "opened_in": opened_in, "count": count}
        for (event, alias, opened_in), count in _repeats.items()
        if count
    ]
    _repeats.clear()
    if repeated and events.enabled(logging.INFO):
        events.emit(logging.INFO, Event.REPORTS_REPEATED, {"pid": process.pid, "repeats": repeated})


def forget_repeats() -> None:
    """Start counting afresh: in a new child, the parent's counts are the parent's."""
    _repeats.clear()


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
    idle_pools: list[psycopg_pools.PoolInfo],
    policy: str,
    handled: Optional[HandledBy],
    stack: stacks.RawStack,
) -> None:
    """In the parent, once the child exists: one event per connection that crossed, once per line."""
    level, hint = level_and_hint(policy, handled, in_child=False)
    if not events.enabled(level):
        return
    forked_in = stacks.frame_filter().first_user_frame(stack)
    reports = [fork_fields(record) for record in crossing]
    for alias, _, idle in idle_pools:
        reports.extend(
            psycopg_pools.idle_fields(alias, drivers.backend_pid(conn), process.pid) for conn in idle
        )
    for fields in reports:
        if first_time(Event.CONNECTION_OPEN_AT_FORK, fields["alias"], fields["opened_in"]):
            fields.update(forked_in=forked_in, policy=policy, hint=hint)
            if handled is not None:
                fields["handled_by"] = handled
            events.emit(level, Event.CONNECTION_OPEN_AT_FORK, fields)


def _child_fields(
    fields: dict[str, Any], policy: str, handled: Optional[HandledBy], noticed: ForkNoticed, hint: str
) -> dict[str, Any]:
    fields.update(
        parent_pid=process.parent_pid,
        policy=policy,
        action=ACTIONS[policy],
        fork_noticed=noticed,
        hint=hint,
    )
    if handled is not None:
        fields["handled_by"] = handled
    return fields


def report_inherited(
    record: records.ConnectionRecord, handled: Optional[HandledBy], noticed: ForkNoticed
) -> None:
    """In the child: the connection ``record`` was inherited, and what its policy did with it."""
    policy = record.fork_policy or Policy.RESET
    level, hint = level_and_hint(policy, handled, in_child=True)
    if level >= logging.WARNING:
        metric_hooks.count_anomaly(Event.CONNECTION_FORK_INHERITED, record.alias)
    if events.enabled(level):
        fields = _child_fields(fork_fields(record), policy, handled, noticed, hint)
        events.emit(level, Event.CONNECTION_FORK_INHERITED, fields)


def report_pooled(
    alias: str,
    backend_pid: Optional[int],
    policy: str,
    handled: Optional[HandledBy],
    noticed: ForkNoticed,
) -> None:
    """In the child: an idle connection of a psycopg pool was inherited."""
    level, hint = level_and_hint(policy, handled, in_child=True)
    if level >= logging.WARNING:
        metric_hooks.count_anomaly(Event.CONNECTION_FORK_INHERITED, alias)
    if events.enabled(level):
        fields = psycopg_pools.idle_fields(alias, backend_pid, process.parent_pid)
        events.emit(
            level, Event.CONNECTION_FORK_INHERITED, _child_fields(fields, policy, handled, noticed, hint)
        )


def report_inherited_used(record: records.ConnectionRecord, policy: str) -> None:
    """Policy ``warn``: the child uses the parent's session."""
    metric_hooks.count_anomaly(Event.CONNECTION_INHERITED_USED, record.alias)
    if events.enabled(logging.WARNING):
        fields = fork_fields(record)
        fields.update(parent_pid=process.parent_pid, policy=policy, hint=DEPLOY_HINT)
        events.emit(logging.WARNING, Event.CONNECTION_INHERITED_USED, fields)
