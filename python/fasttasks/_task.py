"""``fasttasks.Task`` and ``fasttasks.task``: Django's ``Task`` with fasttasks' options.

``FastTasksBackend.task_class`` is this ``Task``, so on Django 6.1, whose ``@task`` forwards extra
keyword arguments to the backend's ``task_class``, Django's own decorator takes the options::

    from django.tasks import task

    @task(max_attempts=5, retry_on=(httpx.HTTPError,))
    def sync_invoice(invoice_id: int) -> str: ...

On Django 6.0 and on 5.2 with the backport, ``from fasttasks import task`` takes the same arguments and
makes the same ``Task`` (interchangeable with Django's decorator on 6.1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Concatenate, Generic, Literal, ParamSpec, TypeVar, overload

from ._interrupts import timeout_value
from ._unique import UniqueKey, unique_key_value
from .compat import (
    DEFAULT_TASK_BACKEND_ALIAS,
    DEFAULT_TASK_QUEUE_NAME,
    InvalidTask,
    TaskContext,
)
from .compat import Task as _DjangoTask
from .retry import Backoff, RetryOn, backoff_value, max_attempts_value, retry_on_value

__all__ = ["Task", "task"]

P = ParamSpec("P")
R = TypeVar("R")

if TYPE_CHECKING:
    _GenericTask = _DjangoTask
else:

    class _GenericTask(_DjangoTask, Generic[P, R]):
        """Django's ``Task`` is generic for type checkers only (its stubs); at run time, subscripting
        ``fasttasks.Task[P, R]`` needs ``Generic`` in the bases."""

        __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Task(_GenericTask[P, R]):
    """A ``django.tasks.Task`` with fasttasks' options. ``None`` means "the backend's default"
    (``TASKS[alias]["OPTIONS"]["RETRY"]``), which is Django's meaning unless configured: one attempt.

    - ``max_attempts``: attempts before the task ends FAILED (crashes of the worker not counted).
    - ``retry_on``: the exception classes that earn another attempt (default ``Exception``).
    - ``backoff``: the wait before the next attempt, ``(attempt, exception) -> seconds``; default
      ``ExponentialBackoff()``: full jitter, base 1 s, cap 600 s.
    - ``timeout``: seconds an attempt may run before ``fasttasks.TaskTimeout`` ends it (see
      ``fasttasks._interrupts`` for what that guarantees for sync tasks); default: none.
    - ``unique``: while a call with the same arguments is READY or RUNNING, enqueueing it again returns
      that task's result instead of a second task. ``unique_key``: the same, with the key given (a str:
      one at a time for the whole task) or computed from the arguments (a function); implies unique.
    """

    max_attempts: int | None = None
    retry_on: RetryOn | None = None
    backoff: Backoff | None = None
    timeout: float | None = None
    unique: bool = False
    unique_key: UniqueKey | None = None

    if TYPE_CHECKING:

        def using(
            self,
            *,
            priority: int | None = None,
            queue_name: str | None = None,
            run_after: datetime | None = None,
            backend: str | None = None,
        ) -> Task[P, R]:
            """Django's ``using``, which returns a copy of this class (``dataclasses.replace``)."""
            ...

    def with_options(self, **options: Any) -> Task[P, R]:
        """A copy with some of fasttasks' options changed, for one call site, as ``using`` does for
        Django's: ``sync_invoice.with_options(unique_key=f"invoice-{n}", timeout=10).enqueue(n)``.
        ``None`` puts an option back to the backend's default."""
        unknown = set(options) - set(TASK_OPTIONS)
        if unknown:
            raise TypeError(
                f"with_options() got unknown options {sorted(unknown)}; known: {', '.join(TASK_OPTIONS)}"
            )
        changed: Task[P, R] = dataclasses.replace(self, **options)
        return changed

    def __post_init__(self) -> None:
        # Normalized before Django's checks (which ask the backend to validate the task). Frozen, so
        # through object.__setattr__, as Django itself does for its frozen results.
        object.__setattr__(self, "max_attempts", max_attempts_value(self.max_attempts))
        object.__setattr__(self, "retry_on", retry_on_value(self.retry_on))
        object.__setattr__(self, "backoff", backoff_value(self.backoff))
        object.__setattr__(self, "timeout", timeout_value(self.timeout))
        if self.unique is None:  # with_options(unique=None): back to the default
            object.__setattr__(self, "unique", False)
        if not isinstance(self.unique, bool):
            raise InvalidTask(f"unique must be True or False (got {self.unique!r}).")
        object.__setattr__(self, "unique_key", unique_key_value(self.unique_key))
        # Not super(): slots=True makes a new class, which the zero-argument form does not know.
        _DjangoTask.__post_init__(self)


