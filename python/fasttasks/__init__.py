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

from .exceptions import Retry

__all__ = [
    "ExponentialBackoff",
    "FastTasksBackend",
    "Retry",
    "Task",
    "__version__",
    "aenqueue_many",
    "enqueue_many",
    "task",
]

if TYPE_CHECKING:
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
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
