"""Unique tasks: ``@task(unique=True)`` or ``@task(unique_key=...)``.

While a task with the same key is READY or RUNNING, enqueueing it again returns that task's
``TaskResult`` instead of a second row. The database decides, not a read-then-write: the key goes in
``fasttasks_task.unique_key``, under a unique index over the rows that are READY or RUNNING, and the
insert is ``ON CONFLICT DO NOTHING``. Two enqueues racing for one key (other processes, other
transactions) therefore make one row: the second waits for the first's transaction, then finds its row.
A finished task (SUCCESSFUL or FAILED) leaves the index, so the key is free again; a task waiting for a
retry is still READY, so it keeps its key.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import _json
from .compat import InvalidTask

if TYPE_CHECKING:
    from django.db.backends.utils import CursorWrapper

    from .backend import FastTasksBackend
    from .models import TaskRecord

__all__ = ["insert_unique", "unique_key_for", "unique_key_value"]

#: ``unique_key`` as declared: one key for every call (the task runs one at a time), or a function of
#: the call's arguments returning the key.
UniqueKey = str | Callable[..., str]

#: How often an enqueue retries when the conflicting task finished before it could be read.
INSERT_ATTEMPTS = 5
ACTIVE = ("READY", "RUNNING")


def unique_key_value(value: object, where: str = "unique_key") -> UniqueKey | None:
    if value is None:
        return None
    if isinstance(value, str):
        if not value:
            raise InvalidTask(f"{where} must not be empty.")
        return value
    if callable(value):
        key: Callable[..., str] = value
        return key
    raise InvalidTask(f"{where} must be a str or a callable of the task's arguments (got {value!r}).")


def unique_key_for(task: Any, args_text: str, kwargs_text: str) -> str | None:
    """The digest stored in ``unique_key`` for this call, or ``None`` for a task that is not unique.

    ``unique=True``: the task path and the call, as the worker will receive it (JSON), bound to the
    function's parameters with their defaults: ``f(7)``, ``f(invoice_id=7)`` and ``f(7, force=False)``
    are the same call.
    ``unique_key``: the task path and the key (called with the arguments when it is a function).
    """
    declared = getattr(task, "unique_key", None)
    if declared is None and not getattr(task, "unique", False):
        return None
    if declared is None:
        material = f"{task.module_path}\0{_canonical_call(task, args_text, kwargs_text)}"
    else:
        if callable(declared):
            value = declared(*_json.loads(args_text), **_json.loads(kwargs_text))
            if not isinstance(value, str):
                raise TypeError(f"unique_key of {task.module_path} returned {value!r}; it must return a str.")
        else:
            value = declared
        material = f"{task.module_path}\0\0{value}"
    return hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()


def _canonical_call(task: Any, args_text: str, kwargs_text: str) -> str:
    args, kwargs = _json.loads(args_text), _json.loads(kwargs_text)
    try:
        signature = _signature(task.func)
        # A takes_context task's first parameter is the context, which the caller does not pass.
        bound = signature.bind(*([None] if task.takes_context else []), *args, **kwargs)
    except (TypeError, ValueError):
        # Arguments that do not fit (the attempt will fail on them) or no signature: as given.
        return json.dumps([args, kwargs], sort_keys=True, separators=(",", ":"))
    bound.apply_defaults()
    arguments = list(bound.arguments.items())[1 if task.takes_context else 0 :]
    return json.dumps(arguments, sort_keys=True, separators=(",", ":"), default=repr)


@functools.lru_cache(maxsize=1024)
def _signature(func: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(func)


def insert_unique(
    backend: FastTasksBackend,
    cursor: CursorWrapper,
    row: Sequence[Any],
    key: str,
    notify: bool,
    queue_name: str,
) -> TaskRecord | None:
    """Inserts ``row`` with its unique ``key``; ``None`` if inserted, else the active row holding the key."""
    from .backend import _COLUMNS, NOTIFY_CHANNEL, TABLE
    from .models import TaskRecord

    casts = "%s::jsonb, %s::jsonb" if cursor.db.vendor == "postgresql" else "%s, %s"
    sql = (
        f"INSERT INTO {TABLE} ({_COLUMNS}, unique_key) "
        f"VALUES (%s, %s, %s, %s, %s, 'READY', {casts}, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
    )
    for _ in range(INSERT_ATTEMPTS):
        cursor.execute(sql, [*row, key])
        if cursor.rowcount == 1:
            if notify:
                cursor.execute("SELECT pg_notify(%s, %s)", [NOTIFY_CHANNEL, queue_name])
            return None
        found = (
            TaskRecord.objects.using(backend.database_alias)
            .filter(backend_name=backend.alias, unique_key=key, status__in=ACTIVE)
            .first()
        )
        if found is not None:
            return found
        # The holder finished between the two statements: the key is free, try again.
    raise RuntimeError(
        f"could not enqueue unique task {row[1]}: its key stayed taken by a task that could not be read "
        f"({INSERT_ATTEMPTS} tries). Under REPEATABLE READ or SERIALIZABLE, a concurrent enqueue of the "
        "same key is invisible to this transaction; enqueue unique tasks under READ COMMITTED."
    )
