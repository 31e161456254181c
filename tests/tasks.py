"""Module-level tasks shared by the Django-side tests and the worker tests."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from fasttasks.compat import TaskContext, task


@task
def noop() -> None:
    """Does nothing."""


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Returns its inputs as received."""
    return {"args": list(args), "kwargs": kwargs}


@task
def fail(message: str) -> None:
    raise ValueError(message)


@task(takes_context=True)
def with_context(context: TaskContext[Any, Any], x: Any) -> dict[str, Any]:
    return {"attempt": context.attempt, "id": context.task_result.id}


@task
async def async_sleep(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@task
def record(marker: str) -> str:
    """Returns ``marker``; also appends it as a line to ``$FASTTASKS_RECORD_FILE`` when that is set
    (one O_APPEND write per line, so concurrent workers never interleave)."""
    path = os.environ.get("FASTTASKS_RECORD_FILE")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (marker + "\n").encode())
        finally:
            os.close(fd)
    return marker


@task(queue_name="emails", priority=5)
def send_email(to: str) -> str:
    return to


def not_a_task() -> None:
    """A plain function, for 'path does not point to a Task' tests."""
