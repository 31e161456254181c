"""The database goes away under a working worker: PostgreSQL restarted, its connections terminated,
SQLite locked by another process for longer than the worker's busy timeout. Every task still finishes,
and the worker keeps running."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.db import connection
from django.db.utils import Error as DatabaseError
from fasttasks.backend import enqueue_many
from fasttasks.models import TaskRecord

from tests import test_reliability, worker_tasks
from tests.test_reliability import Started
from tests.test_worker_process import lines, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(240), pytest.mark.slow]

start_worker = test_reliability.start_worker


@pytest.fixture(autouse=True)
def fresh_connection_afterwards() -> Iterator[None]:
    """The fault broke the test's own connection too: drop it before pytest-django cleans up."""
    yield
    connection.close()


def postgres_only() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("a PostgreSQL fault")


def sqlite_only() -> None:
    if connection.vendor != "sqlite":
        pytest.skip("an SQLite fault")


def count(status: str) -> int:
    """Row count from the test's own connection, which the fault may have broken too."""
    try:
        return TaskRecord.objects.filter(status=status).count()
    except DatabaseError:
        connection.close()
        return -1


def enqueue_recorded(path: Path, tasks: int, seconds: float) -> None:
    items = [((str(path), f"t{number}", seconds), {}) for number in range(tasks)]
    enqueue_many(worker_tasks.sleep_then_record, items)


def runs_per_task(path: Path) -> Counter[str]:
    return Counter(line.split()[1] for line in lines(path) if line.startswith("end "))


def restart_postgres() -> None:
    """Restarts the local cluster (fast shutdown: every connection is cut)."""
    tool = shutil.which("pg_ctlcluster")
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if tool is None or not versions:
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs pg_ctlcluster to restart PostgreSQL for this test")
        pytest.skip("no pg_ctlcluster here to restart PostgreSQL")
    host = connection.settings_dict.get("HOST") or ""
    if host not in ("", "127.0.0.1", "localhost", "::1") and not host.startswith("/"):
        pytest.skip(f"PostgreSQL at {host} is not the local cluster")
    subprocess.run(
        [tool, "--skip-systemctl-redirect", versions[-1], "main", "restart", "-m", "fast"],
        check=True,
        timeout=120,
        capture_output=True,
    )


def finish(worker: Started, tasks: int, marks: Path) -> None:
    wait_for(lambda: count("SUCCESSFUL") == tasks, timeout=120, what="every task to succeed")
    assert worker.process.poll() is None, worker.output()
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=60) == 0, worker.output()
    assert TaskRecord.objects.exclude(status="SUCCESSFUL").count() == 0
    runs = runs_per_task(marks)
    assert set(runs) == {f"t{number}" for number in range(tasks)}


def test_worker_survives_a_postgres_restart_mid_drain(
    tmp_path: Path, start_worker: Callable[..., Started]
) -> None:
    postgres_only()
    marks, tasks = tmp_path / "marks", 6000
    enqueue_recorded(marks, tasks, 0.01)
    worker = start_worker("--concurrency", "8")
    wait_for(lambda: len(runs_per_task(marks)) >= 300, timeout=60, what="the drain to be under way")
    restarted_with = len(runs_per_task(marks))
    restart_postgres()
    assert len(runs_per_task(marks)) < tasks, "the drain ended during the restart; make it longer"
    finish(worker, tasks, marks)
    output = worker.output()
    assert "failed" in output and "retrying" in output  # it did see the outage
    duplicates = sum(runs_per_task(marks).values()) - tasks
    print(f"\npostgres restart after {restarted_with} tasks: {duplicates} ran twice")


def test_worker_survives_its_connections_being_terminated_mid_drain(
    tmp_path: Path, start_worker: Callable[..., Started]
) -> None:
    postgres_only()
    marks, tasks = tmp_path / "marks", 4000
    enqueue_recorded(marks, tasks, 0.01)
    worker = start_worker("--concurrency", "8")
    terminated = 0
    for threshold in (300, 900, 1500):
        wait_for(lambda t=threshold: len(runs_per_task(marks)) >= t, timeout=60, what=f"{threshold} tasks")
        with connection.cursor() as cursor:
            # Every connection of the worker: the store's pool, its LISTEN connection and the task threads'.
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            terminated += cursor.fetchone()[0]
    assert terminated >= 3
    finish(worker, tasks, marks)


def test_worker_survives_sqlite_locked_past_its_busy_timeout(
    tmp_path: Path, start_worker: Callable[..., Started]
) -> None:
    sqlite_only()
    marks, tasks = tmp_path / "marks", 3000
    enqueue_recorded(marks, tasks, 0.002)
    # The worker gives up waiting for a lock after 0.2 s, so a 3 s lock makes its claims and result
    # writes fail ("database is locked"), not just wait.
    worker = start_worker("--concurrency", "8", FASTTASKS_TEST_SQLITE_TIMEOUT="0.2")
    wait_for(lambda: len(runs_per_task(marks)) >= 300, timeout=60, what="the drain to be under way")
    locked = threading.Event()

    def hold_the_lock() -> None:
        other = sqlite3.connect(str(connection.settings_dict["NAME"]), timeout=30, isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")
            locked.set()
            time.sleep(3)
            other.execute("COMMIT")
        finally:
            other.close()

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    assert locked.wait(30)
    during = len(runs_per_task(marks))
    holder.join()
    assert during < tasks, "the drain ended before the lock; make it longer"
    finish(worker, tasks, marks)
    assert "database is locked" in worker.output()
