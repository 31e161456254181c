"""Steps of one benchmark scenario that need Django set up with that scenario's settings.

Run by ``benches/run.py`` in a fresh process per step (settings come from the environment, see
``benchproj/settings.py``); prints one JSON object on stdout.

    python _child.py prepare N   # migrate, then enqueue N no-op tasks
    python _child.py inspect     # task counts by status, first start and last finish
    python _child.py enqueue single|bulk N   # migrate, then time N enqueues (see enqueue())
"""

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchproj.settings")

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402

IMPL = settings.IMPL  # type: ignore[misc]
TABLE = "fasttasks_task" if IMPL == "fasttasks" else "django_tasks_database_dbtaskresult"
CHUNK = 1_000


def prepare(count: int) -> dict[str, object]:
    call_command("migrate", verbosity=0, interactive=False)
    from benchproj.tasks import noop

    started = time.perf_counter()
    if IMPL == "fasttasks":
        from fasttasks import enqueue_many

        method = "fasttasks.enqueue_many, 1,000 per call, one transaction"
        with transaction.atomic():
            for first in range(0, count, CHUNK):
                enqueue_many(noop, [((), {})] * min(CHUNK, count - first))
    else:
        # django-tasks-db has no bulk enqueue (bulk_create would skip its pre_save receiver).
        method = "task.enqueue() per task, one transaction"
        with transaction.atomic():
            for _ in range(count):
                noop.enqueue()
    elapsed = time.perf_counter() - started
    # Planner statistics as a table in service would have them (autovacuum may be off or not yet run):
    # without them PostgreSQL misestimates the freshly filled table and claims degrade to a sort of all
    # READY rows per claim. Same for both implementations.
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {TABLE}")
    return {"enqueued": count, "enqueue_s": elapsed, "enqueue_method": method}


def enqueue(mode: str, count: int) -> dict[str, object]:
    """Time ``count`` enqueues of a no-op task from one thread in autocommit mode.

    ``single``: ``task.enqueue()`` one call at a time, each its own transaction (scenario S2a).
    ``bulk``: ``fasttasks.enqueue_many`` with 1,000 per call (S2c); django-tasks-db has no bulk API.
    """
    call_command("migrate", verbosity=0, interactive=False)
    from benchproj.tasks import noop

    noop.enqueue()  # warm up: connection, statement caches, imports
    if mode == "single":
        started = time.perf_counter()
        for _ in range(count):
            noop.enqueue()
        elapsed = time.perf_counter() - started
    elif mode == "bulk" and IMPL == "fasttasks":
        from fasttasks import enqueue_many

        started = time.perf_counter()
        for first in range(0, count, CHUNK):
            enqueue_many(noop, [((), {})] * min(CHUNK, count - first))
        elapsed = time.perf_counter() - started
    else:
        return {"mode": mode, "skipped": f"{IMPL} has no bulk enqueue"}
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM {TABLE}")
        (rows,) = cursor.fetchone()
    if rows != count + 1:
        raise SystemExit(f"expected {count + 1} rows, found {rows}")
    return {"mode": mode, "enqueued": count, "seconds": elapsed, "per_second": count / elapsed}


def inspect() -> dict[str, object]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT status, COUNT(*) FROM {TABLE} GROUP BY status")
        counts = {status: n for status, n in cursor.fetchall()}
        cursor.execute(f"SELECT MIN(started_at), MAX(finished_at) FROM {TABLE}")
        first_start, last_finish = cursor.fetchone()
    return {"counts": counts, "first_start": _iso(first_start), "last_finish": _iso(last_finish)}


def _iso(value: object) -> str | None:
    if value is None:
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()  # type: ignore[no-any-return]
    return str(value)


if __name__ == "__main__":
    if sys.argv[1:2] == ["prepare"]:
        out = prepare(int(sys.argv[2]))
    elif sys.argv[1:2] == ["inspect"]:
        out = inspect()
    elif sys.argv[1:2] == ["enqueue"]:
        out = enqueue(sys.argv[2], int(sys.argv[3]))
    else:
        raise SystemExit(__doc__)
    print(json.dumps(out))
