"""Tasks the worker tests run. Module-level, as django.tasks requires."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from fasttasks.compat import TaskContext, task


def _append(path: str, line: str) -> None:
    # One write() per line with O_APPEND: lines from several threads or processes never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@task
def record(path: str, marker: str) -> str:
    """Appends the marker to a file, so tests see which tasks ran and in which order."""
    _append(path, marker)
    return marker


@task(queue_name="emails")
def record_email(path: str, marker: str) -> str:
    _append(path, marker)
    return marker


@task
def sleep_then_record(path: str, marker: str, seconds: float) -> str:
    _append(path, f"start {marker}")
    time.sleep(seconds)
    _append(path, f"end {marker}")
    return marker


@task(takes_context=True)
def context_info(context: TaskContext, value: int) -> dict[str, Any]:
    result = context.task_result
    return {
        "attempt": context.attempt,
        "id": result.id,
        "status": str(result.status),
        "worker_ids": list(result.worker_ids),
        "value": value,
    }


@task
async def async_add(a: int, b: int, delay: float = 0.01) -> int:
    await asyncio.sleep(delay)
    return a + b


@task(takes_context=True)
async def async_context(context: TaskContext) -> int:
    await asyncio.sleep(0)
    return context.attempt


@task
async def async_fail() -> None:
    await asyncio.sleep(0)
    raise RuntimeError("async boom")


@task
def returns_tuple() -> tuple[int, dict[int, str]]:
    return (1, {2: "two"})


@task
def returns_unserializable() -> object:
    return object()


@task
def raises_system_exit() -> None:
    raise SystemExit(3)


@task
def raises_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


@task
def raises_value_error(message: str) -> None:
    raise ValueError(message)


@task
def uses_orm() -> int:
    from fasttasks.models import TaskRecord

    return TaskRecord.objects.count()


def not_a_task() -> None:
    """A plain function: the worker must refuse to run it."""


def touch(path: str) -> None:
    Path(path).touch()


@task
def enqueue_children(path: str, parent: str, count: int) -> int:
    """Chains tasks: writes to the queue table through Django from inside the worker."""
    for index in range(count):
        record.enqueue(path, f"{parent}.{index}")
    return count


@task
def connection_was_open() -> bool:
    """Whether this thread's connection was still open when the task started; then uses it."""
    from django.db import connection

    was_open = connection.connection is not None
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return was_open


@task
async def async_connection_was_open() -> bool:
    """``connection_was_open`` for a coroutine task, through the async ORM's executor thread."""
    from asgiref.sync import sync_to_async

    return await sync_to_async(connection_was_open.func)()


@task
async def async_sleep_then_record(path: str, marker: str, seconds: float) -> str:
    _append(path, f"start {marker}")
    await asyncio.sleep(seconds)
    _append(path, f"end {marker}")
    return marker


@task
def kill_own_process(path: str, how: str = "exit") -> None:
    """A poison task: the worker process running it dies. ``how``: ``exit`` (``os._exit(13)``),
    ``segfault`` (a NULL read in C: SIGSEGV), ``sigkill`` (as the kernel's OOM killer does)."""
    _append(path, "poison started")
    if how == "segfault":
        import ctypes

        ctypes.string_at(0)
    elif how == "sigkill":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(13)


#: The table ``log_execution`` writes to; the reliability tests create and drop it.
EXECUTION_TABLE = "fasttasks_test_execution"


@task(takes_context=True)
def log_execution(context: TaskContext, number: int, seconds: float) -> int:
    """Records this execution (task, attempt, process, start time) in a table, through Django's
    connection, then works for ``seconds``: the reliability tests count executions per task."""
    from django.db import connection

    started = time.time()
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {EXECUTION_TABLE} (result_id, number, attempt, pid, started_at) "
            "VALUES (%s, %s, %s, %s, %s)",
            [context.task_result.id, number, context.attempt, os.getpid(), started],
        )
    time.sleep(seconds)
    return os.getpid()


# -- retries ---------------------------------------------------------------------------------------
# Declared with fasttasks.task, which takes the options on every Django version.

from fasttasks import ExponentialBackoff, Retry  # noqa: E402
from fasttasks import task as fasttask  # noqa: E402

QUICK_BACKOFF = ExponentialBackoff(base=0.05, cap=0.2)


@fasttask(takes_context=True, max_attempts=3, backoff=QUICK_BACKOFF)
def fails_twice(context: TaskContext, path: str) -> int:
    """Raises on its first two attempts, succeeds on the third."""
    _append(path, f"attempt {context.attempt} at {time.time()}")
    if context.attempt < 3:
        raise ConnectionError(f"flaky, attempt {context.attempt}")
    return context.attempt


@fasttask(max_attempts=2, backoff=QUICK_BACKOFF)
def always_fails(path: str) -> None:
    _append(path, "attempt")
    raise ConnectionError("always down")


@fasttask(max_attempts=3, retry_on=(ConnectionError,), backoff=QUICK_BACKOFF)
def fails_with_an_error_not_retried(path: str) -> None:
    _append(path, "attempt")
    raise TypeError("a bug, not an outage")


