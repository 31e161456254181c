"""``@task(timeout=...)``: coroutine tasks are cancelled at the deadline; sync tasks get
``fasttasks.TaskTimeout`` raised in their thread, which takes effect at their next Python bytecode."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fasttasks
import pytest
from fasttasks.backend import FastTasksBackend
from fasttasks.compat import InvalidTask, TaskResultStatus

from tests import test_worker_process, worker_tasks
from tests.test_reliability import child_pids
from tests.test_retries import run_until_finished
from tests.test_worker_process import lines, wait_for

start_worker = test_worker_process.start_worker  # the fixture
TIMED_OUT = "fasttasks.exceptions.TaskTimeout"


def noop() -> None:
    pass


@pytest.mark.parametrize("value", [0, -1, float("inf"), float("nan"), "5", True])
def test_invalid_timeouts_fail_at_decoration(value: Any) -> None:
    with pytest.raises(InvalidTask, match="timeout must be a finite number of seconds > 0"):
        fasttasks.task(timeout=value)(noop)


def test_the_backend_default_timeout_applies_where_the_task_sets_none() -> None:
    backend = FastTasksBackend("with-timeout", {"OPTIONS": {"TIMEOUT": 2}, "QUEUES": []})
    assert backend.timeout_for(fasttasks.task(noop)) == 2.0
    assert backend.timeout_for(fasttasks.task(timeout=7)(noop)) == 7.0
    broken = FastTasksBackend("broken", {"OPTIONS": {"TIMEOUT": "soon"}, "QUEUES": []})
    assert any(m.id == "fasttasks.E004" and "TIMEOUT" in m.msg for m in broken.check())
    assert fasttasks.TaskTimeout.__mro__[1] is TimeoutError


def ran_for(result: Any) -> float:
    return float((result.finished_at - result.last_attempted_at).total_seconds())


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
@pytest.mark.slow
def test_busy_sync_task_and_coroutine_stop_at_the_deadline(
    tmp_path: Path, start_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    busy = worker_tasks.busy_for.enqueue(str(tmp_path / "busy"), 30.0)
    waiting = worker_tasks.awaits_for.enqueue(str(tmp_path / "await"), 30.0)
    after = [worker_tasks.quick_with_timeout.enqueue(number) for number in range(50)]
    run_until_finished(start_worker, [busy, waiting, *after])
    for result in (busy, waiting):
        assert result.status == TaskResultStatus.FAILED
        assert [e.exception_class_path for e in result.errors] == [TIMED_OUT]
        assert "ran past the task's timeout of 0.5s" in result.errors[0].traceback
        assert 0.5 <= ran_for(result) < 5  # not the 30 s the task wanted
    assert lines(tmp_path / "busy")[-1] != "end" and lines(tmp_path / "await")[-1] != "end"
    # Tasks that finish in time are untouched (no stray TaskTimeout surfaces after them).
    assert [r.status for r in after] == [TaskResultStatus.SUCCESSFUL] * 50
    assert [r.return_value for r in after] == [2 * n for n in range(50)]


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
@pytest.mark.slow
def test_a_sleeping_sync_task_times_out_when_the_sleep_returns(
    tmp_path: Path, start_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    """The documented limit of thread mode: time.sleep (C) cannot be interrupted from another thread."""
    sleeper = worker_tasks.sleeps_for.enqueue(str(tmp_path / "sleep"), 1.5)
    run_until_finished(start_worker, [sleeper])
    assert sleeper.status == TaskResultStatus.FAILED
    assert [e.exception_class_path for e in sleeper.errors] == [TIMED_OUT]
    assert 1.5 <= ran_for(sleeper) < 5
    assert lines(tmp_path / "sleep")[-1] != "end"  # stopped right after the sleep, not run to its end


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
@pytest.mark.slow
def test_timed_out_attempts_follow_the_retry_policy(
    tmp_path: Path, start_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    result = worker_tasks.busy_and_retried.enqueue(str(tmp_path / "m"))
    run_until_finished(start_worker, [result])
    assert result.status == TaskResultStatus.FAILED
    assert [e.exception_class_path for e in result.errors] == [TIMED_OUT, TIMED_OUT]
    assert len(lines(tmp_path / "m")) == 2


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
@pytest.mark.slow
def test_under_processes_a_task_ignoring_its_timeout_costs_its_process(
    tmp_path: Path, start_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    marks = tmp_path / "m"
    stubborn = worker_tasks.ignores_its_timeout.enqueue(str(marks))
    supervisor = start_worker("--processes", "2", "--concurrency", "1")
    wait_for(lambda: stubborn.refresh() or stubborn.is_finished, timeout=60, what="the attempt to be ended")
    assert stubborn.status == TaskResultStatus.FAILED
    assert [e.exception_class_path for e in stubborn.errors] == [TIMED_OUT]
    assert "its worker process was stopped and replaced" in stubborn.errors[0].traceback
    # 0.5 s of timeout and 2 s more to ignore it: not the 30 s the task wanted.
    assert ran_for(stubborn) < 10
    assert "swallowed" in lines(marks) and "end" not in lines(marks)
    # The process was replaced, and the replacement works.
    worker_tasks.record.enqueue(str(tmp_path / "after"), "after")
    wait_for(lambda: lines(tmp_path / "after") == ["after"], timeout=60, what="a task after the replacement")
    wait_for(lambda: len(child_pids(supervisor.pid)) == 2, what="the replacement process")
    supervisor.send_signal(signal.SIGTERM)
    output, _ = supervisor.communicate(timeout=30)
    assert supervisor.returncode == 0, output
    assert "ignored its TaskTimeout" in output and "exited with code 1" in output
