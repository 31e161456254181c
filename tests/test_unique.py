"""Unique tasks: while a task with the same key is READY or RUNNING, enqueueing it again returns that
task instead of a second row; the database's unique index decides, so racing enqueues make one row."""

from __future__ import annotations

import threading
from typing import Any

import fasttasks
import pytest
from django.db import connections, transaction
from fasttasks.backend import enqueue_many
from fasttasks.compat import InvalidTask, TaskResultStatus, task_enqueued
from fasttasks.models import TaskRecord

from tests import worker_tasks
from tests.test_worker_process import run_to_end, worker_command

pytestmark = pytest.mark.django_db(transaction=True)


def rows() -> list[TaskRecord]:
    return list(TaskRecord.objects.order_by("enqueued_at", "id"))


def test_a_second_enqueue_returns_the_waiting_task() -> None:
    sent: list[str] = []

    def on_enqueued(sender: Any, task_result: Any, **kwargs: Any) -> None:
        sent.append(task_result.id)

    task_enqueued.connect(on_enqueued)
    try:
        first = worker_tasks.sync_invoice.enqueue(7)
        again = worker_tasks.sync_invoice.enqueue(7)
        # The same call, spelled differently: bound to the parameters, defaults applied.
        by_keyword = worker_tasks.sync_invoice.enqueue(invoice_id=7, force=False)
        forced = worker_tasks.sync_invoice.enqueue(7, force=True)
        other = worker_tasks.sync_invoice.enqueue(8)
    finally:
        task_enqueued.disconnect(on_enqueued)
    assert again.id == first.id == by_keyword.id and again.status == TaskResultStatus.READY
    assert forced.id != first.id and other.id != first.id
    assert len(rows()) == 3
    assert sent == [first.id, forced.id, other.id]  # nothing sent for the duplicates


def test_keyword_order_does_not_matter() -> None:
    one = worker_tasks.sync_invoice.enqueue(invoice_id=1, force=True)
    two = worker_tasks.sync_invoice.enqueue(force=True, invoice_id=1)
    assert one.id == two.id


def test_a_finished_task_frees_its_key() -> None:
    first = worker_tasks.sync_invoice.enqueue(7)
    TaskRecord.objects.filter(pk=first.id).update(status="RUNNING", worker_id="w", lease_token=1)
    assert worker_tasks.sync_invoice.enqueue(7).id == first.id  # still active while running
    TaskRecord.objects.filter(pk=first.id).update(status="SUCCESSFUL", worker_id=None, lease_token=None)
    assert worker_tasks.sync_invoice.enqueue(7).id != first.id
    assert len(rows()) == 2


def test_unique_key_from_a_function_or_a_constant() -> None:
    first = worker_tasks.send_invoice.enqueue(5)
    assert worker_tasks.send_invoice.enqueue(5, copy_to="boss@example.com").id == first.id
    assert worker_tasks.send_invoice.enqueue(6).id != first.id
    report = worker_tasks.nightly_report.enqueue("2026-11-21")
    assert worker_tasks.nightly_report.enqueue("2026-11-22").id == report.id  # one at a time
    with pytest.raises(TypeError, match="it must return a str"):
        worker_tasks.badly_keyed.enqueue(1)


def test_per_call_key_with_with_options() -> None:
    first = worker_tasks.record.with_options(unique_key="only-one").enqueue("unused", "a")
    second = worker_tasks.record.with_options(unique_key="only-one").enqueue("unused", "b")
    plain = worker_tasks.record.enqueue("unused", "c")
    assert second.id == first.id and plain.id != first.id
    assert worker_tasks.sync_invoice.with_options(unique=None).unique is False
    with pytest.raises(TypeError, match="unknown options"):
        worker_tasks.record.with_options(priority=3)
    with pytest.raises(InvalidTask, match="unique_key must be a str or a callable"):
        fasttasks.task(unique_key=3)(worker_tasks.record.func)


def test_enqueue_many_keeps_one_per_key() -> None:
    results = enqueue_many(worker_tasks.sync_invoice, [((1,), {}), ((2,), {}), ((1,), {}), ((3,), {})])
    assert results[0].id == results[2].id
    assert len({r.id for r in results}) == 3
    assert TaskRecord.objects.count() == 3
    assert enqueue_many(worker_tasks.sync_invoice, [((2,), {})])[0].id == results[1].id


def test_the_key_is_taken_in_the_callers_transaction() -> None:
    with transaction.atomic():
        worker_tasks.sync_invoice.enqueue(9)
        transaction.set_rollback(True)
    assert TaskRecord.objects.count() == 0
    first = worker_tasks.sync_invoice.enqueue(9)
    assert TaskRecord.objects.get().id == first.id


def test_twenty_concurrent_enqueues_make_one_row() -> None:
    """20 threads, each with its own connection and transaction, enqueue the same call at once; each
    holds its transaction open a moment after inserting, so the inserts overlap."""
    start = threading.Barrier(20)
    ids: list[str] = []
    errors: list[BaseException] = []

    def enqueue() -> None:
        try:
            start.wait()
            with transaction.atomic():
                result = worker_tasks.sync_invoice.enqueue(77)
                threading.Event().wait(0.05)
            ids.append(result.id)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=enqueue) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(ids) == 20 and len(set(ids)) == 1
    assert TaskRecord.objects.filter(task_path=worker_tasks.sync_invoice.module_path).count() == 1


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_the_worker_runs_a_unique_task_and_frees_its_key() -> None:
    first = worker_tasks.sync_invoice.enqueue(3)
    done = run_to_end(worker_command("--batch"))
    assert done.returncode == 0, done.stderr
    first.refresh()
    assert first.status == TaskResultStatus.SUCCESSFUL and first.return_value == 3
    assert worker_tasks.sync_invoice.enqueue(3).id != first.id


def test_concurrent_aenqueues_of_one_call_share_its_task() -> None:
    """aenqueue's group commit puts concurrent calls in one transaction: duplicates within it too."""
    import asyncio

    from asgiref.sync import async_to_sync

    async def enqueue_all() -> list[Any]:
        return await asyncio.gather(*(worker_tasks.sync_invoice.aenqueue(11) for _ in range(5)))

    results = async_to_sync(enqueue_all)()
    assert len({r.id for r in results}) == 1
    assert TaskRecord.objects.count() == 1
