"""The ``django.tasks`` backend contract (see /work/shared/django-contract.md), checked against
FastTasksBackend at enqueue and get_result time."""

from __future__ import annotations

import dataclasses
import re
import uuid
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

import django
import pytest
from asgiref.sync import async_to_sync
from django.test import override_settings
from fasttasks.backend import FastTasksBackend
from fasttasks.compat import (
    BACKPORT,
    BaseTaskBackend,
    InvalidTask,
    Task,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultMismatch,
    TaskResultStatus,
    task,
    task_backends,
    task_enqueued,
)
from fasttasks.models import TaskRecord

from tests import tasks

pytestmark = pytest.mark.django_db

UTC = dt_timezone.utc


class LimitedBackend(FastTasksBackend):
    """FastTasksBackend with every optional feature switched off."""

    supports_defer = False
    supports_async_task = False
    supports_priority = False


LIMITED = "tests.test_contract.LimitedBackend"
BACKEND = "fasttasks.backend.FastTasksBackend"


def tasks_setting(backend: str = BACKEND, queues: list[str] | None = None) -> dict[str, Any]:
    return {
        "default": {"BACKEND": backend, "QUEUES": ["default", "emails", "low"] if queues is None else queues},
        "other": {"BACKEND": BACKEND, "QUEUES": []},
    }


def unvalidated(func: Any, **fields: Any) -> Task[..., Any]:
    """A Task built without running validate_task (as if it had been valid when created)."""
    values = {
        "func": func,
        "priority": 0,
        "backend": "default",
        "queue_name": "default",
        "run_after": None,
        "takes_context": False,
    }
    values.update(fields)
    obj = object.__new__(Task)
    for name, value in values.items():
        object.__setattr__(obj, name, value)
    return obj


def _local_function() -> Any:
    def inner() -> None:
        pass

    return inner


def _no_context(x: int) -> None:
    pass


# -- backend flags and instantiation ---------------------------------------------------------------


def test_backend_flags_are_all_true() -> None:
    backend = task_backends["default"]
    assert isinstance(backend, FastTasksBackend)
    assert isinstance(backend, BaseTaskBackend)
    assert backend.supports_defer is True
    assert backend.supports_async_task is True
    assert backend.supports_get_result is True
    assert backend.supports_priority is True
    assert backend.queues == {"default", "emails", "low"}
    assert backend.database_alias == "default"


def test_backend_init_does_not_touch_the_database(django_assert_num_queries: Any) -> None:
    with django_assert_num_queries(0):
        FastTasksBackend(alias="x", params={"OPTIONS": {"DATABASE": "default"}})


# -- validation messages, at creation --------------------------------------------------------------


def test_module_level_function_required() -> None:
    with pytest.raises(InvalidTask, match=r"^Task function must be defined at a module level\.$"):
        task(_local_function())


def test_context_must_be_first_argument() -> None:
    with pytest.raises(
        InvalidTask, match=r"^Task takes context but does not have a first argument of 'context'\.$"
    ):
        task(takes_context=True)(_no_context)  # type: ignore[arg-type]


@pytest.mark.parametrize("priority", [101, -101, 1.5])
def test_priority_range(priority: Any) -> None:
    with pytest.raises(InvalidTask, match=r"^priority must be a whole number between -100 and 100\.$"):
        tasks.add.using(priority=priority)


@pytest.mark.parametrize("priority", [100, -100, 0, 7])
def test_priority_in_range_accepted(priority: int) -> None:
    assert tasks.add.using(priority=priority).priority == priority


def test_queue_must_be_configured() -> None:
    with pytest.raises(InvalidTask, match=r"^Queue 'nope' is not valid for backend\.$"):
        tasks.add.using(queue_name="nope")


def test_empty_queues_accept_any_queue() -> None:
    assert tasks.add.using(backend="other", queue_name="anything").queue_name == "anything"


def test_run_after_must_be_aware() -> None:
    with pytest.raises(InvalidTask, match=r"^run_after must be an aware datetime\.$"):
        tasks.add.using(run_after=datetime(2030, 1, 1))


# -- validation again at enqueue -------------------------------------------------------------------

