"""The benchmark tasks.

- ``noop`` measures the queue itself: claim, run, record (S1, S2, S5, S6, idle).
- ``stamp`` returns the wall-clock time (``time.time()``) at its first line: the enqueue-to-start latency
  of S3 is that minus the time the enqueuer took right after ``enqueue()`` returned.
- ``sleep_async`` / ``sleep_sync`` are 1 ms I/O tasks (S4), as a coroutine and as a thread.
"""

import asyncio
import time

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
