"""The steps of a benchmark that need Django set up with one target's settings.

Run by ``benches/run.py`` in a fresh process per step; the database and the implementation come from
the environment (see ``benchproj/settings.py``). Prints one JSON object on the last line of stdout.

    python _child.py migrate
    python _child.py prepare TASK N        # migrate, enqueue N tasks (not a timed figure), ANALYZE
    python _child.py enqueue MODE N        # migrate, time N enqueues: single | async8 | bulk (S2a-c)
    python _child.py latency N RATE WARMUP # open-loop enqueue of `stamp`, a worker already running (S3)
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchproj.settings")

import django

django.setup()

from benchproj import tasks  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402

IMPL = settings.IMPL  # type: ignore[misc]
TABLE = "fasttasks_task" if IMPL == "fasttasks" else "django_tasks_database_dbtaskresult"
CHUNK = 1_000
ASYNC_LOOPS = 8


def migrate() -> dict[str, Any]:
    call_command("migrate", verbosity=0, interactive=False)
    return {"migrated": True}


def analyze() -> None:
    # Planner statistics as a table in service would have them (autovacuum may be off or not have run
    # yet): without them PostgreSQL misestimates a freshly filled table. Same for both implementations.
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {TABLE}")


def prepare(task_name: str, count: int) -> dict[str, Any]:
    """Enqueue ``count`` tasks for a drain; not a timed figure (S2 measures enqueueing)."""
    migrate()
    task = getattr(tasks, task_name)
    started = time.perf_counter()
    if IMPL == "fasttasks":
        from fasttasks import enqueue_many

        method = f"fasttasks.enqueue_many, {CHUNK:,} per call"
        for first in range(0, count, CHUNK):
            with transaction.atomic():
                enqueue_many(task, [((), {})] * min(CHUNK, count - first))
    else:
        # django-tasks-db has no bulk enqueue (bulk_create would skip its pre_save receiver).
        method = f"task.enqueue() per task, {CHUNK:,} per transaction"
        for first in range(0, count, CHUNK):
            with transaction.atomic():
                for _ in range(min(CHUNK, count - first)):
                    task.enqueue()
    elapsed = time.perf_counter() - started
    analyze()
    return {"enqueued": count, "enqueue_s": elapsed, "enqueue_method": method}


def count_rows() -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM {TABLE}")
        (rows,) = cursor.fetchone()
    return int(rows)


def enqueue(mode: str, count: int) -> dict[str, Any]:
    """Time ``count`` enqueues of ``noop`` (autocommit, one process, after one warm-up enqueue).

    ``single`` (S2a): ``task.enqueue()`` one call at a time, each its own transaction.
    ``async8`` (S2b): ``await task.aenqueue()`` from 8 coroutines at once (``asyncio.gather``).
    ``bulk`` (S2c): ``fasttasks.enqueue_many`` 1,000 per call; django-tasks-db has no bulk API, so
    its figure is ``task.enqueue()`` per task inside one transaction per 1,000.
    """
    migrate()
    noop = tasks.noop
    noop.enqueue()  # warm up: connection, statement caches, imports
    warm = 1
    if mode == "single":
        started = time.perf_counter()
        for _ in range(count):
            noop.enqueue()
        elapsed = time.perf_counter() - started
    elif mode == "async8":

        async def one_loop(n: int) -> None:
            for _ in range(n):
                await noop.aenqueue()

        async def all_loops() -> float:
            await noop.aenqueue()  # warm up the executor thread's connection
            shares = [count // ASYNC_LOOPS + (i < count % ASYNC_LOOPS) for i in range(ASYNC_LOOPS)]
            began = time.perf_counter()
            await asyncio.gather(*(one_loop(n) for n in shares))
            return time.perf_counter() - began

        elapsed = asyncio.run(all_loops())
        warm += 1
    elif mode == "bulk":
        started = time.perf_counter()
        if IMPL == "fasttasks":
            from fasttasks import enqueue_many

            for first in range(0, count, CHUNK):
                enqueue_many(noop, [((), {})] * min(CHUNK, count - first))
        else:
            for first in range(0, count, CHUNK):
                with transaction.atomic():
                    for _ in range(min(CHUNK, count - first)):
                        noop.enqueue()
        elapsed = time.perf_counter() - started
    else:
        raise SystemExit(f"unknown enqueue mode {mode!r}")
    rows = count_rows()
    if rows != count + warm:
        raise SystemExit(f"expected {count + warm} rows after the enqueues, found {rows}")
    return {"mode": mode, "enqueued": count, "seconds": elapsed, "rate": count / elapsed}


def _finished(ids: list[str]) -> dict[str, tuple[str, Any]]:
    """status and return value of each id (through the ORM, so JSON is decoded the same way)."""
    if IMPL == "fasttasks":
        from fasttasks.models import TaskRecord as Model
    else:
        from django_tasks_db.models import DBTaskResult as Model  # type: ignore[no-redef]
    out: dict[str, tuple[str, Any]] = {}
    for first in range(0, len(ids), 500):
        rows = Model.objects.filter(pk__in=ids[first : first + 500]).values_list(
            "id", "status", "return_value"
        )
        for pk, status, value in rows:
            out[str(pk)] = (status, value)
    return out


def _wait_for(ids: list[str], timeout: float) -> dict[str, tuple[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = _finished(ids)
        if all(rows.get(i, ("READY",))[0] in ("SUCCESSFUL", "FAILED") for i in ids):
            return rows
        if time.monotonic() > deadline:
            states: dict[str, int] = {}
            for i in ids:
                state = rows.get(i, ("MISSING",))[0]
                states[state] = states.get(state, 0) + 1
            raise SystemExit(f"tasks not finished after {timeout:.0f} s: {states}")
        time.sleep(0.1)


def latency(count: int, rate: float, warmup: int) -> dict[str, Any]:
    """S3: enqueue ``stamp`` at ``rate`` per second (open loop) while a worker runs elsewhere.

    Per task: enqueued = ``time.time()`` right after ``enqueue()`` returned (autocommit: committed),
    started = the task's return value (``time.time()`` at its first line). The first ``warmup`` tasks
    are not counted. A probe task, waited for, first makes sure the worker is up.
    """
    stamp = tasks.stamp
    probe = stamp.enqueue()
    _wait_for([probe.id], timeout=60)
    sent: list[tuple[str, float]] = []
    total = warmup + count
    began = time.perf_counter()
    behind = 0.0
    for i in range(total):
        due = began + i / rate
        now = time.perf_counter()
        if now < due:
            time.sleep(due - now)
        else:
            behind = max(behind, now - due)
        result = stamp.enqueue()
        sent.append((result.id, time.time()))
    send_s = time.perf_counter() - began
    rows = _wait_for([i for i, _ in sent], timeout=60)
    latencies = []
    for index, (result_id, enqueued) in enumerate(sent):
        status, value = rows[result_id]
        if status != "SUCCESSFUL" or not isinstance(value, float):
            raise SystemExit(f"task {result_id}: {status}, return value {value!r}")
        if index >= warmup:
            latencies.append((value - enqueued) * 1000.0)
    return {
        "tasks": count,
        "warmup": warmup,
        "rate_asked": rate,
        "rate_sent": total / send_s,
        "max_behind_ms": behind * 1000.0,
        "latencies_ms": latencies,
    }


if __name__ == "__main__":
    command, *rest = sys.argv[1:] or [""]
    if command == "migrate":
        out = migrate()
    elif command == "prepare":
        out = prepare(rest[0], int(rest[1]))
    elif command == "enqueue":
        out = enqueue(rest[0], int(rest[1]))
    elif command == "latency":
        out = latency(int(rest[0]), float(rest[1]), int(rest[2]))
    else:
        raise SystemExit(__doc__)
    print(json.dumps(out))
