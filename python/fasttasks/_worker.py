"""Runs one worker process: shared by ``fasttasks-worker`` (cli.py) and ``manage.py fasttasks_worker``.

The Python main thread keeps control of the process: it owns the signal handlers (first SIGINT/SIGTERM:
graceful stop; second: immediate exit), logs what the Rust side reports, and prints the periodic summary.
The Rust side claims, executes (on its own Python threads) and completes.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from types import FrameType
from typing import Any

from django.conf import settings

logger = logging.getLogger("fasttasks.worker")

#: Exit code after a second signal cut the graceful stop short.
EXIT_ABORTED = 1
#: Seconds between two summary lines while running.
SUMMARY_EVERY = 10.0


class WorkerSetupError(Exception):
    """The worker cannot start with these settings or flags (the message says why)."""


class WorkerFailed(Exception):
    """The worker stopped on an error it cannot retry (e.g. the database was unreachable at start)."""


@dataclass(frozen=True)
class WorkerOptions:
    backend: str = "default"
    queues: tuple[str, ...] | None = ("default",)  # None = every queue
    concurrency: int = 8
    prefetch: int = 1000
    worker_id: str | None = None
    batch: bool = False
    max_tasks: int | None = None
    interval: float = 1.0
    heartbeat: float = 2.0
    dead_after: float = 10.0
    max_crashes: int = 3
    health_port: int | None = None  # None: no health server; 0: any free port
    health_host: str = "0.0.0.0"
    grace: float = 25.0
    processes: int = 1
    verbosity: int = 1


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags both commands share (``--settings``, ``--pythonpath`` and ``-v`` come from each command)."""
    parser.add_argument(
        "--queues",
        default="default",
        help="Comma-separated queue names to run, or '*' for every queue (default: default).",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=8,
        help=(
            "Tasks run at once: this many task threads for sync tasks, and up to this many coroutine "
            "tasks on the worker's event loop (default: 8)."
        ),
    )
    parser.add_argument(
        "--prefetch",
        type=_non_negative_int,
        default=1000,
        help=(
            "Most tasks claimed ahead of free slots. Claim-ahead follows the pace: about 20 ms of work "
            "at the current rate, so slow tasks are claimed only for free slots; 0 turns it off "
            "(default: 1000)."
        ),
    )
    parser.add_argument("--backend", default="default", help="The TASKS alias to run (default: default).")
    parser.add_argument(
        "--worker-id",
        type=_worker_id,
        default=None,
        help="Id recorded in each attempt's worker_ids (default: host-pid-random).",
    )
    parser.add_argument("--batch", action="store_true", help="Run every task that is due, then exit 0.")
    parser.add_argument(
        "--max-tasks", type=_positive_int, default=None, help="Exit after claiming this many tasks."
    )
    parser.add_argument(
        "--interval",
        type=_interval,
        default=1.0,
        help="Seconds between polls when idle and no wake-up arrives (default: 1).",
    )
    add_reliability_arguments(parser)


def add_reliability_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--grace",
        type=_interval,
        default=25.0,
        help=(
            "Seconds running tasks get to finish after the first SIGTERM/SIGINT; then the worker exits "
            "and they are rescued like a dead worker's (default: 25, below the 30 s after which "
            "Kubernetes and systemd send SIGKILL)."
        ),
    )
    parser.add_argument(
        "--processes",
        type=_positive_int,
        default=1,
        help=(
            "Worker processes to run, each with its own interpreter and GIL, under a supervisor that "
            "forwards signals and restarts a process that dies (default: 1, no supervisor)."
        ),
    )
    parser.add_argument(
        "--heartbeat",
        type=_interval,
        default=2.0,
        help="Seconds between this worker's heartbeats, sent from its Rust runtime (default: 2).",
    )
    parser.add_argument(
        "--dead-after",
        type=_interval,
        default=10.0,
        help=(
            "A worker silent this long is dead: the elected leader puts its running tasks back to READY "
            "(default: 10; at least twice --heartbeat)."
        ),
    )
    parser.add_argument(
        "--max-crashes",
        type=_positive_int,
        default=3,
        help="A task whose worker died this many times ends FAILED instead of running again (default: 3).",
    )
    parser.add_argument(
        "--health-port",
        type=_port,
        default=None,
        metavar="PORT",
        help=(
            "Serve HTTP health checks on this port: GET /live, /ready (200, or 503 when the heartbeat is "
            "stale or the worker is stopping) and /health (JSON). 0 picks a free port (logged). Default: off."
        ),
    )
    parser.add_argument(
        "--health-host",
        default="0.0.0.0",
        metavar="HOST",
        help="Address the health checks listen on (default: 0.0.0.0, every interface, for probes from "
        "outside the container).",
    )


