"""``fasttasks.cancel()``: a READY task never starts; a RUNNING one gets ``TaskCancelled`` raised in
it (sync) or is cancelled (coroutine); a finished one is left alone, and the answer says so."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import fasttasks
import pytest
from asgiref.sync import async_to_sync
from django.db import transaction
from fasttasks import Cancellation
from fasttasks.compat import TaskResultDoesNotExist, TaskResultStatus
from fasttasks.models import TaskRecord

from tests import test_worker_process, worker_tasks
from tests.test_worker_process import lines, run_to_end, wait_for, worker_command

start_worker = test_worker_process.start_worker  # the fixture
CANCELLED = "fasttasks.exceptions.TaskCancelled"

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_ready_task_is_cancelled_at_once_and_never_runs(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    doomed = worker_tasks.record.enqueue(str(marks), "doomed")
    deferred = worker_tasks.fails_twice.enqueue(str(marks))
    kept = worker_tasks.record.enqueue(str(marks), "kept")
    assert fasttasks.cancel(doomed.id) is Cancellation.CANCELLED
    assert async_to_sync(fasttasks.acancel)(deferred.id) is Cancellation.CANCELLED
    for result in (doomed, deferred):
        result.refresh()
        assert result.status == TaskResultStatus.FAILED and fasttasks.is_cancelled(result)
        assert [e.exception_class_path for e in result.errors] == [CANCELLED]
        assert result.finished_at is not None and result.started_at is None
    done = run_to_end(worker_command("--batch"))
    assert done.returncode == 0, done.stderr
    assert lines(marks) == ["kept"]
    kept.refresh()
    assert kept.status == TaskResultStatus.SUCCESSFUL and not fasttasks.is_cancelled(kept)
    # Cancelling a finished task changes nothing and says so.
    assert fasttasks.cancel(kept.id) is Cancellation.ALREADY_FINISHED
    assert fasttasks.cancel(doomed.id) is Cancellation.ALREADY_FINISHED
    kept.refresh()
    assert kept.status == TaskResultStatus.SUCCESSFUL and kept.errors == []
    with pytest.raises(TaskResultDoesNotExist):
        fasttasks.cancel("no-such-task")


def test_cancel_is_part_of_the_callers_transaction() -> None:
    result = worker_tasks.record.enqueue("unused", "x")
    with transaction.atomic():
        assert fasttasks.cancel(result.id) is Cancellation.CANCELLED
        transaction.set_rollback(True)
    result.refresh()
    assert result.status == TaskResultStatus.READY


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_running_tasks_are_stopped_and_not_retried(
    tmp_path: Path, start_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    busy_marks, waiting_marks = tmp_path / "busy", tmp_path / "waiting"
    busy = worker_tasks.busy_until_cancelled.enqueue(str(busy_marks))
    waiting = worker_tasks.waits_until_cancelled.enqueue(str(waiting_marks))
    worker = start_worker("--concurrency", "2", "--heartbeat", "0.2", "--dead-after", "1")
    wait_for(
        lambda: lines(busy_marks) == ["start"] and lines(waiting_marks) == ["start"], what="both started"
    )
    asked = time.monotonic()
    assert fasttasks.cancel(busy.id) is Cancellation.REQUESTED
    assert fasttasks.cancel(waiting.id) is Cancellation.REQUESTED
    assert fasttasks.cancel(busy.id) is Cancellation.REQUESTED  # asking twice is harmless
    wait_for(lambda: all(r.refresh() or r.is_finished for r in (busy, waiting)), timeout=30, what="stopped")
    took = time.monotonic() - asked
    # The worker keeps working.
    after = worker_tasks.record.enqueue(str(tmp_path / "after"), "after")
    wait_for(lambda: lines(tmp_path / "after") == ["after"], what="a task after the cancellations")
    worker.send_signal(signal.SIGTERM)
    output, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, output

    for result in (busy, waiting):
        assert result.status == TaskResultStatus.FAILED and fasttasks.is_cancelled(result)
        assert [e.exception_class_path for e in result.errors] == [CANCELLED]  # no retry
        assert "cancelled while running" in result.errors[0].traceback
    assert lines(busy_marks) == ["start"]  # stopped, not run to its end
    assert lines(waiting_marks) == ["start", "cleaned up"]  # the coroutine's finally ran
    assert took < 10  # a heartbeat round (0.2 s here) and the next bytecode, not the task's 60 s
    after.refresh()
    assert after.status == TaskResultStatus.SUCCESSFUL
    assert TaskRecord.objects.get(pk=busy.id).cancel_requested_at is not None
