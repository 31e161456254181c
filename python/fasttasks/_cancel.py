"""``fasttasks.cancel(result_id)``: stop a task that has not finished.

- READY (waiting, deferred, or waiting for a retry): it ends FAILED at once, in the caller's
  transaction, with a ``fasttasks.exceptions.TaskCancelled`` error entry; it never starts.
- RUNNING: the row is marked (``cancel_requested_at``); its worker finds the mark in its next heartbeat
  round (within about ``--heartbeat`` seconds) and raises ``TaskCancelled`` inside the task (sync: in
  its thread, at its next Python bytecode; coroutine: it is cancelled at its current ``await``). The
  attempt then ends FAILED with that error and is never retried.
- SUCCESSFUL or FAILED: nothing changes; the answer says so.

FAILED, rather than a fifth status, keeps Django's four; ``fasttasks.is_cancelled(result)`` tells a
cancelled task from one that failed by itself.
"""

from __future__ import annotations

import enum
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.db import connections

from .compat import (
    DEFAULT_TASK_BACKEND_ALIAS,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
    task_backends,
)

if TYPE_CHECKING:
    from .backend import FastTasksBackend

__all__ = ["Cancellation", "acancel", "cancel", "is_cancelled"]

TASK_CANCELLED = "fasttasks.exceptions.TaskCancelled"


class Cancellation(enum.Enum):
    """What ``cancel()`` did."""

    #: The task was READY: it ended FAILED (TaskCancelled) and will never start.
    CANCELLED = "cancelled"
    #: The task was RUNNING: its worker raises TaskCancelled in it at its next heartbeat round.
    REQUESTED = "requested"
    #: The task had finished (SUCCESSFUL or FAILED): nothing changed.
    ALREADY_FINISHED = "already_finished"


def cancel(result_id: str, *, backend: str = DEFAULT_TASK_BACKEND_ALIAS) -> Cancellation:
    """Cancel the task ``result_id`` of the fasttasks backend ``backend``; see the module docstring.
    Raises ``TaskResultDoesNotExist`` for an unknown id."""
    return _backend(backend).cancel(result_id)


async def acancel(result_id: str, *, backend: str = DEFAULT_TASK_BACKEND_ALIAS) -> Cancellation:
    """``cancel`` for async code (through Django's thread-sensitive executor, as ``aenqueue``)."""
    return await sync_to_async(cancel, thread_sensitive=True)(result_id, backend=backend)


def is_cancelled(result: TaskResult[Any, Any]) -> bool:
    """Whether ``result`` ended because ``cancel()`` stopped it."""
    return (
        result.status == TaskResultStatus.FAILED
        and bool(result.errors)
        and result.errors[-1].exception_class_path == TASK_CANCELLED
    )


def _backend(alias: str) -> FastTasksBackend:
    from .backend import FastTasksBackend

    backend = task_backends[alias]
    if not isinstance(backend, FastTasksBackend):
        raise TypeError(f"cancel(): TASKS[{alias!r}] is not a fasttasks backend ({type(backend).__name__})")
    return backend


def cancel_in_database(backend: FastTasksBackend, result_id: str) -> Cancellation:
    """The statements behind ``FastTasksBackend.cancel``: end a READY row, else mark a RUNNING one."""
    from .backend import TABLE, _is_valid_id, _to_db

    if not _is_valid_id(result_id):
        raise TaskResultDoesNotExist(result_id)
    connection = connections[backend.database_alias]
    vendor = connection.vendor
    now = datetime.now(dt_timezone.utc)
    stamp = _to_db(vendor, now)
    if vendor == "postgresql":
        append = (
            "errors || jsonb_build_array(jsonb_build_object('exception_class_path', %s::text, 'traceback', "
            "%s::text, 'attempt', attempts, 'worker_id', NULL, 'failed_at', %s::text))"
        )
    else:
        append = (
            "json_insert(errors, '$[#]', json_object('exception_class_path', %s, 'traceback', %s, "
            "'attempt', attempts, 'worker_id', NULL, 'failed_at', %s))"
        )
    entry = [TASK_CANCELLED, f"{TASK_CANCELLED}: cancelled before it started\n", now.isoformat()]
    with connection.cursor() as cursor:
        # A READY row may be claimed, or a RUNNING one go back to READY for a retry, between two of
        # these statements: look again.
        for _ in range(3):
            cursor.execute(
                f"UPDATE {TABLE} SET status = 'FAILED', finished_at = %s, cancel_requested_at = %s, "
                f"errors = {append} WHERE id = %s AND status = 'READY'",
                [stamp, stamp, *entry, result_id],
            )
            if cursor.rowcount:
                return Cancellation.CANCELLED
            cursor.execute(
                f"UPDATE {TABLE} SET cancel_requested_at = COALESCE(cancel_requested_at, %s) "
                "WHERE id = %s AND status = 'RUNNING'",
                [stamp, result_id],
            )
            if cursor.rowcount:
                return Cancellation.REQUESTED
            cursor.execute(f"SELECT status FROM {TABLE} WHERE id = %s", [result_id])
            row = cursor.fetchone()
            if row is None:
                raise TaskResultDoesNotExist(result_id)
            if row[0] in ("SUCCESSFUL", "FAILED"):
                return Cancellation.ALREADY_FINISHED
    raise RuntimeError(f"cancel({result_id!r}): the task kept changing status; try again")