def options_from_namespace(namespace: argparse.Namespace | dict[str, Any]) -> WorkerOptions:
    values = vars(namespace) if isinstance(namespace, argparse.Namespace) else namespace
    spec = [name.strip() for name in str(values["queues"]).split(",") if name.strip()]
    if "*" in spec and len(spec) > 1:
        raise WorkerSetupError("--queues: '*' cannot be combined with queue names")
    if not spec:
        raise WorkerSetupError("--queues: give at least one queue name, or '*'")
    heartbeat, dead_after = values.get("heartbeat", 2.0), values.get("dead_after", 10.0)
    if heartbeat <= 0:
        raise WorkerSetupError("--heartbeat must be more than 0 seconds")
    if dead_after < 2 * heartbeat:
        raise WorkerSetupError(
            f"--dead-after {dead_after:g} must be at least twice --heartbeat {heartbeat:g}, or live workers "
            "would be taken for dead"
        )
    return WorkerOptions(
        backend=values["backend"],
        queues=None if spec == ["*"] else tuple(spec),
        concurrency=values["concurrency"],
        prefetch=values.get("prefetch", 1000),
        worker_id=values["worker_id"],
        batch=values["batch"],
        max_tasks=values["max_tasks"],
        interval=values["interval"],
        heartbeat=heartbeat,
        dead_after=dead_after,
        max_crashes=values.get("max_crashes", 3),
        health_port=values.get("health_port"),
        health_host=values.get("health_host") or "0.0.0.0",
        grace=values.get("grace", 25.0),
        processes=values.get("processes", 1),
        verbosity=int(values.get("verbosity", 1)),
    )


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _interval(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError("must be a finite number of seconds >= 0")
    return value


def _worker_id(text: str) -> str:
    if not text or len(text) > 64:
        raise argparse.ArgumentTypeError("must be 1 to 64 characters")
    return text


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be a port number, 0 to 65535")
    return value


def default_worker_id() -> str:
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def database_settings(alias: str) -> dict[str, Any]:
    """What the Rust core needs to reach Django's database ``alias``, from ``settings.DATABASES``."""
    from django.db import connections

    if alias not in settings.DATABASES:
        raise WorkerSetupError(f"the queue database {alias!r} is not in settings.DATABASES")
    connection = connections[alias]
    params = connection.settings_dict
    if connection.vendor == "sqlite":
        name = str(params["NAME"])
        if name == ":memory:" or "mode=memory" in name:
            raise WorkerSetupError(
                f"database {alias!r} is an in-memory SQLite database; a worker process cannot see it. "
                "Use a file."
            )
        check_single_sqlite_library()
        timeout = (params.get("OPTIONS") or {}).get("timeout", 5.0)
        return {"vendor": "sqlite", "path": name, "busy_timeout": float(timeout)}
    if connection.vendor == "postgresql":
        options = params.get("OPTIONS") or {}
        extra = [
            (key, str(options[key]))
            for key in ("sslmode", "application_name")
            if options.get(key) is not None
        ]
        return {
            "vendor": "postgresql",
            "host": params.get("HOST") or default_postgres_host(int(params.get("PORT") or 5432)),
            "port": int(params.get("PORT") or 5432),
            "user": params.get("USER") or os.environ.get("PGUSER") or "postgres",
            "password": params.get("PASSWORD") or None,
            "dbname": params["NAME"],
            "options": extra,
        }
    raise WorkerSetupError(
        f"database {alias!r} uses {connection.vendor!r}; fasttasks supports PostgreSQL and SQLite"
    )


def check_single_sqlite_library() -> None:
    """Refuse to run if the Rust core and Python's sqlite3 module use different SQLite libraries.

    Tasks in the worker process use Django's ORM (Python's sqlite3) on the same database file the Rust
    core claims from. SQLite coordinates connections of one process inside the library, so two copies of
    it in one process do not see each other's locks and corrupt the database. The extension links the
    system's shared libsqlite3 for that reason; a Python whose sqlite3 module carries its own SQLite
    (e.g. a statically linked standalone build) shows up here as a different version.
    """
    import sqlite3

    from ._core import sqlite_version

    if sqlite_version() != sqlite3.sqlite_version:
        raise WorkerSetupError(
            f"this Python's sqlite3 module uses SQLite {sqlite3.sqlite_version}, but fasttasks' worker links "
            f"the system SQLite {sqlite_version()}; two SQLite libraries in one process corrupt the database "
            "file. Use a Python whose sqlite3 module links the system libsqlite3 (most Linux distribution "
            "and pyenv builds do), or keep the queue on PostgreSQL."
        )
    if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
        raise WorkerSetupError(
            f"the worker needs SQLite {'.'.join(map(str, MIN_SQLITE_VERSION))} or newer (it writes results "
            f"with UPDATE ... FROM); this system's SQLite is {sqlite3.sqlite_version}. Upgrade libsqlite3, "
            "or keep the queue on PostgreSQL."
        )


#: The oldest SQLite the worker's statements run on (``UPDATE … FROM`` came in 3.33).
MIN_SQLITE_VERSION = (3, 33, 0)


#: Where libpq looks for the server's Unix socket when HOST is empty (Debian, macOS Homebrew, default).
SOCKET_DIRECTORIES = ("/var/run/postgresql", "/private/tmp", "/tmp")


def default_postgres_host(port: int, directories: tuple[str, ...] = SOCKET_DIRECTORIES) -> str:
    """What an empty ``HOST`` means to Django (libpq): ``$PGHOST``, else the local Unix socket, else
    localhost. The worker must reach the server the same way Django does (socket and TCP connections may
    be authenticated differently)."""
    if os.environ.get("PGHOST"):
        return os.environ["PGHOST"]
    for directory in directories:
        if os.path.exists(os.path.join(directory, f".s.PGSQL.{port}")):
            return directory  # sqlx treats a host starting with "/" as a socket directory
    return "localhost"


#: The pid tells apart the lines of the processes of one ``--processes`` supervisor.
LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"


def configure_logging(verbosity: int) -> None:
    """0: errors only; 1: worker life and failed tasks; 2: every task; 3: debug."""
    from .compat import TASKS_LOGGER_NAME

    worker_level = {0: logging.ERROR, 1: logging.INFO, 2: logging.INFO}.get(verbosity, logging.DEBUG)
    tasks_level = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO}.get(verbosity, logging.DEBUG)
    for name, level in (("fasttasks", worker_level), (TASKS_LOGGER_NAME, tasks_level)):
        named = logging.getLogger(name)
        named.setLevel(level)
        if not named.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter(LOG_FORMAT))
            named.addHandler(handler)
            named.propagate = False


