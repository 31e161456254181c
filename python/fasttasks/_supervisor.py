"""``--processes N``: N worker processes, each its own interpreter with its own GIL, under a supervisor.

The supervisor runs no tasks and opens no database connection. It starts each worker as a fresh
interpreter (``python -m fasttasks.cli`` with the same flags), so no runtime, thread or connection is
ever inherited across a fork. It then:

- forwards SIGINT/SIGTERM: the first one stops every worker gracefully (each gets ``--grace``), a
  second one makes them exit at once. Workers run in their own process group, so a Ctrl-C in a
  terminal reaches them once, through the supervisor, not twice;
- restarts a worker that dies (killed, crashed, OOM-killed), under the same worker id, so the new
  process rescues its predecessor's tasks as it starts instead of waiting for them to be taken for dead;
- backs off when a worker dies again soon after starting (0.5 s, doubling up to 30 s), so a crash loop
  does not spin;
- stops everything with exit code 2 when a worker reports a setup error (bad flags or settings, an
  unmigrated database): restarting would fail the same way.

Each worker asks the kernel for a SIGTERM if the supervisor dies (Linux ``PR_SET_PDEATHSIG``), so
killing the supervisor does not leave orphaned workers claiming tasks.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from ._worker import WorkerOptions, default_worker_id

logger = logging.getLogger("fasttasks.worker")

#: Set in each worker's environment to the supervisor's pid (see ``die_with_supervisor``).
SUPERVISOR_PID_ENV = "FASTTASKS_SUPERVISOR_PID"
#: A worker that ran at least this long before dying is restarted at once.
STABLE_AFTER = 10.0
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
#: Exit code of a worker that cannot start with these settings (see cli.py): not worth restarting.
EXIT_SETUP_ERROR = 2
#: After the workers' own grace period, how long the supervisor waits before it kills them.
KILL_AFTER_GRACE = 10.0
POLL_EVERY = 0.1


@dataclass
class _Slot:
    """One of the N worker processes, across restarts."""

    index: int
    worker_id: str
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    #: Deaths in a row that came soon after a start.
    quick_deaths: int = 0
    restart_at: float | None = None
    exit_code: int | None = None
    restarts: int = 0


@dataclass
class _State:
    signals: int = 0
    stopping_since: float | None = None
    pending: list[int] = field(default_factory=list)


def worker_arguments(options: WorkerOptions, worker_id: str, slot: int = 1) -> list[str]:
    """The ``fasttasks-worker`` flags that make process ``slot`` (1…N) of ``options``. Each process
    serves its own health checks, on ``--health-port`` + ``slot`` - 1."""
    arguments = [
        "--backend",
        options.backend,
        "--queues",
        "*" if options.queues is None else ",".join(options.queues),
        "--concurrency",
        str(options.concurrency),
        "--prefetch",
        str(options.prefetch),
        "--worker-id",
        worker_id,
        "--interval",
        repr(options.interval),
        "--heartbeat",
        repr(options.heartbeat),
        "--dead-after",
        repr(options.dead_after),
        "--max-crashes",
        str(options.max_crashes),
        "--grace",
        repr(options.grace),
        "--verbosity",
        str(options.verbosity),
    ]
    if options.health_port is not None:
        port = options.health_port + slot - 1 if options.health_port else 0
        arguments += ["--health-port", str(port), "--health-host", options.health_host]
    if options.batch:
        arguments.append("--batch")
    if options.max_tasks is not None:
        arguments += ["--max-tasks", str(options.max_tasks)]
    return arguments


def slot_worker_ids(options: WorkerOptions) -> list[str]:
    """One id per process slot, kept across restarts: ``--worker-id`` plus ``-1``…``-N``, or
    host-pid-random of the supervisor plus the slot."""
    base = options.worker_id or default_worker_id()
    if options.worker_id is None:
        base = base.rsplit("-", 1)[0] + "-" + uuid.uuid4().hex[:4]
    return [f"{base[: 64 - len(str(index)) - 1]}-{index}" for index in range(1, options.processes + 1)]


def run_supervisor(options: WorkerOptions) -> int:
    """Runs ``options.processes`` workers until they are stopped or done; returns the exit code."""
    slots = [_Slot(index, worker_id) for index, worker_id in enumerate(slot_worker_ids(options), 1)]
    state = _State()
    previous = {
        signum: signal.signal(signum, lambda signum, frame: _on_signal(state, signum, frame))
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    logger.info(
        "fasttasks supervisor %d: starting %d worker processes (%s)",
        os.getpid(),
        len(slots),
        ", ".join(slot.worker_id for slot in slots),
    )
    try:
        for slot in slots:
            _start(slot, options)
        return _supervise(slots, state, options)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for slot in slots:
            if slot.process is not None and slot.process.poll() is None:
                slot.process.kill()
                slot.process.wait()


def _on_signal(state: _State, signum: int, frame: FrameType | None) -> None:
    # Only recorded here; the loop forwards, so that a signal never interrupts a Popen call half-way.
    state.pending.append(signum)


def _supervise(slots: list[_Slot], state: _State, options: WorkerOptions) -> int:
    one_shot = options.batch or options.max_tasks is not None
    while True:
        _forward_signals(slots, state)
        now = time.monotonic()
        for slot in slots:
            process = slot.process
            if process is None:
                if slot.restart_at is not None and now >= slot.restart_at and state.signals == 0:
                    _start(slot, options)
                continue
            code = process.poll()
            if code is None:
                continue
            slot.process = None
            slot.exit_code = code
            if state.signals:
                continue  # stopping: a worker that exits is done
            if code == EXIT_SETUP_ERROR:
                logger.error(
                    "worker process %s exited with a setup error (exit 2); stopping all workers",
                    slot.worker_id,
                )
                _stop_all(slots, state, signal.SIGTERM)
                _wait_all(slots, options)
                return EXIT_SETUP_ERROR
            if code == 0 and one_shot:
                continue  # --batch / --max-tasks: this worker is done
            _schedule_restart(slot, code, now)
        if state.signals and all(slot.process is None for slot in slots):
            return max((slot.exit_code or 0) for slot in slots)
        if one_shot and all(slot.process is None and slot.restart_at is None for slot in slots):
            return max((slot.exit_code or 0) for slot in slots)
        if state.stopping_since is not None:
            _kill_overdue(slots, state, options)
        time.sleep(POLL_EVERY)


def _start(slot: _Slot, options: WorkerOptions) -> None:
    env = dict(os.environ)
    env[SUPERVISOR_PID_ENV] = str(os.getpid())
    # The project's modules must import in the worker as they do here: manage.py puts its own
    # directory on sys.path, --pythonpath and fasttasks-worker add more. The same interpreter gets
    # the same path, in the same order.
    env["PYTHONPATH"] = os.pathsep.join(path for path in sys.path if path)
    command = [sys.executable, "-m", "fasttasks.cli", *worker_arguments(options, slot.worker_id, slot.index)]
    # Own process group: a terminal's Ctrl-C reaches the workers only through the supervisor.
    slot.process = subprocess.Popen(command, env=env, process_group=0)
    slot.started_at = time.monotonic()
    slot.restart_at = None
    slot.exit_code = None
    logger.info("worker process %s started (pid %d)", slot.worker_id, slot.process.pid)


def _schedule_restart(slot: _Slot, code: int, now: float) -> None:
    lived = now - slot.started_at
    slot.quick_deaths = slot.quick_deaths + 1 if lived < STABLE_AFTER else 0
    delay = 0.0 if slot.quick_deaths == 0 else min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (slot.quick_deaths - 1))
    slot.restart_at = now + delay
    slot.restarts += 1
    # Reported here; a stop while the slot waits for its restart is not that process's failure.
    slot.exit_code = None
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    logger.warning(
        "worker process %s %s after %.1fs; restarting it in %.1fs (restart %d)",
        slot.worker_id,
        how,
        lived,
        delay,
        slot.restarts,
    )


def _forward_signals(slots: list[_Slot], state: _State) -> None:
    while state.pending:
        signum = state.pending.pop(0)
        state.signals += 1
        name = signal.Signals(signum).name
        if state.signals == 1:
            state.stopping_since = time.monotonic()
            logger.info("%s received: stopping all worker processes gracefully", name)
        else:
            logger.warning("%s received again: worker processes exit at once", name)
        _stop_all(slots, state, signum)


def _stop_all(slots: list[_Slot], state: _State, signum: int) -> None:
    for slot in slots:
        slot.restart_at = None
        if slot.process is not None and slot.process.poll() is None:
            slot.process.send_signal(signum)


def _kill_overdue(slots: list[_Slot], state: _State, options: WorkerOptions) -> None:
    """Workers exit by themselves after ``--grace``; one that does not (stuck in C code at exit) is
    killed a little later, and its tasks are rescued like any dead worker's."""
    assert state.stopping_since is not None
    if time.monotonic() - state.stopping_since < options.grace + KILL_AFTER_GRACE:
        return
    for slot in slots:
        if slot.process is not None and slot.process.poll() is None:
            logger.error("worker process %s did not exit after its grace period; killing it", slot.worker_id)
            slot.process.kill()


def _wait_all(slots: list[_Slot], options: WorkerOptions) -> None:
    deadline = time.monotonic() + options.grace + KILL_AFTER_GRACE
    for slot in slots:
        if slot.process is None:
            continue
        try:
            slot.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            slot.process.kill()
            slot.process.wait()
        slot.process = None


def die_with_supervisor() -> None:
    """In a worker started by the supervisor: ask for SIGTERM when the supervisor dies (Linux), so an
    orphaned worker stops gracefully instead of running on unsupervised."""
    supervisor = os.environ.get(SUPERVISOR_PID_ENV)
    if not supervisor or not sys.platform.startswith("linux"):
        return
    import ctypes

    libc: Any = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != int(supervisor):
        # The supervisor died before the request was in place.
        os.kill(os.getpid(), signal.SIGTERM)
