"""Rebuilding ``Task`` and ``TaskResult`` objects from stored rows.

Shared by the backend (``get_result``) and the worker runner (``fasttasks._runner``); keep the names and
signatures stable.
"""

from __future__ import annotations

import dataclasses
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

    Raise ``InvalidTaskPath`` when the path does not import (the ``ImportError``, or whatever importing
    the module raised, is chained) or when the object found is not a ``Task`` (e.g. the function lost
    its ``@task`` decorator).
    """
    try:
        return _task_cache[task_path]
    except KeyError:
        pass
    try:
        obj = import_string(task_path)
    except ImportError as exc:
        raise InvalidTaskPath(f"Task path {task_path!r} cannot be imported: {exc}") from exc
    except Exception as exc:  # the module itself fails to import (its code raised)
        raise InvalidTaskPath(
            f"Task path {task_path!r} cannot be imported: {type(exc).__name__}: {exc}"
        ) from exc
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


# -- building TaskResults fast ------------------------------------------------------------------------
#
# The worker builds a TaskResult for every attempt (the signals and TaskContext need it) and enqueue one
# for every task; the dataclass constructor costs about 4.5 µs, most of it ``__post_init__`` running
# ``normalize_json`` over arguments that, here, have just come out of ``json.loads`` and so are already
# normal. When ``TaskResult`` is exactly the class this was written against (these fields, and a
# ``__post_init__`` that only normalizes), its fields are set directly; otherwise the constructor runs.

_RESULT_FIELDS = frozenset(
    {
        "task",
        "id",
        "status",
        "enqueued_at",
        "started_at",
        "finished_at",
        "last_attempted_at",
        "args",
        "kwargs",
        "backend",
        "errors",
        "worker_ids",
        "_return_value",
    }
)


def _can_build_directly() -> bool:
    try:
        names = {field.name for field in dataclasses.fields(TaskResult)}
    except TypeError:
        return False
    post_init = getattr(TaskResult, "__post_init__", None)
    code = getattr(post_init, "__code__", None)
    if names != _RESULT_FIELDS or code is None:
        return False
    # What __post_init__ may touch: normalize_json over args and kwargs, set through object.__setattr__.
    return set(code.co_names) <= {"object", "__setattr__", "normalize_json", "args", "kwargs"}


_BUILD_DIRECTLY = _can_build_directly()
_new_object = object.__new__
_set_field = object.__setattr__


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
    """A ``TaskResult`` with ``_return_value`` set (it is not an ``__init__`` argument).

    ``args`` and ``kwargs`` must already be JSON-normal (as ``json.loads`` returns them).
    """
    if _BUILD_DIRECTLY:
        built: TaskResult[..., Any] = _new_object(TaskResult)
        _set_field(built, "task", task)
        _set_field(built, "id", id)
        _set_field(built, "status", TaskResultStatus(status))
        _set_field(built, "enqueued_at", enqueued_at)
        _set_field(built, "started_at", started_at)
        _set_field(built, "finished_at", finished_at)
        _set_field(built, "last_attempted_at", last_attempted_at)
        _set_field(built, "args", args)
        _set_field(built, "kwargs", kwargs)
        _set_field(built, "backend", backend)
        _set_field(built, "errors", errors)
        _set_field(built, "worker_ids", worker_ids)
        _set_field(built, "_return_value", return_value)
        return built
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
