"""Stopping a running sync task from outside its thread: timeouts and cancellation.

A sync task runs on one of the worker's task threads, and Python offers no way to stop a thread. What
it offers is ``PyThreadState_SetAsyncExc``: an exception that the thread raises at its next Python
bytecode. :class:`Interrupts` uses it for ``fasttasks.TaskTimeout`` (a watchdog thread, at each
attempt's deadline) and ``fasttasks.TaskCancelled`` (when ``fasttasks.cancel()`` asked). So a task busy
in Python code stops at once; one blocked in C (``time.sleep``, a socket read, a C extension's loop)
stops when that call returns; one that catches the exception (``except BaseException``) runs on.

An attempt that goes on ``STUCK_AFTER`` seconds after its TaskTimeout (it caught it, or is blocked in
C) is handed to ``on_stuck``: under a ``--processes`` supervisor the runner records it as timed out
and stops the process, which the supervisor replaces.

The exception must hit the attempt it was meant for, never the thread's next task: an interruption is
set under a lock, only while the attempt is registered as running, and an attempt that ends
unregisters first and then withdraws any interruption still pending (see :meth:`Interrupts.finish`).

Coroutine tasks are not handled here: the runner cancels them on their event loop.
"""

from __future__ import annotations

import ctypes
import heapq
import math
import threading
import time
from collections.abc import Callable

from .compat import InvalidTask
from .exceptions import TaskTimeout

__all__ = ["STUCK_AFTER", "Interrupts", "Slot", "timeout_value"]

#: How long an attempt may go on after its TaskTimeout was raised before it counts as stuck (it
#: ignored the exception, or is blocked in C).
STUCK_AFTER = 2.0


def timeout_value(value: object, where: str = "timeout") -> float | None:
    """``value`` checked: ``None`` (no timeout) or a finite number of seconds > 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise InvalidTask(f"{where} must be a finite number of seconds > 0, or None (got {value!r}).")
    return float(value)


class Slot:
    """One task thread, as the interrupters see it: which job it is running now (``None``: none)."""

    __slots__ = ("job_id", "thread_id")

    def __init__(self) -> None:
        self.thread_id = threading.get_ident()
        self.job_id: str | None = None


class Interrupts:
    """The sync attempts running on this worker's task threads, and the interruptions sent to them.

    Each task thread owns a :class:`Slot` (:meth:`slot`) and marks in it the job it runs: two attribute
    writes per task, the whole cost of being interruptible. ``on_stuck``: called (on the watchdog
    thread) with the job id of an attempt still running ``stuck_after`` seconds after its TaskTimeout
    was raised; ``None``: nothing more is done.
    """

    def __init__(
        self, on_stuck: Callable[[str], None] | None = None, stuck_after: float = STUCK_AFTER
    ) -> None:
        self.on_stuck = on_stuck
        self.stuck_after = stuck_after
        self._slots: list[Slot] = []
        #: job ids an interruption was sent to (or is being sent to), until their attempt ends.
        self._interrupted: set[str] = set()
        self._lock = threading.Condition()
        #: (when, order, job id, slot, what then): raise TaskTimeout, or report the attempt as stuck.
        self._deadlines: list[tuple[float, int, str, Slot, bool]] = []
        self._order = 0
        self._watchdog: threading.Thread | None = None
        self._closed = False

    def slot(self) -> Slot:
        """A new slot for the calling task thread (call once per thread and keep it)."""
        slot = Slot()
        with self._lock:
            self._slots.append(slot)
        return slot

    def arm(self, slot: Slot, job_id: str, timeout: float) -> None:
        """The watchdog interrupts ``job_id`` on ``slot`` with ``TaskTimeout`` after ``timeout`` s."""
        with self._lock:
            self._order += 1
            entry = (time.monotonic() + timeout, self._order, job_id, slot, False)
            heapq.heappush(self._deadlines, entry)
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch, name="fasttasks-timeouts", daemon=True)
                self._watchdog.start()
            self._lock.notify()

    def finish(self, slot: Slot, job_id: str) -> None:
        """The calling thread is done with ``job_id`` (returned or raised)."""
        slot.job_id = None
        # An interrupter adds the id before it looks the attempt up, so if it found the attempt still
        # running, the id is visible here; taking the lock then waits for it to have set the exception,
        # which is withdrawn if the thread has not raised it yet.
        if self._interrupted and job_id in self._interrupted:
            with self._lock:
                _set_async_exception(slot.thread_id, None)
                self._interrupted.discard(job_id)

    def interrupt(self, job_id: str, exception: type[BaseException]) -> bool:
        """Raise ``exception`` in the thread running ``job_id``. False if it is not running here (not
        started yet, finished, or a coroutine) or was interrupted already."""
        if job_id in self._interrupted:
            return any(slot.job_id == job_id for slot in self._slots)
        self._interrupted.add(job_id)
        with self._lock:
            for slot in self._slots:
                if slot.job_id == job_id:
                    _set_async_exception(slot.thread_id, exception)
                    return True
            self._interrupted.discard(job_id)
            return False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()

    def _watch(self) -> None:
        while True:
            stuck = self._next_stuck()
            if stuck is None:
                return
            if self.on_stuck is not None:
                self.on_stuck(stuck)  # outside the lock: it reports the attempt and stops the worker

    def _next_stuck(self) -> str | None:
        """Raises TaskTimeout at each deadline; returns the next attempt that ignored it (None: closed)."""
        with self._lock:
            while not self._closed:
                if not self._deadlines:
                    self._lock.wait()
                    continue
                wait = self._deadlines[0][0] - time.monotonic()
                if wait > 0:
                    self._lock.wait(wait)
                    continue
                at, _, job_id, slot, ignored = heapq.heappop(self._deadlines)
                if ignored:
                    if slot.job_id == job_id:
                        return job_id
                    continue
                if job_id in self._interrupted:
                    continue
                # Added before the look-up, as in interrupt(): see finish().
                self._interrupted.add(job_id)
                if slot.job_id == job_id:
                    _set_async_exception(slot.thread_id, TaskTimeout)
                    if self.on_stuck is not None:
                        self._order += 1
                        entry = (at + self.stuck_after, self._order, job_id, slot, True)
                        heapq.heappush(self._deadlines, entry)
                else:
                    self._interrupted.discard(job_id)  # finished in time
        return None


def _set_async_exception(thread_id: int, exception: type[BaseException] | None) -> None:
    # None withdraws a pending one (the C API takes NULL for that).
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exception) if exception is not None else None
    )