#: The options fasttasks adds to Django's Task.
TASK_OPTIONS = ("max_attempts", "retry_on", "backoff", "timeout", "unique", "unique_key")


@overload
def task(
    function: Callable[Concatenate[TaskContext[Any, Any], P], R],
    *,
    priority: int = ...,
    queue_name: str = ...,
    backend: str = ...,
    takes_context: Literal[True],
    max_attempts: int | None = ...,
    retry_on: RetryOn | None = ...,
    backoff: Backoff | None = ...,
    timeout: float | None = ...,
    unique: bool = ...,
    unique_key: UniqueKey | None = ...,
) -> Task[P, R]: ...
@overload
def task(
    function: Callable[P, R],
    *,
    priority: int = ...,
    queue_name: str = ...,
    backend: str = ...,
    takes_context: Literal[False] = ...,
    max_attempts: int | None = ...,
    retry_on: RetryOn | None = ...,
    backoff: Backoff | None = ...,
    timeout: float | None = ...,
    unique: bool = ...,
    unique_key: UniqueKey | None = ...,
) -> Task[P, R]: ...
@overload
def task(
    *,
    priority: int = ...,
    queue_name: str = ...,
    backend: str = ...,
    takes_context: Literal[True],
    max_attempts: int | None = ...,
    retry_on: RetryOn | None = ...,
    backoff: Backoff | None = ...,
    timeout: float | None = ...,
    unique: bool = ...,
    unique_key: UniqueKey | None = ...,
) -> Callable[[Callable[Concatenate[TaskContext[Any, Any], P], R]], Task[P, R]]: ...
@overload
def task(
    *,
    priority: int = ...,
    queue_name: str = ...,
    backend: str = ...,
    takes_context: Literal[False] = ...,
    max_attempts: int | None = ...,
    retry_on: RetryOn | None = ...,
    backoff: Backoff | None = ...,
    timeout: float | None = ...,
    unique: bool = ...,
    unique_key: UniqueKey | None = ...,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...
def task(
    function: Callable[..., Any] | None = None,
    *,
    priority: int = 0,
    queue_name: str = DEFAULT_TASK_QUEUE_NAME,
    backend: str = DEFAULT_TASK_BACKEND_ALIAS,
    takes_context: bool = False,
    max_attempts: int | None = None,
    retry_on: RetryOn | None = None,
    backoff: Backoff | None = None,
    timeout: float | None = None,
    unique: bool = False,
    unique_key: UniqueKey | None = None,
) -> Any:
    """Django's ``@task``, with fasttasks' options; bare (``@task``) or called (``@task(...)``)."""

    def wrap(func: Callable[..., Any]) -> Task[Any, Any]:
        return Task(
            func=func,
            priority=priority,
            run_after=None,  # Django 6.0's Task requires it
            queue_name=queue_name,
            backend=backend,
            takes_context=takes_context,
            max_attempts=max_attempts,
            retry_on=retry_on,
            backoff=backoff,
            timeout=timeout,
            unique=unique,
            unique_key=unique_key,
        )

    return wrap if function is None else wrap(function)
