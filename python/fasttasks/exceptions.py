"""Exceptions that fasttasks itself records as a task's error, and ``Retry``, which a task raises.

A task's ``errors`` hold the dotted path of the exception's class; Django's
``TaskError.exception_class`` imports it, so every path the worker writes must name a class that exists.
"""

from __future__ import annotations

__all__ = ["Retry", "TaskCancelled", "TaskTimeout", "WorkerCrashed", "WorkerError"]


class WorkerError(Exception):
    """The worker lost an attempt without an outcome from the task (an executor failure)."""


class WorkerCrashed(WorkerError):
    """The worker process running the attempt died (stopped sending heartbeats); it was rescued."""


class Retry(Exception):
    """Raised inside a task to ask for another attempt, whatever the task's ``retry_on``.

    The attempt counts: with attempts left, the task goes back to READY and runs again after ``delay``
    seconds (default: the task's backoff); without, it ends FAILED with this error.

        raise fasttasks.Retry(delay=30)
    """

    def __init__(self, message: str = "", *, delay: float | None = None) -> None:
        if delay is not None and (isinstance(delay, bool) or not delay >= 0 or delay == float("inf")):
            raise ValueError(f"Retry(delay=...) must be a finite number of seconds >= 0 (got {delay!r})")
        super().__init__(message or (f"retry in {delay:g}s" if delay is not None else "retry requested"))
        self.delay = delay


class TaskTimeout(TimeoutError):
    """The attempt ran past its task's ``timeout``: raised inside a sync task's thread, or in place of
    the cancelled coroutine. A ``TimeoutError``, so ``except TimeoutError`` catches it, and the default
    ``retry_on`` (``Exception``) retries it."""


class TaskCancelled(Exception):
    """``fasttasks.cancel()`` stopped the task: recorded as its last error (the task ends FAILED, so that
    Django's four statuses stay valid), raised inside a running sync task's thread, or in place of the
    cancelled coroutine. Never retried."""
