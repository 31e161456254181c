"""Rebuilding ``Task`` and ``TaskResult`` objects from stored rows.

Shared by the backend (``get_result``) and the worker runner (``fasttasks._runner``); keep the names and
signatures stable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from django.utils.module_loading import import_string

from .compat import Task, TaskError, TaskResult, TaskResultStatus

__all__ = [
    "InvalidTaskPath",
    "build_task_result",
    "errors_from_json",
    "resolve_task",
    "task_for_row",
]


class InvalidTaskPath(ValueError):
    """A stored task path does not import, or does not point to a ``Task``."""


_task_cache: dict[str, Task[..., Any]] = {}


def resolve_task(task_path: str) -> Task[..., Any]:
    """Import ``task_path`` and return the ``Task`` it names (cached per path).

    Raise ``InvalidTaskPath`` when the path does not import (the ``ImportError`` is chained) or when the
    object found is not a ``Task`` (e.g. the function lost its ``@task`` decorator).
    """
    try:
        return _task_cache[task_path]
    except KeyError:
        pass
    try:
        obj = import_string(task_path)
    except ImportError as exc:
        raise InvalidTaskPath(f"Task path {task_path!r} cannot be imported: {exc}") from exc
    if not isinstance(obj, Task):
        raise InvalidTaskPath(
            f"Task path {task_path!r} does not point to a Task (found {type(obj).__module__}."
            f"{type(obj).__qualname__}); is the function still decorated with @task?"
        )
    _task_cache[task_path] = obj
    return obj


def task_for_row(
    task_path: str,
    *,
    priority: int,
    queue_name: str,
    run_after: datetime | None,
    backend: str,
) -> Task[..., Any]:
    """The stored task with the stored settings applied (``Task.using``), as ``get_result`` must return.

    ``using()`` re-validates the task, so it is skipped when the row matches the decorated task. Like
    ``using()``, a ``run_after`` of ``None`` leaves the task's own ``run_after`` unchanged.
    """
    base = resolve_task(task_path)
    if (
        base.priority == priority
        and base.queue_name == queue_name
        and base.backend == backend
        and (run_after is None or base.run_after == run_after)
    ):
        return base
    return base.using(priority=priority, queue_name=queue_name, run_after=run_after, backend=backend)


def errors_from_json(entries: Iterable[Mapping[str, Any]] | None) -> list[TaskError]:
    """``TaskError`` objects from the stored ``errors`` column (one object per failed attempt).

    Extra keys (``attempt``, ``worker_id``) are ignored; a malformed entry yields empty strings instead
    of an exception, so that a damaged row can still be looked at.
    """
    if not entries:
        return []
    errors = []
    for entry in entries:
        if isinstance(entry, Mapping):
            path = entry.get("exception_class_path", "")
            traceback = entry.get("traceback", "")
        else:
            path = traceback = ""
        errors.append(
            TaskError(
                exception_class_path=path if isinstance(path, str) else str(path),
                traceback=traceback if isinstance(traceback, str) else str(traceback),
            )
        )
    return errors


def build_task_result(
    *,
    task: Task[..., Any],
    id: str,
    status: TaskResultStatus | str,
    enqueued_at: datetime | None,
    started_at: datetime | None,
    finished_at: datetime | None,
    last_attempted_at: datetime | None,
    args: list[Any],
    kwargs: dict[str, Any],
    backend: str,
    errors: list[TaskError],
    worker_ids: list[str],
    return_value: Any = None,
) -> TaskResult[..., Any]:
    """A ``TaskResult`` with ``_return_value`` set (it is not an ``__init__`` argument)."""
    result: TaskResult[..., Any] = TaskResult(
        task=task,
        id=id,
        status=TaskResultStatus(status),
        enqueued_at=enqueued_at,
        started_at=started_at,
        finished_at=finished_at,
        last_attempted_at=last_attempted_at,
        args=args,
        kwargs=kwargs,
        backend=backend,
        errors=errors,
        worker_ids=worker_ids,
    )
    object.__setattr__(result, "_return_value", return_value)
    return result
