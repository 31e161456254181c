"""fasttasks: a production backend and worker for Django's tasks framework.

Importing this package is cheap: it imports neither Django models nor the backend. ``enqueue_many`` and
``FastTasksBackend`` are loaded on first access.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("fasttasks")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
    __version__ = "0+unknown"

__all__ = ["FastTasksBackend", "__version__", "enqueue_many"]

if TYPE_CHECKING:
    from .backend import FastTasksBackend, enqueue_many


def __getattr__(name: str) -> Any:
    if name in ("enqueue_many", "FastTasksBackend"):
        from . import backend

        return getattr(backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
