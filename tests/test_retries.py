"""Retries with backoff, declared on the task (``fasttasks.task`` / Django 6.1's ``@task``) or for the
backend (``OPTIONS["RETRY"]``): the options, their validation, and retries run by a real worker."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fasttasks
import pytest
from fasttasks import ExponentialBackoff, Retry
from fasttasks.backend import FastTasksBackend
from fasttasks.compat import InvalidTask, TaskResultStatus, task_backends
from fasttasks.models import TaskRecord
from fasttasks.retry import RetryPolicy

from tests import test_worker_process, worker_tasks
from tests.test_worker_process import lines, wait_for

start_worker = test_worker_process.start_worker  # the fixture

FAST_RESCUE = ("--heartbeat", "0.2", "--dead-after", "1")


def noop() -> None:
    pass


# -- declaring ---------------------------------------------------------------------------------------


def test_fasttasks_task_makes_a_django_task_with_options() -> None:
    declared = fasttasks.task(max_attempts=4, retry_on=ValueError, backoff={"base": 2, "cap": 8})(noop)
    assert isinstance(declared, fasttasks.Task)
    assert (declared.max_attempts, declared.retry_on) == (4, (ValueError,))
    assert declared.backoff == ExponentialBackoff(base=2, cap=8)
    # Django's own operations keep the options.
    moved = declared.using(priority=5, queue_name="emails")
    assert (moved.max_attempts, moved.retry_on, moved.priority) == (4, (ValueError,), 5)
    assert fasttasks.task(noop).max_attempts is None  # not set: the backend's default


def test_the_backend_builds_fasttasks_tasks() -> None:
    assert task_backends["default"].task_class is fasttasks.Task


@pytest.mark.skipif(not worker_tasks.DJANGO_DECORATOR_TAKES_OPTIONS, reason="Django 6.1's @task(**kwargs)")
def test_djangos_decorator_takes_the_options_on_django_61() -> None:
    declared = worker_tasks.django_decorated_fails_twice
    assert isinstance(declared, fasttasks.Task) and declared.max_attempts == 3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be a whole number of at least 1"),
        ({"max_attempts": True}, "max_attempts must be a whole number"),
        ({"max_attempts": "3"}, "max_attempts must be a whole number"),
        ({"retry_on": "nope"}, "cannot import 'nope'"),
        ({"retry_on": ValueError("x")}, "must hold exception classes"),
        ({"retry_on": (int,)}, "must hold exception classes"),
        ({"retry_on": ()}, "at least one exception class"),
        ({"backoff": 5}, "must be a callable"),
        ({"backoff": {"base": 1, "factor": 2}}, "unknown keys ['factor']"),
        ({"backoff": {"base": -1}}, "base must be a finite number of seconds > 0"),
        ({"backoff": {"base": 10, "cap": 1}}, "must be at least its base"),
    ],
)
def test_invalid_options_fail_at_decoration(options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidTask) as raised:
        fasttasks.task(**options)(noop)
    assert message in str(raised.value)


def test_invalid_backend_retry_options_are_a_check_error() -> None:
    backend = FastTasksBackend("broken", {"OPTIONS": {"RETRY": {"max_attempts": 0}}, "QUEUES": []})
    errors = [m for m in backend.check() if m.id == "fasttasks.E004"]
    assert len(errors) == 1 and "RETRY']['max_attempts'] must be a whole number" in errors[0].msg
    backend = FastTasksBackend("broken", {"OPTIONS": {"RETRY": {"tries": 3}}, "QUEUES": []})
    assert "unknown keys ['tries']" in str(next(m for m in backend.check() if m.id == "fasttasks.E004").msg)


@pytest.mark.django_db
def test_enqueue_stores_the_attempts_the_task_gets() -> None:
    own = worker_tasks.fails_twice.enqueue("unused")
    default = worker_tasks.fails_twice_with_backend_defaults.enqueue("unused")
    plain = worker_tasks.record.enqueue("unused", "x")
    attempts = dict(TaskRecord.objects.values_list("id", "max_attempts"))
    assert (attempts[own.id], attempts[default.id], attempts[plain.id]) == (3, 3, 1)


# -- the policy --------------------------------------------------------------------------------------


def test_exponential_backoff_with_full_jitter() -> None:
    plain = ExponentialBackoff(base=1, cap=10, jitter=False)
    error = ValueError()
    assert [plain(n, error) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert plain(10**9, error) == 10  # no overflow
    jittered = ExponentialBackoff(base=1, cap=10)
    draws = [jittered(3, error) for _ in range(2000)]
    assert 0 <= min(draws) < 0.5 and 3.5 < max(draws) <= 4  # uniform over [0, 4]


def test_policy_decides_retry_delay_and_end() -> None:
    policy = RetryPolicy(retry_on=(ConnectionError,), backoff=lambda attempt, exc: 10.0 * attempt)
    down = ConnectionError()
    assert policy.delay(down, attempt=1, failures=1, max_attempts=3) == 10.0
    assert policy.delay(down, attempt=2, failures=2, max_attempts=3) == 20.0
    assert policy.delay(down, attempt=3, failures=3, max_attempts=3) is None  # exhausted
    assert policy.delay(TypeError(), attempt=1, failures=1, max_attempts=3) is None  # not retried
    # Retry() ignores retry_on; its delay wins over the backoff; its attempt counts.
    assert policy.delay(Retry(delay=2.5), attempt=1, failures=1, max_attempts=3) == 2.5
    assert policy.delay(Retry(), attempt=2, failures=2, max_attempts=3) == 20.0
    assert policy.delay(Retry(delay=1), attempt=3, failures=3, max_attempts=3) is None
    # A crashed attempt is not a failure: attempt 3 after one crash is the second failure.
    assert policy.delay(down, attempt=3, failures=2, max_attempts=3) == 30.0
    with pytest.raises(ValueError, match="finite number of seconds"):
        RetryPolicy(backoff=lambda attempt, exc: -1.0).delay(down, 1, 1, 3)
    with pytest.raises(ValueError, match="Retry"):
        Retry(delay=-1)


# -- run by the worker -------------------------------------------------------------------------------


def attempt_times(path: Path) -> list[float]:
    return [float(line.rsplit(" at ", 1)[1]) for line in lines(path)]


def run_until_finished(
    start_worker: Callable[..., subprocess.Popen[str]], results: list[Any], *flags: str
) -> str:
    worker = start_worker("--queues", "*", *flags)
    wait_for(
        lambda: all(r.refresh() or r.is_finished for r in results), timeout=60, what="the tasks to finish"
    )
    worker.send_signal(signal.SIGTERM)
    output, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, output
    return output


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
@pytest.mark.slow
def test_a_task_failing_twice_succeeds_on_its_third_attempt(
    tmp_path: Path, start_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    marks = tmp_path / "marks"
    result = worker_tasks.fails_twice.enqueue(str(marks))
    output = run_until_finished(start_worker, [result])
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 3  # TaskContext.attempt of the last run
    assert [e.exception_class_path for e in result.errors] == ["builtins.ConnectionError"] * 2
    assert (
        "flaky, attempt 1" in result.errors[0].traceback and "flaky, attempt 2" in result.errors[1].traceback
    )
    assert result.attempts == 3 and len(result.worker_ids) == 3
    assert len(lines(marks)) == 3
    assert "retrying in" in output


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
@pytest.mark.slow
def test_exhausted_and_unlisted_failures_end_failed(
    tmp_path: Path, start_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    exhausted = worker_tasks.always_fails.enqueue(str(tmp_path / "a"))
    unlisted = worker_tasks.fails_with_an_error_not_retried.enqueue(str(tmp_path / "b"))
    run_until_finished(start_worker, [exhausted, unlisted])
    assert exhausted.status == TaskResultStatus.FAILED and len(exhausted.errors) == 2
    assert len(lines(tmp_path / "a")) == 2
    # retry_on=(ConnectionError,): a TypeError ends the task at once, with attempts to spare.
    assert unlisted.status == TaskResultStatus.FAILED and len(unlisted.errors) == 1
    assert unlisted.errors[0].exception_class_path == "builtins.TypeError"
    assert len(lines(tmp_path / "b")) == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
@pytest.mark.slow
def test_backoff_delays_are_respected(
    tmp_path: Path, start_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    linear, explicit = tmp_path / "linear", tmp_path / "explicit"
    results = [
        worker_tasks.fails_twice_with_linear_backoff.enqueue(str(linear)),  # waits 0.25 s, then 0.5 s
        worker_tasks.asks_for_a_retry.enqueue(str(explicit), 0.6),  # Retry(delay=0.6)
    ]
    run_until_finished(start_worker, results)
    assert [r.status for r in results] == [TaskResultStatus.SUCCESSFUL] * 2
    first, second, third = attempt_times(linear)
    # Not before the delay; and not much later (the worker polls deferred tasks about every second).
    assert 0.25 <= second - first < 2.5 and 0.5 <= third - second < 2.5
    once, again = attempt_times(explicit)
    assert 0.6 <= again - once < 2.8
    assert results[1].errors[0].exception_class_path == "fasttasks.exceptions.Retry"
    row = TaskRecord.objects.get(pk=results[1].id)
    assert row.run_after is not None  # deferred to the retry time, as Django's result shows


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
@pytest.mark.slow
def test_backend_defaults_apply_to_tasks_without_options(
    tmp_path: Path, start_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    result = worker_tasks.fails_twice_with_backend_defaults.enqueue(str(tmp_path / "m"))
    run_until_finished(start_worker, [result], "--backend", "retrying")
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 3


@pytest.mark.skipif(not worker_tasks.DJANGO_DECORATOR_TAKES_OPTIONS, reason="Django 6.1's @task(**kwargs)")
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
@pytest.mark.slow
def test_djangos_decorator_options_are_run_by_the_worker(
    tmp_path: Path, start_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    result = worker_tasks.django_decorated_fails_twice.enqueue(str(tmp_path / "m"))
    run_until_finished(start_worker, [result])
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 3


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
@pytest.mark.slow
def test_a_crashed_attempt_does_not_use_up_max_attempts(
    tmp_path: Path, start_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    marks = tmp_path / "m"
    result = worker_tasks.crashes_then_fails_then_succeeds.enqueue(str(marks))
    victim = start_worker(*FAST_RESCUE)
    assert victim.wait(timeout=30) == 13  # attempt 1 killed it
    run_until_finished(start_worker, [result], *FAST_RESCUE)
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 3
    assert [e.exception_class_path for e in result.errors] == [
        "fasttasks.exceptions.WorkerCrashed",
        "builtins.ConnectionError",
    ]
    assert TaskRecord.objects.get(pk=result.id).crashes == 1