ENQUEUE_VALIDATION_CASES = [
    pytest.param(
        {"func": _local_function()}, r"Task function must be defined at a module level\.", id="local"
    ),
    pytest.param(
        {"func": _no_context, "takes_context": True},
        r"Task takes context but does not have a first argument of 'context'\.",
        id="context",
    ),
    pytest.param(
        {"func": tasks.add.func, "priority": 101},
        r"priority must be a whole number between -100 and 100\.",
        id="priority",
    ),
    pytest.param(
        {"func": tasks.add.func, "queue_name": "nope"}, r"Queue 'nope' is not valid for backend\.", id="queue"
    ),
    pytest.param(
        {"func": tasks.add.func, "run_after": datetime(2030, 1, 1)},
        r"run_after must be an aware datetime\.",
        id="run_after",
    ),
]


@pytest.mark.parametrize(("fields", "message"), ENQUEUE_VALIDATION_CASES)
def test_enqueue_validates_again(fields: dict[str, Any], message: str) -> None:
    bad = unvalidated(**fields)
    with pytest.raises(InvalidTask, match=f"^{message}$"):
        bad.enqueue(1, 2)
    assert TaskRecord.objects.count() == 0


@pytest.mark.parametrize(("fields", "message"), ENQUEUE_VALIDATION_CASES)
def test_aenqueue_validates_again(fields: dict[str, Any], message: str) -> None:
    bad = unvalidated(**fields)
    with pytest.raises(InvalidTask, match=f"^{message}$"):
        async_to_sync(bad.aenqueue)(1, 2)
    assert TaskRecord.objects.count() == 0


def test_validation_when_tasks_setting_changes_queue() -> None:
    emails = tasks.add.using(queue_name="emails")
    with override_settings(TASKS=tasks_setting(queues=["default"])):
        with pytest.raises(InvalidTask, match=r"^Queue 'emails' is not valid for backend\.$"):
            emails.enqueue(1, 2)
        with pytest.raises(InvalidTask, match=r"^Queue 'emails' is not valid for backend\.$"):
            async_to_sync(emails.aenqueue)(1, 2)
    assert TaskRecord.objects.count() == 0


def test_validation_when_tasks_setting_changes_priority() -> None:
    urgent = tasks.add.using(priority=10)
    with override_settings(TASKS=tasks_setting(backend=LIMITED)):
        with pytest.raises(InvalidTask, match=r"^Backend does not support setting priority of tasks\.$"):
            urgent.enqueue(1, 2)
    assert TaskRecord.objects.count() == 0


def test_validation_when_tasks_setting_changes_defer() -> None:
    later = tasks.add.using(run_after=datetime.now(UTC) + timedelta(hours=1))
    with override_settings(TASKS=tasks_setting(backend=LIMITED)):
        with pytest.raises(InvalidTask, match=r"^Backend does not support run_after\.$"):
            later.enqueue(1, 2)
    assert TaskRecord.objects.count() == 0


def test_validation_when_tasks_setting_changes_async() -> None:
    with override_settings(TASKS=tasks_setting(backend=LIMITED)):
        # django-tasks 0.12 spells it "async tasks", Django "async Tasks".
        with pytest.raises(InvalidTask, match=r"(?i)^Backend does not support async tasks\.$"):
            tasks.async_sleep.enqueue(0)
        with pytest.raises(InvalidTask, match=r"(?i)^Backend does not support async tasks\.$"):
            async_to_sync(tasks.async_sleep.aenqueue)(0)
    assert TaskRecord.objects.count() == 0


def test_limited_backend_still_enqueues_plain_tasks() -> None:
    with override_settings(TASKS=tasks_setting(backend=LIMITED)):
        result = tasks.add.enqueue(1, 2)
        assert type(task_backends["default"]) is LimitedBackend
    assert result.status == TaskResultStatus.READY


# -- the result of enqueue -------------------------------------------------------------------------


