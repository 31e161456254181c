"""Tasks the worker tests run. Module-level, as django.tasks requires."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from fasttasks.compat import TaskContext, task


def _append(path: str, line: str) -> None:
    # One write() per line with O_APPEND: lines from several threads or processes never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@task
def record(path: str, marker: str) -> str:
    """Appends the marker to a file, so tests see which tasks ran and in which order."""
    _append(path, marker)
    return marker


@task(queue_name="emails")
def record_email(path: str, marker: str) -> str:
    _append(path, marker)
    return marker


@task
def sleep_then_record(path: str, marker: str, seconds: float) -> str:
    _append(path, f"start {marker}")
    time.sleep(seconds)
    _append(path, f"end {marker}")
    return marker


@task(takes_context=True)
def context_info(context: TaskContext, value: int) -> dict[str, Any]:
    result = context.task_result
    return {
        "attempt": context.attempt,
        "id": result.id,
        "status": str(result.status),
        "worker_ids": list(result.worker_ids),
        "value": value,
    }


@task
async def async_add(a: int, b: int, delay: float = 0.01) -> int:
    await asyncio.sleep(delay)
    return a + b


@task(takes_context=True)
async def async_context(context: TaskContext) -> int:
    await asyncio.sleep(0)
    return context.attempt


@task
async def async_fail() -> None:
    await asyncio.sleep(0)
    raise RuntimeError("async boom")


@task
def returns_tuple() -> tuple[int, dict[int, str]]:
    return (1, {2: "two"})


@task
def returns_unserializable() -> object:
    return object()


@task
def raises_system_exit() -> None:
    raise SystemExit(3)


@task
def raises_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


@task
def raises_value_error(message: str) -> None:
    raise ValueError(message)


@task
def uses_orm() -> int:
    from fasttasks.models import TaskRecord

    return TaskRecord.objects.count()


def not_a_task() -> None:
    """A plain function: the worker must refuse to run it."""


def touch(path: str) -> None:
    Path(path).touch()


@task
def enqueue_children(path: str, parent: str, count: int) -> int:
    """Chains tasks: writes to the queue table through Django from inside the worker."""
    for index in range(count):
        record.enqueue(path, f"{parent}.{index}")
    return count


@task
def connection_was_open() -> bool:
    """Whether this thread's connection was still open when the task started; then uses it."""
    from django.db import connection

    was_open = connection.connection is not None
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return was_open


@task
async def async_connection_was_open() -> bool:
    """``connection_was_open`` for a coroutine task, through the async ORM's executor thread."""
    from asgiref.sync import sync_to_async

    return await sync_to_async(connection_was_open.func)()


@task
async def async_sleep_then_record(path: str, marker: str, seconds: float) -> str:
    _append(path, f"start {marker}")
    await asyncio.sleep(seconds)
    _append(path, f"end {marker}")
    return marker


@task
def kill_own_process(path: str) -> None:
    """A poison task: the worker process running it dies (as on a segfault or an OOM kill)."""
    _append(path, "poison started")
    os._exit(13)


#: The table ``log_execution`` writes to; the reliability tests create and drop it.
EXECUTION_TABLE = "fasttasks_test_execution"


@task(takes_context=True)
def log_execution(context: TaskContext, number: int, seconds: float) -> int:
    """Records this execution (task, attempt, process, start time) in a table, through Django's
    connection, then works for ``seconds``: the reliability tests count executions per task."""
    from django.db import connection

    started = time.time()
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {EXECUTION_TABLE} (result_id, number, attempt, pid, started_at) "
            "VALUES (%s, %s, %s, %s, %s)",
            [context.task_result.id, number, context.attempt, os.getpid(), started],
        )
    time.sleep(seconds)
    return os.getpid()