class _Signals:
    """First SIGINT/SIGTERM: graceful stop. Second: immediate stop."""

    def __init__(self, worker: Any, grace: float) -> None:
        self.worker = worker
        self.grace = grace
        self.count = 0
        self.previous: dict[int, Any] = {}
        #: When the graceful stop began (monotonic), for ``--grace``.
        self.stopping_since: float | None = None

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        if self.count == 1:
            self.stopping_since = time.monotonic()
            stats = self.worker.stats()
            logger.info(
                "%s received: stopping — no new tasks; waiting up to %gs for %d running to finish "
                "(send again to exit at once)",
                name,
                self.grace,
                stats["in_flight"],
            )
            self.worker.stop()
        else:
            logger.warning("%s received again: exiting now; running tasks are left unfinished", name)
            self.worker.abort()

    def check_grace(self) -> None:
        """Past ``--grace`` since the first signal: exit as after a second signal."""
        if self.count != 1 or self.stopping_since is None:
            return
        if time.monotonic() - self.stopping_since < self.grace:
            return
        self.count += 1
        logger.warning(
            "grace period of %gs is over: exiting now; %d running tasks are left unfinished and will be "
            "rescued (run again) by the other workers",
            self.grace,
            self.worker.stats()["in_flight"],
        )
        self.worker.abort()