def test_enqueue_returns_ready_result() -> None:
    before = datetime.now(UTC)
    result = tasks.add.enqueue(1, 2)
    after = datetime.now(UTC)

    assert isinstance(result, TaskResult)
    assert result.status == TaskResultStatus.READY
    assert result.task == tasks.add
    assert result.backend == "default"
    assert isinstance(result.id, str)
    assert 0 < len(result.id) < 64
    assert str(uuid.UUID(result.id)) == result.id
    assert result.enqueued_at is not None
    assert result.enqueued_at.tzinfo is not None
    assert result.enqueued_at.utcoffset() == timedelta(0)
    assert before <= result.enqueued_at <= after
    assert result.started_at is None
    assert result.finished_at is None
    assert result.last_attempted_at is None
    assert result.errors == []
    assert result.worker_ids == []
    assert result.attempts == 0
    assert result.is_finished is False
    with pytest.raises(ValueError, match=r"^Task has not finished yet$"):
        _ = result.return_value


def test_ids_are_unique() -> None:
    ids = {tasks.noop.enqueue().id for _ in range(50)}
    assert len(ids) == 50


def test_args_tuple_becomes_list() -> None:
    result = tasks.echo.enqueue(1, (2, 3), [4, (5,)], key=("a", "b"))
    assert result.args == [1, [2, 3], [4, [5]]]
    assert result.kwargs == {"key": ["a", "b"]}
    assert type(result.args) is list


def test_int_dict_keys_come_back_as_strings() -> None:
    """Arguments "must round-trip through json.dumps/json.loads": fasttasks returns from enqueue what
    the worker (and get_result) will see, so int keys are strings already in the enqueue result."""
    result = tasks.echo.enqueue({1: "x", 2: {3: "y"}}, mapping={True: 1, None: 2})
    expected_args = [{"1": "x", "2": {"3": "y"}}]
    expected_kwargs = {"mapping": {"true": 1, "null": 2}}
    assert result.args == expected_args
    assert result.kwargs == expected_kwargs
    fetched = tasks.echo.get_result(result.id)
    assert fetched.args == expected_args
    assert fetched.kwargs == expected_kwargs


def test_bytes_become_text() -> None:
    result = tasks.echo.enqueue(b"abc", data=b"\xc3\xa9")
    assert result.args == ["abc"]
    assert result.kwargs == {"data": "é"}


def test_enqueue_result_equals_get_result() -> None:
    result = tasks.echo.enqueue(1, 2.5, "três", None, True, [1, {"a": [None]}], k={"n": -1})
    fetched = tasks.echo.get_result(result.id)
    assert fetched == result
    assert fetched.args == [1, 2.5, "três", None, True, [1, {"a": [None]}]]


def test_non_json_argument_names_the_argument() -> None:
    with pytest.raises(
        TypeError,
        match=re.escape(
            "Task argument kwargs['when'] is not JSON-serializable: "
            "Unsupported type: <class 'datetime.datetime'>"
        ),
    ):
        tasks.echo.enqueue(1, when=datetime.now(UTC))
    assert TaskRecord.objects.count() == 0


def test_enqueued_signal() -> None:
    received: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        received.append({"sender": sender, **kwargs})

    task_enqueued.connect(receiver)
    try:
        result = tasks.add.enqueue(1, 2)
    finally:
        task_enqueued.disconnect(receiver)
    assert len(received) == 1
    assert received[0]["sender"] is FastTasksBackend
    assert received[0]["task_result"] is result


def test_enqueued_signal_with_sender_filter() -> None:
    received: list[Any] = []

    def receiver(sender: Any, task_result: Any, **kwargs: Any) -> None:
        received.append(task_result.id)

    task_enqueued.connect(receiver, sender=FastTasksBackend)
    try:
        result = tasks.add.enqueue(1, 2)
    finally:
        task_enqueued.disconnect(receiver, sender=FastTasksBackend)
    assert received == [result.id]


# -- get_result ------------------------------------------------------------------------------------


def test_get_result_unknown_id() -> None:
    with pytest.raises(TaskResultDoesNotExist):
        task_backends["default"].get_result(str(uuid.uuid4()))
    with pytest.raises(TaskResultDoesNotExist):
        tasks.add.get_result(str(uuid.uuid4()))


@pytest.mark.parametrize("bad_id", [None, 123, "", "x" * 100, "a\x00b", "\ud800", b"abc"])
def test_get_result_malformed_id(bad_id: Any) -> None:
    with pytest.raises(TaskResultDoesNotExist):
        task_backends["default"].get_result(bad_id)
    with pytest.raises(TaskResultDoesNotExist):
        tasks.add.get_result(bad_id)


