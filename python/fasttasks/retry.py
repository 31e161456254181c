"""Retries: how many attempts a task gets, which exceptions earn another one, and how long to wait.

Declared per task (``@task(max_attempts=5, retry_on=(httpx.HTTPError,), backoff=...)``) or for a whole
backend (``TASKS[alias]["OPTIONS"]["RETRY"]``, same names); per-task values win. Defaults keep Django's
meaning: one attempt, a raised exception ends the task FAILED.

A worker dying mid-attempt is not a failure of the task: such attempts count against the worker's
``--max-crashes``, never against ``max_attempts``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from django.utils.module_loading import import_string

from .compat import InvalidTask
from .exceptions import Retry

__all__ = ["Backoff", "ExponentialBackoff", "RetryPolicy"]

#: ``(attempt, exception) -> seconds``: the wait after attempt ``attempt`` (counting from 1, as
#: ``TaskContext.attempt`` does) failed with ``exception``.
Backoff: TypeAlias = Callable[[int, BaseException], float]

#: A task's (or a backend's) ``retry_on`` as given: one class, or several; dotted paths in settings.
RetryOn: TypeAlias = type[BaseException] | tuple[type[BaseException], ...]


@dataclass(frozen=True, slots=True)
class ExponentialBackoff:
    """Exponential backoff with full jitter: after the n-th attempt, a wait drawn uniformly from
    ``[0, min(cap, base * 2 ** (n - 1))]`` seconds. Randomness spreads out the retries of many tasks that
    failed together (an outage), instead of sending them back at the same moment; ``jitter=False``
    gives the plain exponential value."""

    base: float = 1.0
    cap: float = 600.0
    jitter: bool = True

    def __post_init__(self) -> None:
        for name in ("base", "cap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                raise InvalidTask(f"backoff {name} must be a finite number of seconds > 0 (got {value!r}).")
        if self.cap < self.base:
            raise InvalidTask(f"backoff cap ({self.cap!r}) must be at least its base ({self.base!r}).")

    def __call__(self, attempt: int, exception: BaseException) -> float:
        # 2 ** 64 is far past any cap; bounding the exponent keeps huge attempt numbers finite.
        ceiling = min(self.cap, self.base * 2.0 ** min(max(attempt - 1, 0), 64))
        return random.uniform(0.0, ceiling) if self.jitter else ceiling


DEFAULT_BACKOFF = ExponentialBackoff()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """What happens when an attempt raises."""

    retry_on: tuple[type[BaseException], ...] = (Exception,)
    backoff: Backoff = DEFAULT_BACKOFF

    def delay(self, exception: BaseException, attempt: int, failures: int, max_attempts: int) -> float | None:
        """Seconds until the next attempt, or ``None`` when the task has failed for good.

        ``attempt``: the number of the attempt that raised (crashed attempts included, as
        ``TaskContext.attempt`` counts); ``failures``: attempts that raised, this one included.
        ``fasttasks.Retry`` asks for a retry whatever ``retry_on`` says; its attempt still counts.
        """
        if failures >= max_attempts:
            return None
        if isinstance(exception, Retry):
            if exception.delay is not None:
                return exception.delay
        elif not isinstance(exception, self.retry_on):
            return None
        seconds = self.backoff(attempt, exception)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds < math.inf:
            raise ValueError(f"the backoff returned {seconds!r}, not a finite number of seconds >= 0")
        return float(seconds)


def max_attempts_value(value: object, where: str = "max_attempts") -> int | None:
    """``value`` checked: ``None`` (not set) or a whole number >= 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidTask(f"{where} must be a whole number of at least 1 (got {value!r}).")
    return value


def retry_on_value(value: object, where: str = "retry_on") -> tuple[type[BaseException], ...] | None:
    """``value`` as a tuple of exception classes (dotted paths imported), or ``None`` (not set)."""
    if value is None:
        return None
    items: Iterable[object] = value if isinstance(value, tuple | list) else (value,)
    classes = []
    for item in items:
        if isinstance(item, str):
            try:
                item = import_string(item)
            except ImportError as exc:
                raise InvalidTask(f"{where}: cannot import {item!r} ({exc}).") from exc
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise InvalidTask(f"{where} must hold exception classes (got {item!r}).")
        classes.append(item)
    if not classes:
        raise InvalidTask(
            f"{where} must name at least one exception class (for no retries, leave max_attempts at 1)."
        )
    return tuple(classes)


def backoff_value(value: object, where: str = "backoff") -> Backoff | None:
    """``value`` as a backoff function: ``None`` (not set), a callable ``(attempt, exception) ->
    seconds`` (``ExponentialBackoff`` is one), ``{"base": ..., "cap": ..., "jitter": ...}`` for an
    ``ExponentialBackoff``, or (in settings) the dotted path of a callable."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        unknown = set(value) - {"base", "cap", "jitter"}
        if unknown:
            raise InvalidTask(f"{where}: unknown keys {sorted(unknown)} (expected base, cap, jitter).")
        return ExponentialBackoff(**value)
    if isinstance(value, str):
        try:
            value = import_string(value)
        except ImportError as exc:
            raise InvalidTask(f"{where}: cannot import {value!r} ({exc}).") from exc
    if not callable(value):
        raise InvalidTask(f"{where} must be a callable (attempt, exception) -> seconds (got {value!r}).")
    backoff: Backoff = value
    return backoff


@dataclass(frozen=True, slots=True)
class RetryDefaults:
    """A backend's ``OPTIONS["RETRY"]``: what tasks that do not say otherwise get."""

    max_attempts: int = 1
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    backoff: Backoff = DEFAULT_BACKOFF

    @classmethod
    def from_options(cls, options: Any, alias: str) -> RetryDefaults:
        if options is None:
            return cls()
        where = f"TASKS[{alias!r}]['OPTIONS']['RETRY']"
        if not isinstance(options, Mapping):
            raise InvalidTask(f"{where} must be a dict (max_attempts, retry_on, backoff).")
        unknown = set(options) - {"max_attempts", "retry_on", "backoff"}
        if unknown:
            raise InvalidTask(
                f"{where}: unknown keys {sorted(unknown)} (expected max_attempts, retry_on, backoff)."
            )
        return cls(
            max_attempts=max_attempts_value(options.get("max_attempts"), f"{where}['max_attempts']") or 1,
            retry_on=retry_on_value(options.get("retry_on"), f"{where}['retry_on']") or (Exception,),
            backoff=backoff_value(options.get("backoff"), f"{where}['backoff']") or DEFAULT_BACKOFF,
        )

    def policy_for(self, task: object) -> RetryPolicy:
        """The task's own ``retry_on`` / ``backoff`` where it has them, these defaults otherwise."""
        retry_on = getattr(task, "retry_on", None)
        backoff = getattr(task, "backoff", None)
        return RetryPolicy(
            retry_on=retry_on if retry_on is not None else self.retry_on,
            backoff=backoff if backoff is not None else self.backoff,
        )

    def max_attempts_for(self, task: object) -> int:
        own = max_attempts_value(getattr(task, "max_attempts", None))
        return own if own is not None else self.max_attempts
