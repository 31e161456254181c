"""System checks that need the database; they run only when a command asks for database checks
(``migrate``, ``check --database``, the test runner), never on every ``manage.py`` invocation.

The configuration checks (app installed, database alias, vendor) live in ``FastTasksBackend.check()``,
which Django's own ``check_tasks`` calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.core import checks
from django.db import connections


@checks.register(checks.Tags.database)
def check_task_tables(
    app_configs: Sequence[AppConfig] | None = None,
    databases: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[checks.CheckMessage]:
    """Warn when a database used by a ``FastTasksBackend`` has no task table (migrate not run)."""
    if not databases:
        return []
    from .backend import SUPPORTED_VENDORS, FastTasksBackend
    from .compat import task_backends

    try:
        backends = task_backends.all()
    except Exception:  # a broken TASKS setting is reported by Django's check_tasks
        return []
    messages: list[checks.CheckMessage] = []
    seen: set[str] = set()
    for backend in backends:
        if not isinstance(backend, FastTasksBackend) or backend.database_alias in seen:
            continue
        if backend.database_alias not in databases:
            continue
        seen.add(backend.database_alias)
        if connections[backend.database_alias].vendor in SUPPORTED_VENDORS:
            messages.extend(backend.check_table())
    return messages
