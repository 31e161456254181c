"""``fasttasks-worker``: run a worker process for a Django project.

    fasttasks-worker --settings mysite.settings --queues default,emails --concurrency 16

The same flags work as ``python manage.py fasttasks_worker``.
"""

from __future__ import annotations

import argparse
import os
import sys

from ._worker import (
    WorkerFailed,
    WorkerSetupError,
    add_worker_arguments,
    options_from_namespace,
    run_worker,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fasttasks-worker",
        description="Run fasttasks tasks for a Django project. First SIGINT/SIGTERM: finish running "
        "tasks (for up to --grace seconds) and exit 0; second: exit at once.",
    )
    parser.add_argument(
        "--settings",
        help="Django settings module (default: the DJANGO_SETTINGS_MODULE environment variable).",
    )
    parser.add_argument(
        "--pythonpath",
        action="append",
        default=[],
        help="A directory to add to the Python path (repeatable). The current directory is always added.",
    )
    parser.add_argument(
        "-v",
        "--verbosity",
        type=int,
        choices=[0, 1, 2, 3],
        default=1,
        help="0: errors; 1: worker events and failed tasks (default); 2: every task; 3: debug.",
    )
    add_worker_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    namespace = parser.parse_args(argv)
    # As manage.py does: the project's modules are importable from where the worker is started.
    for path in reversed([os.getcwd(), *namespace.pythonpath]):
        if path not in sys.path:
            sys.path.insert(0, path)
    if namespace.settings:
        os.environ["DJANGO_SETTINGS_MODULE"] = namespace.settings
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        parser.error("no Django settings: pass --settings or set DJANGO_SETTINGS_MODULE")
    try:
        options = options_from_namespace(namespace)
        import django

        django.setup()
        return run_worker(options)
    except WorkerSetupError as exc:
        print(f"fasttasks-worker: error: {exc}", file=sys.stderr)
        return 2
    except WorkerFailed as exc:
        print(f"fasttasks-worker: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
