"""fasttasks: a production backend and worker for Django's tasks framework.

Importing this package is cheap: it imports neither Django models nor the backend. Everything but the
exceptions is loaded on first access.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("fasttasks")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
    __version__ = "0+unknown"

from .exceptions import Retry, TaskCancelled, TaskTimeout

__all__ = [
    "Cancellation",
    "ExponentialBackoff",
    "FastTasksBackend",
    "Retry",
    "Task",
    "TaskCancelled",
    "TaskTimeout",
    "__version__",
    "acancel",
    "aenqueue_many",
    "cancel",
    "enqueue_many",
    "is_cancelled",
    "task",
]

if TYPE_CHECKING:
    from ._cancel import Cancellation, acancel, cancel, is_cancelled
    from ._task import Task, task
    from .backend import FastTasksBackend, aenqueue_many, enqueue_many
    from .retry import ExponentialBackoff

_LAZY = {
    "enqueue_many": "backend",
    "aenqueue_many": "backend",
    "FastTasksBackend": "backend",
    "Task": "_task",
    "task": "_task",
    "ExponentialBackoff": "retry",
    "cancel": "_cancel",
    "acancel": "_cancel",
    "is_cancelled": "_cancel",
    "Cancellation": "_cancel",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