def test_get_result_task_mismatch() -> None:
    result = tasks.echo.enqueue(1)
    with pytest.raises(TaskResultMismatch, match=r"^Task does not match \(received 'tests\.tasks\.echo'\)$"):
        tasks.add.get_result(result.id)


def test_get_result_task_func_is_the_same_function() -> None:
    result = tasks.send_email.enqueue("a@example.com")
    fetched = task_backends["default"].get_result(result.id)
    assert fetched.task.func is tasks.send_email.func
    assert fetched.task == tasks.send_email
    assert fetched.task.priority == 5
    assert fetched.task.queue_name == "emails"


def test_get_result_restores_using_settings() -> None:
    run_after = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=dt_timezone(timedelta(hours=2)))
    custom = tasks.add.using(priority=-7, queue_name="low", run_after=run_after)
    result = custom.enqueue(1, 2)
    fetched = tasks.add.get_result(result.id)
    assert fetched.task == custom
    assert fetched.task.run_after == run_after
    assert fetched.task.run_after is not None and fetched.task.run_after.utcoffset() == timedelta(0)


def test_return_value_gating_and_refresh() -> None:
    result = tasks.add.enqueue(1, 2)
    TaskRecord.objects.filter(pk=result.id).update(
        status=TaskResultStatus.SUCCESSFUL,
        return_value=3,
        worker_ids=["w1"],
        attempts=1,
        started_at=datetime.now(UTC),
        last_attempted_at=datetime.now(UTC),
        finished_at=datetime.now(UTC),
    )
    assert result.status == TaskResultStatus.READY
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL  # type: ignore[comparison-overlap]
    assert result.return_value == 3
    assert result.attempts == 1
    assert result.is_finished

    failed = tasks.fail.enqueue("boom")
    TaskRecord.objects.filter(pk=failed.id).update(status=TaskResultStatus.FAILED, worker_ids=["w1"])
    failed.refresh()
    with pytest.raises(ValueError, match=r"^Task failed$"):
        _ = failed.return_value


def test_async_enqueue_get_result_and_refresh() -> None:
    async def scenario() -> tuple[TaskResult[..., Any], TaskResult[..., Any], TaskResult[..., Any]]:
        result = await tasks.add.aenqueue(2, 3)
        fetched = await tasks.add.aget_result(result.id)
        direct = await task_backends["default"].aget_result(result.id)
        return result, fetched, direct

    result, fetched, direct = async_to_sync(scenario)()
    assert result.status == TaskResultStatus.READY
    assert fetched == result == direct
    assert TaskRecord.objects.filter(pk=result.id).exists()

    TaskRecord.objects.filter(pk=result.id).update(status=TaskResultStatus.SUCCESSFUL, return_value=5)
    async_to_sync(result.arefresh)()
    assert result.return_value == 5

    async def missing() -> None:
        await tasks.add.aget_result("nope")

    with pytest.raises(TaskResultDoesNotExist):
        async_to_sync(missing)()


def test_async_task_enqueues() -> None:
    result = tasks.async_sleep.enqueue(0.5)
    assert result.args == [0.5]
    assert tasks.async_sleep.get_result(result.id).task.func is tasks.async_sleep.func


def test_context_task_enqueues_without_context_argument() -> None:
    result = tasks.with_context.enqueue(7)
    assert result.args == [7]
    assert tasks.with_context.get_result(result.id).task.takes_context is True


def test_result_dataclass_fields_are_the_framework_ones() -> None:
    result = tasks.noop.enqueue()
    names = {f.name for f in dataclasses.fields(result)}
    assert {
        "task",
        "id",
        "status",
        "enqueued_at",
        "args",
        "kwargs",
        "backend",
        "errors",
        "worker_ids",
    } <= names
    assert type(result) is TaskResult


@pytest.mark.skipif(BACKPORT or django.VERSION < (6, 1), reason="Task pickling exists in Django 6.1 only")
def test_result_task_pickles() -> None:
    import pickle

    result = tasks.add.using(priority=3).enqueue(1, 2)
    fetched = tasks.add.get_result(result.id)
    assert pickle.loads(pickle.dumps(fetched.task)) == fetched.task
