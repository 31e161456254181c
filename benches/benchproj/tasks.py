"""The benchmark tasks.

- ``noop`` measures the queue itself: claim, run, record (S1, S2, S5, S6, idle).
- ``stamp`` returns the wall-clock time (``time.time()``) at its first line: the enqueue-to-start latency
  of S3 is that minus the time the enqueuer took right after ``enqueue()`` returned.
- ``sleep_async`` / ``sleep_sync`` are 1 ms I/O tasks (S4), as a coroutine and as a thread.
- ``sleep_record`` is ``sleep_sync`` that also appends its result id to the file named by
  ``BENCH_RUNS_FILE`` (one line per run), so that R1 can count tasks that ran more than once.
"""

import asyncio
import os
import threading
import time
from typing import Any

try:
    from django.tasks import task
except ImportError:  # Django 5.2 with the django-tasks backport
    from django_tasks import task  # type: ignore[no-redef]


@task
def noop() -> None:
    return None


@task
def stamp() -> float:
    return time.time()


@task
async def sleep_async() -> None:
    await asyncio.sleep(0.001)


@task
def sleep_sync() -> None:
    time.sleep(0.001)


_runs_fd: list[int] = []
_runs_lock = threading.Lock()


def _record_run(result_id: str) -> None:
    path = os.environ.get("BENCH_RUNS_FILE")
    if not path:
        return
    if not _runs_fd:
        with _runs_lock:
            if not _runs_fd:
                _runs_fd.append(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
    # One short write per run with O_APPEND: lines from several task threads do not interleave.
    os.write(_runs_fd[0], f"{result_id}\n".encode())


@task(takes_context=True)
def sleep_record(context: Any) -> None:
    time.sleep(0.001)
    _record_run(str(context.task_result.id))