def run_worker(options: WorkerOptions) -> int:
    """Run a worker until it is stopped or (``--batch``/``--max-tasks``) done. Returns the exit code."""
    from . import __version__
    from ._core import Worker
    from ._runner import Runner
    from .backend import FastTasksBackend
    from .compat import task_backends

    configure_logging(options.verbosity)
    if options.processes > 1:
        from ._supervisor import run_supervisor

        return run_supervisor(options)
    from ._supervisor import SUPERVISOR_PID_ENV, die_with_supervisor

    die_with_supervisor()
    try:
        backend = task_backends[options.backend]
    except Exception as exc:
        raise WorkerSetupError(f"--backend {options.backend!r}: {exc}") from exc
    if not isinstance(backend, FastTasksBackend):
        raise WorkerSetupError(
            f"--backend {options.backend!r} is {type(backend).__module__}.{type(backend).__qualname__}; "
            "the worker runs fasttasks.backend.FastTasksBackend backends only"
        )
    missing = backend.check_table()
    if missing:
        # Claims would fail on every round; say what to do instead of retrying forever.
        raise WorkerSetupError(f"{missing[0].msg} {missing[0].hint}")
    worker_id = options.worker_id or default_worker_id()
    runner = Runner(options.backend, worker_id, options.concurrency)
    worker = Worker(
        database_settings(backend.database_alias),
        runner,
        backend=options.backend,
        worker_id=worker_id,
        queues=list(options.queues) if options.queues is not None else None,
        concurrency=options.concurrency,
        prefetch=options.prefetch,
        batch=options.batch,
        max_tasks=options.max_tasks,
        poll_interval=options.interval,
        listen=backend.listen_notify,
        hostname=socket.gethostname(),
        heartbeat_interval=options.heartbeat,
        dead_after=options.dead_after,
        max_crashes=options.max_crashes,
        health_port=options.health_port,
        health_host=options.health_host,
    )
    queues = "*" if options.queues is None else ",".join(options.queues)
    mode = "batch" if options.batch else "continuous"
    wake_ups = "wake-ups on" if backend.listen_notify else f"polling every {options.interval:g}s"
    logger.info(
        "fasttasks %s worker %s: database %s, backend %r, queues %s, concurrency %d, %s, %s",
        __version__,
        worker_id,
        worker.database,
        options.backend,
        queues,
        options.concurrency,
        mode,
        wake_ups,
    )
    if os.environ.get(SUPERVISOR_PID_ENV):
        # A task that ignores its timeout can only be stopped with its process; the supervisor
        # starts another.
        runner.stop_process = worker.abort
    signals = _Signals(worker, options.grace)
    signals.install()
    started = time.monotonic()
    try:
        worker.start()
        _wait_and_report(worker, runner, signals, started)
    finally:
        signals.restore()
        runner.close()
        _log_events(worker)
    from ._core import FastTasksError

    try:
        summary = worker.result()
    except FastTasksError as exc:
        raise WorkerFailed(f"the worker stopped: {exc}") from exc
    elapsed = summary["elapsed"]
    done = summary["succeeded"] + summary["failed"]
    logger.info(
        "fasttasks worker %s stopped after %.1fs: %d tasks finished (%d successful, %d failed, "
        "%d retried), %.0f tasks/s%s",
        worker_id,
        elapsed,
        done,
        summary["succeeded"],
        summary["failed"],
        summary["retried"],
        done / elapsed if elapsed > 0 else 0.0,
        f", {summary['released']} handed back unstarted" if summary["released"] else "",
    )
    if summary["aborted"]:
        # Task threads may still be inside tasks that cannot be interrupted; do not wait for them.
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(EXIT_ABORTED)
    return 0


def _wait_and_report(worker: Any, runner: Any, signals: _Signals, started: float) -> None:
    last_summary = started
    last_done = 0
    while not worker.wait(0.2):
        signals.check_grace()
        # Found by the heartbeat round (so within about --heartbeat seconds of fasttasks.cancel()).
        for job_id in worker.drain_cancel_requests():
            runner.cancel(job_id)
        _log_events(worker)
        now = time.monotonic()
        if now - last_summary >= SUMMARY_EVERY:
            stats = worker.stats()
            done = stats["succeeded"] + stats["failed"]
            rate = (done - last_done) / (now - last_summary)
            logger.info(
                "%d done (%d successful, %d failed, %d retried), %d running, %.0f tasks/s",
                done,
                stats["succeeded"],
                stats["failed"],
                stats["retried"],
                stats["in_flight"],
                rate,
            )
            last_summary, last_done = now, done


def _log_events(worker: Any) -> None:
    levels = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
    for level, message in worker.drain_events():
        logger.log(levels.get(level, logging.ERROR), "%s", message)
