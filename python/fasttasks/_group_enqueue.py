"""Group commit for ``aenqueue``: concurrent calls on one event loop share one INSERT and one commit.

Django's default ``aenqueue`` runs ``enqueue`` through ``sync_to_async(thread_sensitive=True)``: every
call waits its turn in the one thread-sensitive executor and pays a full round trip and commit, so eight
coroutines enqueueing at once go no faster than one. Here each call is validated and encoded in its own
coroutine (a bad argument fails that call alone, as ``enqueue`` would), then queued. One flush at a time
runs in that same executor (so Django's connection handling is unchanged) and writes every queued row in
one statement; calls that arrive meanwhile go into the next flush. Under load, rows per commit grow with
the number of concurrent callers; a lone caller waits for no one.

Semantics are those of ``enqueue`` in autocommit mode: the rows of one flush commit together, and an
error writing them (e.g. the database is down) is raised in every caller of that flush. A caller
cancelled while its flush runs does not stop the write, as with ``sync_to_async``.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async

if TYPE_CHECKING:
    from .backend import FastTasksBackend
    from .compat import Task, TaskResult

__all__ = ["enqueue_in_group"]

_Entry = tuple["Task[..., Any]", str, str]


class _GroupInserter:
    """The queue and the running flush of one backend alias on one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiting: list[tuple[_Entry, asyncio.Future[TaskResult[..., Any]]]] = []
        self.flushing = False

    async def submit(self, backend: FastTasksBackend, entry: _Entry) -> TaskResult[..., Any]:
        future: asyncio.Future[TaskResult[..., Any]] = self.loop.create_future()
        self.waiting.append((entry, future))
        if not self.flushing:
            self.flushing = True
            # Started as a task, not awaited here: it runs once the coroutines that are ready now have
            # had their turn, so that callers arriving together share the first flush too.
            self.loop.create_task(self._flush(backend))
        # Shielded: a cancelled caller leaves the future for the flush to complete.
        return await asyncio.shield(future)

    async def _flush(self, backend: FastTasksBackend) -> None:
        try:
            while self.waiting:
                batch, self.waiting = self.waiting, []
                entries = [entry for entry, _ in batch]
                try:
                    results = await sync_to_async(backend._insert, thread_sensitive=True)(entries)
                except BaseException as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    for (_, future), result in zip(batch, results, strict=True):
                        if not future.done():
                            future.set_result(result)
        finally:
            self.flushing = False


_inserters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _GroupInserter]] = (
    weakref.WeakKeyDictionary()
)


async def enqueue_in_group(backend: FastTasksBackend, entry: _Entry) -> TaskResult[..., Any]:
    """Insert one validated, encoded ``(task, args_text, kwargs_text)`` entry with whatever other
    entries of the same backend alias are being enqueued on this event loop at the same time."""
    loop = asyncio.get_running_loop()
    per_alias = _inserters.setdefault(loop, {})
    inserter = per_alias.get(backend.alias)
    if inserter is None:
        inserter = per_alias[backend.alias] = _GroupInserter(loop)
    return await inserter.submit(backend, entry)