@fasttask(takes_context=True, max_attempts=2)
def asks_for_a_retry(context: TaskContext, path: str, delay: float) -> int:
    """``raise Retry(delay=...)`` on the first attempt, whatever ``retry_on`` says."""
    _append(path, f"attempt {context.attempt} at {time.time()}")
    if context.attempt == 1:
        raise Retry(delay=delay)
    return context.attempt


def _linear_backoff(attempt: int, exception: BaseException) -> float:
    return 0.25 * attempt


@fasttask(takes_context=True, max_attempts=3, backoff=_linear_backoff)
def fails_twice_with_linear_backoff(context: TaskContext, path: str) -> int:
    _append(path, f"attempt {context.attempt} at {time.time()}")
    if context.attempt < 3:
        raise ConnectionError("flaky")
    return context.attempt


@fasttask(takes_context=True, max_attempts=2, backoff=QUICK_BACKOFF)
def crashes_then_fails_then_succeeds(context: TaskContext, path: str) -> int:
    """Attempt 1 kills its worker; attempt 2 raises; attempt 3 succeeds. The crash is not counted
    against max_attempts=2, so the raise of attempt 2 is retried."""
    _append(path, f"attempt {context.attempt}")
    if context.attempt == 1:
        os._exit(13)
    if context.attempt == 2:
        raise ConnectionError("flaky")
    return context.attempt


@fasttask(takes_context=True, backend="retrying")
def fails_twice_with_backend_defaults(context: TaskContext, path: str) -> int:
    """No options of its own: TASKS['retrying']['OPTIONS']['RETRY'] gives 3 attempts."""
    _append(path, f"attempt {context.attempt}")
    if context.attempt < 3:
        raise ConnectionError("flaky")
    return context.attempt


def _decorator_forwards_options() -> bool:
    """Django 6.1's @task forwards extra keyword arguments to the backend's task_class (6.0 does not)."""
    import inspect

    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(task).parameters.values())


DJANGO_DECORATOR_TAKES_OPTIONS = _decorator_forwards_options()

if DJANGO_DECORATOR_TAKES_OPTIONS:

    @task(takes_context=True, max_attempts=3, backoff=QUICK_BACKOFF)  # type: ignore[call-arg]
    def django_decorated_fails_twice(context: TaskContext, path: str) -> int:
        _append(path, f"attempt {context.attempt}")
        if context.attempt < 3:
            raise ConnectionError("flaky")
        return context.attempt


# -- timeouts ----------------------------------------------------------------------------------------


@fasttask(timeout=0.5)
def busy_for(path: str, seconds: float) -> int:
    """Pure Python work (a loop of bytecode): a timeout stops it at once."""
    _append(path, f"start {time.time()}")
    end = time.monotonic() + seconds
    spins = 0
    while time.monotonic() < end:
        spins += 1
    _append(path, "end")
    return spins


@fasttask(timeout=0.3)
def sleeps_for(path: str, seconds: float) -> None:
    """Blocked in C (time.sleep): in a task thread the timeout takes effect when the sleep returns."""
    _append(path, f"start {time.time()}")
    time.sleep(seconds)
    _append(path, "end")


@fasttask(timeout=0.5)
async def awaits_for(path: str, seconds: float) -> None:
    _append(path, f"start {time.time()}")
    await asyncio.sleep(seconds)
    _append(path, "end")


@fasttask(timeout=0.3, max_attempts=2, backoff=QUICK_BACKOFF)
def busy_and_retried(path: str) -> None:
    _append(path, "attempt")
    end = time.monotonic() + 30
    while time.monotonic() < end:
        pass


@fasttask(timeout=5)
def quick_with_timeout(number: int) -> int:
    return number * 2


# -- unique tasks ------------------------------------------------------------------------------------


@fasttask(unique=True)
def sync_invoice(invoice_id: int, force: bool = False) -> int:
    return invoice_id


def _invoice_key(invoice_id: int, **options: Any) -> str:
    return f"invoice-{invoice_id}"


@fasttask(unique_key=_invoice_key)
def send_invoice(invoice_id: int, copy_to: str | None = None) -> int:
    return invoice_id


@fasttask(unique_key="nightly-report")
def nightly_report(day: str) -> str:
    return day


@fasttask(unique_key=lambda *args, **kwargs: 42)  # type: ignore[arg-type, return-value]
def badly_keyed(value: int) -> int:
    return value


# -- cancellation ------------------------------------------------------------------------------------


@fasttask(max_attempts=3, backoff=QUICK_BACKOFF)
def busy_until_cancelled(path: str) -> None:
    """Python work for up to 60 s (and retries it would get, if cancellation were retried)."""
    _append(path, "start")
    end = time.monotonic() + 60
    while time.monotonic() < end:
        pass
    _append(path, "end")


@fasttask
async def waits_until_cancelled(path: str) -> None:
    _append(path, "start")
    try:
        await asyncio.sleep(60)
    finally:
        _append(path, "cleaned up")


@fasttask(timeout=0.5)
def ignores_its_timeout(path: str) -> None:
    """Swallows TaskTimeout (as `except BaseException` code does) and goes on for 30 s."""
    _append(path, f"start {os.getpid()}")
    end = time.monotonic() + 30
    while time.monotonic() < end:
        try:
            time.sleep(0.05)
        except BaseException:
            _append(path, "swallowed")
    _append(path, "end")
