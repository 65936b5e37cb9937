"""What an event about a connection carries, and the request context it remembers.

Built only when an event is emitted (or, for the context, once per request
per connection), never on the per-query path.
"""

from __future__ import annotations

from typing import Any, Optional

import structlog

from conntrace import process, records


def base_fields(record: records.ConnectionRecord) -> dict[str, Any]:
    """Return the fields every event about ``record`` carries."""
    fields: dict[str, Any] = {}
    if record.context:
        fields.update(record.context)
    fields.update(
        alias=record.alias,
        vendor=record.vendor,
        conn_id=record.conn_id,
        pid=process.pid,
        thread=process.thread_name(),
        backend_pid=record.backend_pid,
        opened_in=record.opened_in(),
        opened_stack=record.opened_stack(),
    )
    return fields


def anomaly_fields(record: records.ConnectionRecord) -> dict[str, Any]:
    """Return the whole story of ``record``, so that an anomaly event reads alone."""
    fields = base_fields(record)
    fields.update(
        opened_by_pid=record.pid,
        opened_thread=record.thread,
        opened_at=records.iso_time(record.opened_at),
        age_s=record.age_s(),
        close_count=record.close_count,
        closes=[attempt.as_event() for attempt in record.closes],
    )
    if record.inherited:
        fields.update(inherited=True, fork_policy=record.fork_policy)
    return fields


# structlog keeps one ContextVar per key ever bound, here: reading those few is much
# cheaper than get_contextvars(), which walks every context variable of the process.
STRUCTLOG_VARS: Optional[dict[str, Any]] = getattr(structlog.contextvars, "_CONTEXT_VARS", None)
if not isinstance(STRUCTLOG_VARS, dict):  # private: another structlog may keep them elsewhere
    STRUCTLOG_VARS = None
_STRUCTLOG_PREFIX_LEN = len(getattr(structlog.contextvars, "STRUCTLOG_KEY_PREFIX", "structlog_"))


def context_ever_bound() -> bool:
    """Return True once anything was bound in structlog's context (or when that cannot be told)."""
    return STRUCTLOG_VARS is None or bool(STRUCTLOG_VARS)


def snapshot_context(record: records.ConnectionRecord) -> None:
    """Remember the structlog context bound now (a request's ``request_id``) on ``record``."""
    record.context_gen = process.request_gen
    variables = STRUCTLOG_VARS
    if variables is None:
        context = structlog.contextvars.get_contextvars()
    elif not variables:
        return  # nothing was ever bound
    else:
        context = {}
        for name, var in list(variables.items()):
            value = var.get(Ellipsis)
            if value is not Ellipsis:
                context[name[_STRUCTLOG_PREFIX_LEN:]] = value
    if context:
        record.context = context
