"""``manage.py fasttasks_worker``: the same worker and flags as the ``fasttasks-worker`` command."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from fasttasks._worker import (
    WorkerFailed,
    WorkerSetupError,
    add_worker_arguments,
    options_from_namespace,
    run_worker,
)


class Command(BaseCommand):
    help = (
        "Run fasttasks tasks. First SIGINT/SIGTERM: finish running tasks (for up to --grace seconds) "
        "and exit 0; second: exit at once."
    )
    # The worker checks its own configuration; Django's full system checks would only slow start-up.
    requires_system_checks = []  # noqa: RUF012 — Django declares it as an instance attribute

    def add_arguments(self, parser: CommandParser) -> None:
        add_worker_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            code = run_worker(options_from_namespace(options))
        except (WorkerSetupError, WorkerFailed) as exc:
            raise CommandError(str(exc)) from exc
        if code:
            sys.exit(code)
