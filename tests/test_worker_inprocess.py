"""The worker run inside the test process (``run_worker(batch=True)``), so that signals, contexts and
results can be checked directly. Each test drains real rows through the Rust core and Python threads."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connections
from django.utils import timezone
from fasttasks._worker import WorkerOptions, run_worker
from fasttasks.backend import FastTasksBackend
from fasttasks.compat import TaskResultStatus, default_task_backend, task_finished, task_started
from fasttasks.models import TaskRecord

from tests import worker_tasks

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

WORKER_ID = "inprocess-worker"


def drain(**options: Any) -> None:
    defaults: dict[str, Any] = {
        "batch": True,
        "queues": None,
        "worker_id": WORKER_ID,
        "concurrency": 4,
        "interval": 0.05,
        "verbosity": 0,
    }
    defaults.update(options)
    assert run_worker(WorkerOptions(**defaults)) == 0


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    return tmp_path / "marks.txt"


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_results_of_successful_tasks(marks: Path) -> None:
    recorded = worker_tasks.record.enqueue(str(marks), "one")
    context = worker_tasks.context_info.enqueue(7)
    coroutine = worker_tasks.async_add.enqueue(2, 3)
    async_context = worker_tasks.async_context.enqueue()
    tuple_result = worker_tasks.returns_tuple.enqueue()
    orm = worker_tasks.uses_orm.enqueue()

    drain()

    for result in (recorded, context, coroutine, async_context, tuple_result, orm):
        result.refresh()
        assert result.status == TaskResultStatus.SUCCESSFUL, result.errors
        assert result.errors == []
        assert result.worker_ids == [WORKER_ID]
        assert result.attempts == 1
        assert result.enqueued_at <= result.started_at <= result.last_attempted_at <= result.finished_at
    assert recorded.return_value == "one"
    assert lines(marks) == ["one"]
    assert context.return_value == {
        "attempt": 1,
        "id": context.id,
        "status": "RUNNING",
        "worker_ids": [WORKER_ID],
        "value": 7,
    }
    assert coroutine.return_value == 5
    assert async_context.return_value == 1
    # normalize_json makes tuples lists; JSON makes int keys strings.
    assert tuple_result.return_value == [1, {"2": "two"}]
    assert orm.return_value == 6


def test_failures_are_recorded_with_class_path_and_traceback() -> None:
    value_error = worker_tasks.raises_value_error.enqueue("bad coupon")
    async_failure = worker_tasks.async_fail.enqueue()
    unserializable = worker_tasks.returns_unserializable.enqueue()
    system_exit = worker_tasks.raises_system_exit.enqueue()
    interrupt = worker_tasks.raises_keyboard_interrupt.enqueue()

    drain()

    expected = {
        value_error.id: ("builtins.ValueError", "ValueError: bad coupon"),
        async_failure.id: ("builtins.RuntimeError", "RuntimeError: async boom"),
        unserializable.id: ("builtins.TypeError", "Unsupported type"),
        system_exit.id: ("builtins.SystemExit", "SystemExit: 3"),
        interrupt.id: ("builtins.KeyboardInterrupt", "KeyboardInterrupt"),
    }
    for result in (value_error, async_failure, unserializable, system_exit, interrupt):
        result.refresh()
        assert result.status == TaskResultStatus.FAILED
        assert result.finished_at is not None
        assert len(result.errors) == 1
        class_path, text = expected[result.id]
        assert result.errors[0].exception_class_path == class_path
        assert text in result.errors[0].traceback
        assert "Traceback (most recent call last)" in result.errors[0].traceback
        with pytest.raises(ValueError, match="Task failed"):
            _ = result.return_value
    value_error.refresh()
    assert value_error.errors[0].exception_class is ValueError


def test_signals_are_sent_from_the_worker_with_the_backend_class() -> None:
    events: list[tuple[str, str, str, str]] = []
    lock = threading.Lock()

    def on_started(sender: Any, task_result: Any, **kwargs: Any) -> None:
        with lock:
            events.append(("started", sender.__name__, task_result.id, str(task_result.status)))

    def on_finished(sender: Any, task_result: Any, **kwargs: Any) -> None:
        with lock:
            events.append(("finished", sender.__name__, task_result.id, str(task_result.status)))

    task_started.connect(on_started, sender=FastTasksBackend)
    task_finished.connect(on_finished, sender=FastTasksBackend)
    try:
        good = worker_tasks.async_add.enqueue(1, 1)
        bad = worker_tasks.raises_value_error.enqueue("x")
        drain()
    finally:
        task_started.disconnect(on_started, sender=FastTasksBackend)
        task_finished.disconnect(on_finished, sender=FastTasksBackend)

    assert sorted(events) == sorted(
        [
            ("started", "FastTasksBackend", good.id, "RUNNING"),
            ("finished", "FastTasksBackend", good.id, "SUCCESSFUL"),
            ("started", "FastTasksBackend", bad.id, "RUNNING"),
            ("finished", "FastTasksBackend", bad.id, "FAILED"),
        ]
    )


def test_priority_order_then_enqueue_order(marks: Path) -> None:
    for marker, priority in [("low", -5), ("normal-1", 0), ("high", 10), ("normal-2", 0), ("top", 50)]:
        worker_tasks.record.using(priority=priority).enqueue(str(marks), marker)
    drain(concurrency=1)
    assert lines(marks) == ["top", "high", "normal-1", "normal-2", "low"]


def test_run_after_in_the_future_waits(marks: Path) -> None:
    due = worker_tasks.record.using(run_after=timezone.now() - timedelta(seconds=1)).enqueue(
        str(marks), "due"
    )
    later = worker_tasks.record.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(
        str(marks), "later"
    )
    drain()
    due.refresh()
    later.refresh()
    assert due.status == TaskResultStatus.SUCCESSFUL
    assert later.status == TaskResultStatus.READY
    assert later.task.run_after is not None
    assert lines(marks) == ["due"]


def test_queue_filter(marks: Path) -> None:
    worker_tasks.record.enqueue(str(marks), "default-queue")
    worker_tasks.record_email.enqueue(str(marks), "emails-queue")
    drain(queues=("emails",))
    assert lines(marks) == ["emails-queue"]
    drain(queues=("default",))
    assert lines(marks) == ["emails-queue", "default-queue"]


def test_max_tasks_stops_claiming(marks: Path) -> None:
    for index in range(6):
        worker_tasks.record.enqueue(str(marks), str(index))
    drain(batch=False, max_tasks=2, concurrency=1)
    assert len(lines(marks)) == 2
    assert TaskRecord.objects.filter(status="READY").count() == 4


def _insert_raw(task_path: str, args: Any = (), kwargs: Any = None) -> str:
    """Writes a row as a broken client or a deleted task module would leave it."""
    now = timezone.now()
    row = TaskRecord.objects.create(
        id=str(uuid.uuid4()),
        task_path=task_path,
        queue_name="default",
        backend_name="default",
        priority=0,
        status="READY",
        args=list(args) if isinstance(args, tuple) else args,
        kwargs=kwargs if kwargs is not None else {},
        available_at=now,
        enqueued_at=now,
    )
    return row.id


def test_rows_that_cannot_run_fail_and_the_worker_goes_on(marks: Path) -> None:
    missing_module = _insert_raw("tests.no_such_module.task")
    missing_attribute = _insert_raw("tests.worker_tasks.no_such_task")
    not_a_task = _insert_raw("tests.worker_tasks.not_a_task")
    corrupt_args = _insert_raw(worker_tasks.record.module_path, args={"not": "a list"})
    good = worker_tasks.record.enqueue(str(marks), "still runs")

    drain()

    for row_id in (missing_module, missing_attribute, not_a_task, corrupt_args):
        row = TaskRecord.objects.get(id=row_id)
        assert row.status == "FAILED", row_id
        assert len(row.errors) == 1
        assert row.errors[0]["traceback"]
        assert row.finished_at is not None
    assert "not_a_task" in TaskRecord.objects.get(id=not_a_task).errors[0]["traceback"]
    good.refresh()
    assert good.status == TaskResultStatus.SUCCESSFUL
    assert lines(marks) == ["still runs"]


def test_many_tasks_at_concurrency(marks: Path) -> None:
    results = [worker_tasks.record.enqueue(str(marks), str(index)) for index in range(200)]
    results += [worker_tasks.async_add.enqueue(index, 1, 0.001) for index in range(100)]
    drain(concurrency=8)
    assert sorted(lines(marks), key=int) == [str(index) for index in range(200)]
    assert TaskRecord.objects.filter(status="SUCCESSFUL").count() == 300
    statuses = {row.worker_ids[0] for row in TaskRecord.objects.all()}
    assert statuses == {WORKER_ID}
    assert json.loads(json.dumps(results[-1].args)) == [99, 1, 0.001]


def test_get_result_from_the_backend_after_the_worker() -> None:
    result = worker_tasks.async_add.enqueue(20, 22)
    drain()
    fetched = default_task_backend.get_result(result.id)
    assert fetched.status == TaskResultStatus.SUCCESSFUL
    assert fetched.return_value == 42
    assert fetched.task.func is worker_tasks.async_add.func
    assert connections["default"].vendor in {"sqlite", "postgresql"}


def test_tasks_that_enqueue_tasks_keep_the_database_intact(marks: Path) -> None:
    # Django (in the task threads) writes the queue table while the Rust core claims and completes on
    # the same file: on SQLite this needs one SQLite library in the process (see _worker.py).
    parents = [worker_tasks.enqueue_children.enqueue(str(marks), f"p{i}", 5) for i in range(60)]
    drain(concurrency=8)
    for parent in parents:
        parent.refresh()
        assert parent.status == TaskResultStatus.SUCCESSFUL
    assert sorted(lines(marks)) == sorted(f"p{i}.{j}" for i in range(60) for j in range(5))
    assert TaskRecord.objects.filter(status="SUCCESSFUL").count() == 60 * 6
    connection = connections["default"]
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA integrity_check")
            assert cursor.fetchall() == [("ok",)]


def test_worker_links_the_same_sqlite_as_python() -> None:
    import sqlite3

    from fasttasks._core import sqlite_version

    assert sqlite_version() == sqlite3.sqlite_version


def test_bulk_enqueue_runs_first_in_first_out(marks: Path) -> None:
    from fasttasks.backend import enqueue_many

    results = enqueue_many(worker_tasks.record, [((str(marks), str(i)), {}) for i in range(50)])
    assert [r.id for r in results] == sorted(r.id for r in results)
    assert all(uuid.UUID(r.id).version == 7 for r in results)
    drain(concurrency=1)
    assert lines(marks) == [str(i) for i in range(50)]


def test_connections_are_closed_after_each_task_as_after_a_request() -> None:
    # CONN_MAX_AGE is 0 in the test settings: like a request, every task ends by closing its connection
    # (django.db.close_old_connections), so no task starts with the previous one's connection.
    assert connections["default"].settings_dict["CONN_MAX_AGE"] == 0
    results = [worker_tasks.connection_was_open.enqueue() for _ in range(20)]
    drain(concurrency=1)
    for result in results:
        result.refresh()
        assert result.status == TaskResultStatus.SUCCESSFUL
        assert result.return_value is False


def test_async_tasks_connections_are_closed_after_each_task() -> None:
    results = [worker_tasks.async_connection_was_open.enqueue() for _ in range(10)]
    drain(concurrency=1)
    for result in results:
        result.refresh()
    assert [r.status for r in results] == [TaskResultStatus.SUCCESSFUL] * 10
    assert [r.return_value for r in results] == [False] * 10


def _most_at_once(marks: list[str]) -> int:
    running = most = 0
    for line in marks:
        running += 1 if line.startswith("start ") else -1
        most = max(most, running)
    return most


@pytest.mark.parametrize("concurrency", [1, 3])
def test_concurrency_bounds_coroutine_tasks_too(marks: Path, concurrency: int) -> None:
    # Short tasks make the worker claim ahead; claimed-ahead coroutines must still wait for a slot.
    for index in range(150):
        worker_tasks.async_sleep_then_record.enqueue(str(marks), str(index), 0.002)
    drain(concurrency=concurrency)
    assert len(lines(marks)) == 300
    assert _most_at_once(lines(marks)) == concurrency
