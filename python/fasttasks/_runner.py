"""The only Python the Rust executor calls: run one claimed attempt and report its outcome as data.

Each task thread of the worker calls ``Runner.execute(job, reply)`` for every attempt it takes. The
runner resolves the task (it must be a ``django.tasks.Task``), rebuilds the ``TaskResult`` the signals and
the ``TaskContext`` need, sends ``task_started``, calls the function, JSON-normalizes the return value,
sends ``task_finished`` and reports success or failure through ``reply``. Task exceptions never escape:
they become an entry of the row's ``errors``. Coroutine functions run on one asyncio event loop shared by
the whole worker, so many can wait at once; their ``reply`` is sent from the loop's thread.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import json
import logging
import threading
import time
import traceback
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.db import close_old_connections, connections
from django.db.backends.signals import connection_created

from . import _json
from ._interrupts import Interrupts, Slot
from ._results import build_task_result, task_for_row
from .compat import (
    Task,
    TaskContext,
    TaskError,
    TaskResult,
    TaskResultStatus,
    normalize_json,
    task_backends,
    task_finished,
    task_started,
)
from .exceptions import Retry, TaskCancelled, TaskTimeout
from .retry import RetryDefaults

if TYPE_CHECKING:
    from ._core import Job, Reply

logger = logging.getLogger("fasttasks.worker")

#: A task thread that waited at least this long since its last task checks its database connections
#: before the next one (``CONN_MAX_AGE``, health checks), as Django does at the start of a request.
IDLE_CONNECTION_CHECK = 1.0

__all__ = ["Runner"]


def exception_class_path(exc: BaseException) -> str:
    """The dotted path Django's ``TaskError`` stores: ``module.QualName`` of the exception's class."""
    return f"{type(exc).__module__}.{type(exc).__qualname__}"


class Runner:
    """Runs attempts for one backend alias inside one worker process."""

    def __init__(self, backend_alias: str, worker_id: str, concurrency: int = 8) -> None:
        self.backend_alias = backend_alias
        self.worker_id = worker_id
        # Sync tasks run on the worker's `concurrency` threads, so at most that many run; coroutine
        # tasks give their thread back at once and are bounded here instead, on the loop: claim-ahead
        # may hand over more than `concurrency`, and the extra ones wait for a slot.
        self.concurrency = concurrency
        self._coroutine_semaphore: asyncio.Semaphore | None = None
        # Signals are sent with the backend *class* as sender, as Django's contract documents.
        backend = task_backends[backend_alias]
        self.retry_defaults: RetryDefaults = getattr(backend, "retry_defaults", RetryDefaults())
        self._timeout_for: Callable[[Any], float | None] = getattr(
            backend, "timeout_for", lambda task: getattr(task, "timeout", None)
        )
        self._interrupts = Interrupts(on_stuck=self._on_stuck)
        # Sync attempts with a timeout, while they run: what _on_stuck needs to report one.
        self._timed: dict[str, tuple[Job, Reply, TaskResult[..., Any], float]] = {}
        #: Set by a worker started by a --processes supervisor: stops this process (it is replaced).
        self.stop_process: Callable[[], None] | None = None
        # Cancellation asked for attempts not started yet (claimed ahead), and for running coroutines.
        self._cancel_before_start: set[str] = set()
        self._coroutines: dict[str, asyncio.Task[None]] = {}
        self._cancelled_coroutines: set[str] = set()
        self.backend_class: type[Any] = type(backend)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()
        self._handed_over: collections.deque[Coroutine[Any, Any, None]] = collections.deque()
        self._start_pending = False
        self._running: set[asyncio.Task[None]] = set()
        self._is_coroutine: dict[Any, bool] = {}
        self._thread = threading.local()
        # Whether asgiref's executor thread may hold connections: unknown at first (so: yes).
        self._connections_elsewhere = True
        self._connections_opened_elsewhere = 0
        connection_created.connect(self._note_connection, weak=False, dispatch_uid=f"fasttasks-{id(self)}")

    # -- called by the Rust task threads ------------------------------------------------------------

    def execute(self, job: Job, reply: Reply) -> None:
        """Run one attempt; report through ``reply`` (now, or later for a coroutine task)."""
        # Django closes unusable or expired connections at the start and the end of each request. The
        # end-of-task call below covers back-to-back tasks; a thread that sat idle checks again first,
        # because its connection may have expired or been dropped meanwhile.
        thread = self._thread
        thread.is_task_thread = True
        if time.monotonic() - getattr(thread, "last_task_end", 0.0) >= IDLE_CONNECTION_CHECK:
            _close_old_connections()
        try:
            prepared = self._prepare(job)
        except Exception as exc:
            # The row cannot be run (unknown path, not a Task, corrupt arguments): it fails with the
            # reason, no signals are sent (there is no Task to describe), and the worker goes on.
            logger.error("Task id=%s path=%.200r cannot run: %.1000s", job.id, job.task_path, exc)
            reply.fail(self._error_entry(job, exc))
            return
        task, result, args, kwargs = prepared
        if self._cancel_before_start and job.id in self._cancel_before_start:
            self._cancel_before_start.discard(job.id)
            self._fail(job, reply, result, TaskCancelled("cancelled before it started"))
            return
        func = task.func
        is_coroutine = self._is_coroutine.get(func)
        if is_coroutine is None:
            is_coroutine = self._is_coroutine[func] = inspect.iscoroutinefunction(func)
        if is_coroutine:
            # task_started is sent on the loop, when a coroutine slot is free and the task starts.
            coroutine = self._run_coroutine(job, reply, task, result, args, kwargs)
            self._start_on_loop(coroutine)
            thread.last_task_end = time.monotonic()  # this thread's part is done; the loop runs it
            return
        self._send(task_started, result)
        timeout = self._timeout_for(task)
        slot = thread.slot if hasattr(thread, "slot") else self._new_slot()
        slot.job_id = job.id
        if timeout is not None:
            self._timed[job.id] = (job, reply, result, timeout)
            self._interrupts.arm(slot, job.id, timeout)
        try:
            try:
                if task.takes_context:
                    value = task.func(TaskContext(task_result=result), *args, **kwargs)
                else:
                    value = task.func(*args, **kwargs)
                return_json, normalized = self._encode_return(value)
            finally:
                self._interrupts.finish(slot, job.id)
                if timeout is not None:
                    self._timed.pop(job.id, None)
        except BaseException as exc:  # every task exception is data (Django: BaseException)
            # Raised by Interrupts as a bare class: say what happened.
            if isinstance(exc, TaskTimeout) and not exc.args and timeout is not None:
                exc.args = (f"the attempt ran past the task's timeout of {timeout:g}s",)
            elif isinstance(exc, TaskCancelled) and not exc.args:
                exc.args = ("cancelled while running",)
            self._fail(job, reply, result, exc)
        else:
            self._succeed(reply, result, return_json, normalized)
        finally:
            _close_old_connections()
            thread.last_task_end = time.monotonic()

    def _note_connection(self, sender: Any, **kwargs: Any) -> None:
        # Task threads are Rust threads (Python calls them "Dummy-N"): execute() marks them.
        if not getattr(self._thread, "is_task_thread", False):
            self._connections_elsewhere = True
            self._connections_opened_elsewhere += 1

    async def _check_executor_connections(self) -> None:
        if not self._connections_elsewhere:
            return
        opened_before = self._connections_opened_elsewhere
        holds_connections = await sync_to_async(_close_old_connections)()
        if not holds_connections and self._connections_opened_elsewhere == opened_before:
            self._connections_elsewhere = False

    def close(self) -> None:
        """Stop listening for new connections (the worker is done with this runner)."""
        connection_created.disconnect(dispatch_uid=f"fasttasks-{id(self)}")
        self._interrupts.close()

    def cancel(self, job_id: str) -> None:
        """``fasttasks.cancel()`` asked ``job_id``, an attempt this worker holds, to stop. Called from the
        worker's main thread, again every heartbeat round until the attempt ends."""
        if self._interrupts.interrupt(job_id, TaskCancelled):
            return  # a sync task: TaskCancelled is raised in its thread
        coroutine = self._coroutines.get(job_id)
        loop = self._loop
        if coroutine is not None and loop is not None:
            loop.call_soon_threadsafe(self._cancel_coroutine, job_id)
            return
        # Claimed but not started yet (or finished and not yet written): it fails as it starts.
        self._cancel_before_start.add(job_id)

    def _new_slot(self) -> Slot:
        slot = self._thread.slot = self._interrupts.slot()
        return slot

    def _on_stuck(self, job_id: str) -> None:
        """On the timeout watchdog: a sync attempt went on well after its TaskTimeout was raised (it
        caught the exception, or is blocked in C). Under a --processes supervisor the attempt is reported
        as timed out and this process stops, to be replaced; otherwise it can only be left running."""
        attempt = self._timed.pop(job_id, None)
        if attempt is None or attempt[1].done:
            return
        job, reply, result, timeout = attempt
        if self.stop_process is None:
            logger.error(
                "Task id=%s path=%s ignored its TaskTimeout (timeout %gs) and runs on; run the worker with "
                "--processes to have such a process replaced",
                job.id,
                job.task_path,
                timeout,
            )
            return
        logger.error(
            "Task id=%s path=%s ignored its TaskTimeout (timeout %gs): recording the attempt as timed out "
            "and stopping this worker process, which its supervisor replaces; its other running tasks "
            "are rescued",
            job.id,
            job.task_path,
            timeout,
        )
        exc = TaskTimeout(
            f"the attempt ran past the task's timeout of {timeout:g}s and ignored TaskTimeout; its worker "
            "process was stopped and replaced"
        )
        self._fail(job, reply, result, exc)
        self.stop_process()

    def _cancel_coroutine(self, job_id: str) -> None:
        coroutine = self._coroutines.get(job_id)
        if coroutine is not None and job_id not in self._cancelled_coroutines:
            self._cancelled_coroutines.add(job_id)
            coroutine.cancel("fasttasks.cancel()")

    def thread_exit(self) -> None:
        """Called by each task thread when the worker stops: close that thread's connections."""
        connections.close_all()

    # -- one attempt --------------------------------------------------------------------------------

    def _prepare(self, job: Job) -> tuple[Task[..., Any], TaskResult[..., Any], list[Any], dict[str, Any]]:
        task = task_for_row(
            job.task_path,
            priority=job.priority,
            queue_name=job.queue_name,
            run_after=job.run_after,
            backend=job.backend_name,
        )
        args = _load_arguments(job.args_json, "args", list)
        kwargs = _load_arguments(job.kwargs_json, "kwargs", dict)
        worker_ids = _json.loads(job.worker_ids_json)
        result = build_task_result(
            task=task,
            id=job.id,
            status=TaskResultStatus.RUNNING,
            enqueued_at=job.enqueued_at,
            started_at=job.started_at,
            finished_at=None,
            last_attempted_at=job.last_attempted_at,
            args=args,
            kwargs=kwargs,
            backend=job.backend_name,
            errors=[],
            worker_ids=worker_ids if isinstance(worker_ids, list) else [self.worker_id],
        )
        return task, result, args, kwargs

    async def _run_coroutine(
        self,
        job: Job,
        reply: Reply,
        task: Task[..., Any],
        result: TaskResult[..., Any],
        args: list[Any],
        kwargs: dict[str, Any],
    ) -> None:
        async with self._coroutine_slots():
            if job.id in self._cancel_before_start:
                self._cancel_before_start.discard(job.id)
                self._fail(job, reply, result, TaskCancelled("cancelled before it started"))
                return
            current = asyncio.current_task()
            if current is not None:
                self._coroutines[job.id] = current
            self._send(task_started, result)
            # The async ORM runs in asgiref's thread-sensitive executor: keep that thread's connections
            # healthy around each task, as the sync path does for task threads. Each check is a hop to
            # that thread (tens of µs, one at a time for all coroutines), so it is skipped while that
            # thread is known to hold no connection: after a check found none, until a connection is
            # opened outside the task threads.
            await self._check_executor_connections()
            timeout = self._timeout_for(task)
            scope: asyncio.Timeout | None = None
            try:
                func: Callable[..., Coroutine[Any, Any, Any]] = task.func
                if task.takes_context:
                    call = func(TaskContext(task_result=result), *args, **kwargs)
                else:
                    call = func(*args, **kwargs)
                if timeout is None:
                    value = await call
                else:
                    async with asyncio.timeout(timeout) as scope:
                        value = await call
                return_json, normalized = self._encode_return(value)
            except BaseException as exc:  # CancelledError too: the attempt is over
                replacement: BaseException | None = None
                if scope is not None and scope.expired() and isinstance(exc, TimeoutError):
                    replacement = TaskTimeout(f"the attempt ran past the task's timeout of {timeout:g}s")
                elif job.id in self._cancelled_coroutines and isinstance(exc, asyncio.CancelledError):
                    replacement = TaskCancelled("cancelled while running")
                    asyncio.current_task().uncancel()  # type: ignore[union-attr]
                if replacement is not None:
                    replacement.__cause__, replacement.__traceback__ = exc, exc.__traceback__
                    exc = replacement
                self._fail(job, reply, result, exc)
            else:
                self._succeed(reply, result, return_json, normalized)
            finally:
                self._coroutines.pop(job.id, None)
                self._cancelled_coroutines.discard(job.id)
                await self._check_executor_connections()

    def _coroutine_slots(self) -> asyncio.Semaphore:
        # Created on the loop, on first use.
        if self._coroutine_semaphore is None:
            self._coroutine_semaphore = asyncio.Semaphore(self.concurrency)
        return self._coroutine_semaphore

    @staticmethod
    def _encode_return(value: Any) -> tuple[str, Any]:
        """Normalize like Django's ImmediateBackend; a value that cannot be stored fails the task."""
        if value is None:
            return "null", None
        normalized = normalize_json(value)
        return _json.dumps(normalized), normalized

    def _succeed(self, reply: Reply, result: TaskResult[..., Any], return_json: str, value: Any) -> None:
        reply.succeed(return_json)
        _setattr(result, "status", TaskResultStatus.SUCCESSFUL)
        _setattr(result, "finished_at", _now())
        _setattr(result, "_return_value", value)
        self._send(task_finished, result)

    def _fail(self, job: Job, reply: Reply, result: TaskResult[..., Any], exc: BaseException) -> None:
        entry = self._error_entry(job, exc)
        error = TaskError(exception_class_path=exception_class_path(exc), traceback=_format(exc))
        _setattr(result, "errors", [*result.errors, error])
        delay = self._retry_delay(job, result.task, exc)
        if delay is not None:
            # Not finished: back to READY. task_finished is for the attempt that ends the task.
            reply.fail(entry, _now() + timedelta(seconds=delay))
            _setattr(result, "status", TaskResultStatus.READY)
            logger.warning(
                "Task id=%s path=%s attempt %d failed with %s: %.200s; retrying in %.3gs (%d of %d attempts "
                "used)",
                job.id,
                job.task_path,
                job.attempt,
                exception_class_path(exc),
                exc,
                delay,
                job.attempt - job.crashes,
                job.max_attempts,
            )
            return
        reply.fail(entry)
        _setattr(result, "status", TaskResultStatus.FAILED)
        _setattr(result, "finished_at", _now())
        # Sent inside the except block of the caller, so Django's receiver logs the traceback.
        self._send(task_finished, result)

    def _retry_delay(self, job: Job, task: Task[..., Any], exc: BaseException) -> float | None:
        """Seconds until the next attempt, or None when this failure ends the task. Attempts that
        ended in a crash of their worker are the rescuer's business (``--max-crashes``), not counted."""
        if job.max_attempts <= 1 and not isinstance(exc, Retry):
            return None  # Django's meaning, and the common case: no policy to look up
        if isinstance(exc, TaskCancelled):
            return None
        try:
            policy = self.retry_defaults.policy_for(task)
            return policy.delay(exc, job.attempt, job.attempt - job.crashes, job.max_attempts)
        except Exception:
            logger.exception("Task id=%s: the retry policy failed; the task ends FAILED", job.id)
            return None

    def _error_entry(self, job: Job, exc: BaseException) -> str:
        return _json.dumps(
            {
                "exception_class_path": exception_class_path(exc),
                "traceback": _format(exc),
                "attempt": job.attempt,
                "worker_id": self.worker_id,
                "failed_at": _now().isoformat(),
            }
        )

    def _send(self, signal: Any, result: TaskResult[..., Any]) -> None:
        # A broken receiver must not change the task's outcome: log it and go on.
        for receiver, response in signal.send_robust(sender=self.backend_class, task_result=result):
            if isinstance(response, BaseException):
                logger.error(
                    "Signal receiver %r raised for task id=%s",
                    receiver,
                    result.id,
                    exc_info=(type(response), response, response.__traceback__),
                )

    # -- the event loop for coroutine tasks ---------------------------------------------------------

    def _start_on_loop(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Start ``coroutine`` on the event loop from a task thread.

        Cheaper than ``asyncio.run_coroutine_threadsafe`` (no concurrent Future to chain, and one
        wake-up of the loop for all the coroutines handed over while it was busy).
        """
        loop = self._event_loop()
        self._handed_over.append(coroutine)
        with self._loop_lock:
            if self._start_pending:
                return
            self._start_pending = True
        loop.call_soon_threadsafe(self._start_handed_over)

    def _start_handed_over(self) -> None:
        # On the loop. The flag goes down before the queue is emptied: a coroutine handed over in
        # between is either taken here or gets a wake-up of its own.
        with self._loop_lock:
            self._start_pending = False
        loop = self._event_loop()
        while self._handed_over:
            task = loop.create_task(self._handed_over.popleft())
            # The loop keeps only weak references to tasks.
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="fasttasks-asyncio", daemon=True)
                thread.start()
                self._loop = loop
            return self._loop


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


#: Arguments as stored: strict JSON (Python's decoder would also take NaN and Infinity, which neither
#: database's JSON type holds; only a row written by hand, bypassing the checks, can contain them).
_strict_decoder = json.JSONDecoder(parse_constant=_reject_constant)

_JSON_KINDS: dict[type, str] = {
    list: "an array",
    dict: "an object",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    type(None): "null",
}


def _load_arguments(text: str, name: str, expected: type) -> Any:
    """``args`` (``expected`` list) or ``kwargs`` (dict) of a row; ``ValueError`` saying what is wrong
    when the stored text is not JSON of that shape (a row written by hand, bypassing ``enqueue``)."""
    if text == "[]" and expected is list:
        return []
    if text == "{}" and expected is dict:
        return {}
    try:
        value = _strict_decoder.decode(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"corrupt task row: {name} are not valid JSON ({exc})") from exc
    if type(value) is not expected:
        shape = _JSON_KINDS[expected]
        raise ValueError(
            f"corrupt task row: {name} must be a JSON {shape.split()[-1]}, not "
            f"{_JSON_KINDS.get(type(value), type(value).__name__)}"
        )
    return value


#: TaskResult is a frozen dataclass; backends update it this way (as Django's own backends do).
_setattr = object.__setattr__


def _close_old_connections() -> bool:
    """``django.db.close_old_connections``, skipped in a thread that has never opened a connection.

    Django's version costs a few microseconds even then (each alias is looked up in an asgiref
    ``Local``), a good part of a short task. A sync thread's connections live in the plain
    ``threading.local`` behind that ``Local``: when it holds nothing, there is nothing to close. Any
    other layout (another asgiref version, async storage) takes Django's path. Returns whether the
    thread may hold connections.
    """
    storage = getattr(getattr(connections, "_connections", None), "_storage", None)
    if isinstance(storage, threading.local) and not storage.__dict__:
        return False
    close_old_connections()
    return True


def _now() -> datetime:
    return datetime.now(tz=timezone.utc)


def _format(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))
