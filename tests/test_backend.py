"""FastTasksBackend specifics: what is written, transactions, NOTIFY, full result rebuild, checks,
enqueue_many."""

from __future__ import annotations

import asyncio
import math
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

import fasttasks
import pytest
from asgiref.sync import async_to_sync
from django.core import checks
from django.db import connection, transaction
from django.test import modify_settings, override_settings
from django.test.utils import CaptureQueriesContext
from fasttasks import _json
from fasttasks._results import InvalidTaskPath, resolve_task
from fasttasks.backend import BULK_CHUNK_SIZE, FastTasksBackend, aenqueue_many, enqueue_many
from fasttasks.checks import check_task_tables
from fasttasks.compat import (
    BACKPORT,
    InvalidTask,
    Task,
    TaskError,
    TaskResultStatus,
    task_backends,
    task_enqueued,
)
from fasttasks.models import TaskRecord

from tests import tasks

pytestmark = pytest.mark.django_db

UTC = dt_timezone.utc
IS_PG = connection.vendor == "postgresql"
IS_SQLITE = connection.vendor == "sqlite"


def _raw_row(result_id: str, *columns: str) -> tuple[Any, ...]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(columns)} FROM fasttasks_task WHERE id = %s", [result_id])
        row = cursor.fetchone()
    assert row is not None
    return tuple(row)


def _inserts(ctx: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in ctx.captured_queries if "INSERT INTO fasttasks_task" in q["sql"]]


# -- what enqueue writes ---------------------------------------------------------------------------


def test_enqueue_writes_one_row() -> None:
    result = tasks.add.enqueue(1, b=2)
    row = TaskRecord.objects.get(pk=result.id)
    assert row.task_path == "tests.tasks.add"
    assert row.queue_name == "default"
    assert row.backend_name == "default"
    assert row.priority == 0
    assert row.status == "READY"
    assert row.args == [1]
    assert row.kwargs == {"b": 2}
    assert row.run_after is None
    assert row.available_at == row.enqueued_at == result.enqueued_at
    assert row.started_at is None and row.finished_at is None and row.last_attempted_at is None
    assert row.attempts == 0
    assert row.max_attempts == 1
    assert row.worker_ids == []
    assert row.errors == []
    assert row.return_value is None
    assert row.worker_id is None
    assert row.lease_token is None


def test_enqueue_is_one_statement() -> None:
    with CaptureQueriesContext(connection) as ctx:
        tasks.add.enqueue(1, 2)
    assert len(ctx.captured_queries) == 1
    sql = ctx.captured_queries[0]["sql"]
    assert "INSERT INTO fasttasks_task" in sql
    if IS_PG:
        assert "pg_notify('fasttasks'" in sql
    else:
        assert "pg_notify" not in sql


def test_run_after_priority_queue_are_stored() -> None:
    run_after = datetime(2031, 1, 2, 3, 4, 5, 678901, tzinfo=dt_timezone(timedelta(hours=-5)))
    result = tasks.add.using(priority=42, queue_name="low", run_after=run_after).enqueue(1, 2)
    row = TaskRecord.objects.get(pk=result.id)
    assert row.priority == 42
    assert row.queue_name == "low"
    assert row.run_after == run_after
    assert row.available_at == run_after
    assert row.enqueued_at < row.available_at


def test_whole_float_priority_is_stored_as_int() -> None:
    result = tasks.add.using(priority=5.0).enqueue(1, 2)  # type: ignore[arg-type]
    assert TaskRecord.objects.get(pk=result.id).priority == 5
    assert tasks.add.get_result(result.id).task.priority == 5


def test_queue_name_length_is_validated() -> None:
    assert tasks.add.using(backend="other", queue_name="q" * 255).enqueue(1, 2).status == "READY"
    with pytest.raises(InvalidTask, match="at most 255 characters"):
        tasks.add.using(backend="other", queue_name="q" * 256)


def test_other_alias_is_recorded() -> None:
    result = tasks.add.using(backend="other", queue_name="anywhere").enqueue(1, 2)
    assert result.backend == "other"
    row = TaskRecord.objects.get(pk=result.id)
    assert row.backend_name == "other"
    fetched = task_backends["default"].get_result(result.id)  # ids are global; the row says its backend
    assert fetched.backend == "other"
    assert fetched.task.backend == "other"
    assert fetched.task.queue_name == "anywhere"


@pytest.mark.skipif(not IS_SQLITE, reason="SQLite stores timestamps as text")
@override_settings(TIME_ZONE="America/New_York")
def test_sqlite_timestamps_are_utc_text() -> None:
    run_after = datetime(2031, 1, 2, 3, 4, 5, tzinfo=dt_timezone(timedelta(hours=2)))
    result = tasks.add.using(run_after=run_after).enqueue(1, 2)
    enqueued_at, available_at, stored_run_after, kind = _raw_row(
        result.id,
        "CAST(enqueued_at AS TEXT)",
        "CAST(available_at AS TEXT)",
        "CAST(run_after AS TEXT)",
        "typeof(enqueued_at)",
    )
    assert kind == "text"
    pattern = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$"
    assert re.match(pattern, enqueued_at)
    assert stored_run_after == "2031-01-02 01:04:05.000000"
    assert available_at == stored_run_after
    assert result.enqueued_at is not None
    assert enqueued_at == result.enqueued_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


@pytest.mark.skipif(not IS_PG, reason="PostgreSQL stores timestamptz")
def test_postgres_timestamps_are_timestamptz() -> None:
    run_after = datetime(2031, 1, 2, 3, 4, 5, tzinfo=dt_timezone(timedelta(hours=2)))
    result = tasks.add.using(run_after=run_after).enqueue(1, 2)
    (stored,) = _raw_row(result.id, "run_after")
    assert stored == run_after
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_typeof(run_after)::text, pg_typeof(args)::text FROM fasttasks_task")
        assert cursor.fetchone() == ("timestamp with time zone", "jsonb")


@override_settings(USE_TZ=False, TIME_ZONE="Europe/Paris")
def test_use_tz_false_still_stores_utc() -> None:
    before = datetime.now(UTC)
    result = tasks.add.enqueue(1, 2)
    assert result.enqueued_at is not None and result.enqueued_at.utcoffset() == timedelta(0)
    assert before <= result.enqueued_at <= datetime.now(UTC)
    fetched = tasks.add.get_result(result.id)
    assert fetched.enqueued_at == result.enqueued_at
    if IS_SQLITE:
        (stored,) = _raw_row(result.id, "CAST(enqueued_at AS TEXT)")
        assert stored == result.enqueued_at.strftime("%Y-%m-%d %H:%M:%S.%f")


@override_settings(USE_TZ=False, TIME_ZONE="Europe/Paris")
def test_use_tz_false_naive_run_after_is_local_time() -> None:
    result = tasks.add.using(run_after=datetime(2031, 7, 1, 12, 0)).enqueue(1, 2)
    fetched = tasks.add.get_result(result.id)
    assert fetched.task.run_after == datetime(2031, 7, 1, 10, 0, tzinfo=UTC)


def test_max_attempts_from_task_attribute() -> None:
    import dataclasses

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class RetryingTask(Task):  # type: ignore[type-arg]
        max_attempts: int = 3

    # Django 6.0's Task has no defaults for these.
    fields = {"priority": 0, "backend": "default", "queue_name": "default", "run_after": None}
    retrying = RetryingTask(func=tasks.add.func, **fields)
    result = retrying.enqueue(1, 2)
    assert TaskRecord.objects.get(pk=result.id).max_attempts == 3
    with pytest.raises(InvalidTask, match="max_attempts"):
        RetryingTask(func=tasks.add.func, max_attempts=0, **fields)


# -- argument encoding -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        (
            (object(),),
            {},
            TypeError,
            "Task argument args[0] is not JSON-serializable: Unsupported type: <class 'object'>",
        ),
        ((1, [2, {"x": {1, 2}}]), {}, TypeError, "Task argument args[1][1]['x'] is not JSON-serializable"),
        (
            (),
            {"v": float("nan")},
            ValueError,
            "Task argument kwargs['v'] is not JSON-serializable: Out of range",
        ),
        ((), {"v": [float("inf")]}, ValueError, "Task argument kwargs['v'][0] is not JSON-serializable"),
        ((-float("inf"),), {}, ValueError, "Task argument args[0] is not JSON-serializable"),
        ((b"\xff",), {}, ValueError, "Task argument args[0] is not JSON-serializable: Unsupported value"),
        (("a\x00b",), {}, ValueError, "strings cannot contain NUL"),
        (({"k\x00": 1},), {}, ValueError, "Task argument args[0] key 'k\\x00'"),
        (("\ud800",), {}, ValueError, "lone surrogates"),
        (({(1, 2): 1},), {}, TypeError, "Task argument args[0] key (1, 2) is not JSON-serializable"),
        (({float("nan"): 1},), {}, ValueError, "Task argument args[0] key nan"),
    ],
)
def test_bad_arguments_are_rejected_before_writing(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with CaptureQueriesContext(connection) as ctx, pytest.raises(error) as excinfo:
        tasks.echo.enqueue(*args, **kwargs)
    assert message in str(excinfo.value)
    assert ctx.captured_queries == []
    assert TaskRecord.objects.count() == 0


def test_circular_argument_is_rejected() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(ValueError, match=r"args\[0\]\[1\] is not JSON-serializable: circular reference"):
        tasks.echo.enqueue(loop)
    assert TaskRecord.objects.count() == 0


def test_unicode_and_escapes_round_trip() -> None:
    values = ["héllo ✓ 😀", "back\\slash \\u0000 not a NUL", "tab\tnewline\n", 'quote"', "\x01"]
    result = tasks.echo.enqueue(*values, big=2**70, small=-(2**63), f=0.1, e=1e-7)
    fetched = tasks.echo.get_result(result.id)
    assert fetched.args == values
    assert fetched.kwargs == {"big": 2**70, "small": -(2**63), "f": 0.1, "e": 1e-7}


def test_other_sequences_and_mappings_are_normalized() -> None:
    from collections import OrderedDict
    from types import MappingProxyType

    result = tasks.echo.enqueue(range(3), MappingProxyType({"a": 1}), OrderedDict(b=(1,)))
    assert result.args == [[0, 1, 2], {"a": 1}, {"b": [1]}]
    assert tasks.echo.get_result(result.id).args == result.args


def test_json_helpers() -> None:
    assert _json.dumps({"a": [1, 2.5, None]}) == '{"a":[1,2.5,null]}'
    assert _json.dumps("é") == '"é"'
    with pytest.raises(ValueError):
        _json.dumps(float("nan"))
    assert _json.loads('{"a":[1]}') == {"a": [1]}
    assert _json.loads(b'["\xc3\xa9"]') == ["é"]


# -- transactions and NOTIFY -----------------------------------------------------------------------


def test_rolled_back_enqueue_leaves_no_task() -> None:
    class Rollback(Exception):
        pass

    with pytest.raises(Rollback), transaction.atomic():
        result = tasks.add.enqueue(1, 2)
        assert TaskRecord.objects.filter(pk=result.id).exists()
        raise Rollback
    assert not TaskRecord.objects.filter(pk=result.id).exists()


@pytest.mark.django_db(transaction=True)
def test_committed_enqueue_is_visible_to_another_connection() -> None:
    from django.db import connections

    with transaction.atomic():
        result = tasks.add.enqueue(1, 2)
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT status FROM fasttasks_task WHERE id = %s", [result.id])
            assert cursor.fetchone() == ("READY",)
    finally:
        other.close()


@pytest.fixture
def listener() -> Iterator[Any]:
    import psycopg

    params = connection.settings_dict
    conn = psycopg.connect(
        host=params["HOST"],
        port=params["PORT"] or None,
        user=params["USER"],
        password=params["PASSWORD"] or None,
        dbname=params["NAME"],
        autocommit=True,
    )
    conn.execute("LISTEN fasttasks")
    try:
        yield conn
    finally:
        conn.close()


def _notifications(conn: Any, timeout: float, stop_after: int | None = None) -> list[str]:
    return [n.payload for n in conn.notifies(timeout=timeout, stop_after=stop_after)]


@pytest.mark.skipif(not IS_PG, reason="LISTEN/NOTIFY is PostgreSQL only")
@pytest.mark.django_db(transaction=True)
def test_notify_is_delivered_at_commit(listener: Any) -> None:
    with transaction.atomic():
        tasks.add.using(queue_name="emails").enqueue(1, 2)
        assert _notifications(listener, 0.2) == []  # not before commit
    assert _notifications(listener, 5, stop_after=1) == ["emails"]
    assert _notifications(listener, 0.2) == []


@pytest.mark.skipif(not IS_PG, reason="LISTEN/NOTIFY is PostgreSQL only")
@pytest.mark.django_db(transaction=True)
def test_no_notify_on_rollback(listener: Any) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        tasks.add.enqueue(1, 2)
        raise RuntimeError
    assert _notifications(listener, 0.3) == []


@pytest.mark.skipif(not IS_PG, reason="LISTEN/NOTIFY is PostgreSQL only")
@pytest.mark.django_db(transaction=True)
def test_enqueue_many_notifies_once(listener: Any) -> None:
    enqueue_many(tasks.add, [((i, i), {}) for i in range(BULK_CHUNK_SIZE + 3)])
    assert _notifications(listener, 5, stop_after=1) == ["default"]
    assert _notifications(listener, 0.3) == []


@pytest.mark.skipif(not IS_PG, reason="LISTEN/NOTIFY is PostgreSQL only")
@pytest.mark.django_db(transaction=True)
def test_listen_notify_off_sends_no_notify(listener: Any) -> None:
    tasks.add.using(backend="polling").enqueue(1, 2)
    enqueue_many(tasks.add.using(backend="polling"), [((1, 1), {})])
    assert _notifications(listener, 0.3) == []
    tasks.add.enqueue(1, 2)  # the listener works: the default alias still notifies
    assert _notifications(listener, 5, stop_after=1) == ["default"]


# -- get_result rebuilds everything ----------------------------------------------------------------


def _error(n: int, exc: str = "builtins.ValueError") -> dict[str, Any]:
    return {
        "exception_class_path": exc,
        "traceback": f"Traceback (most recent call last):\n  attempt {n}\n{exc}: boom {n}\n",
        "attempt": n,
        "worker_id": f"worker-{n}",
    }


def test_get_result_successful() -> None:
    result = tasks.echo.enqueue(1, x=[2])
    t0 = result.enqueued_at
    assert t0 is not None
    started, finished = t0 + timedelta(seconds=1), t0 + timedelta(seconds=2, microseconds=5)
    TaskRecord.objects.filter(pk=result.id).update(
        status=TaskResultStatus.RUNNING,
        started_at=started,
        last_attempted_at=started,
        attempts=1,
        worker_ids=["worker-1"],
        worker_id="worker-1",
        lease_token=7,
    )
    running = tasks.echo.get_result(result.id)
    assert running.status == TaskResultStatus.RUNNING
    assert running.worker_ids == ["worker-1"]
    assert running.attempts == 1
    assert running.is_finished is False

    TaskRecord.objects.filter(pk=result.id).update(
        status=TaskResultStatus.SUCCESSFUL,
        finished_at=finished,
        return_value={"args": [1], "kwargs": {"x": [2]}},
        worker_id=None,
        lease_token=None,
    )
    done = tasks.echo.get_result(result.id)
    assert done.status == TaskResultStatus.SUCCESSFUL
    assert done.return_value == {"args": [1], "kwargs": {"x": [2]}}
    assert done.enqueued_at == t0
    assert done.started_at == started
    assert done.last_attempted_at == started
    assert done.finished_at == finished
    for value in (done.enqueued_at, done.started_at, done.finished_at, done.last_attempted_at):
        assert value is not None and value.utcoffset() == timedelta(0)
    assert done.errors == []
    assert done.args == [1] and done.kwargs == {"x": [2]}
    assert done.is_finished


def test_get_result_failed_after_two_attempts() -> None:
    result = tasks.fail.enqueue("boom")
    t0 = result.enqueued_at
    assert t0 is not None
    first, second, end = (t0 + timedelta(seconds=s) for s in (1, 5, 6))
    TaskRecord.objects.filter(pk=result.id).update(
        status=TaskResultStatus.FAILED,
        started_at=first,
        last_attempted_at=second,
        finished_at=end,
        attempts=2,
        max_attempts=2,
        worker_ids=["worker-1", "worker-2"],
        errors=[_error(1), _error(2, "builtins.KeyError")],
    )
    failed = tasks.fail.get_result(result.id)
    assert failed.status == TaskResultStatus.FAILED
    assert failed.attempts == 2
    assert failed.worker_ids == ["worker-1", "worker-2"]
    assert failed.errors == [
        TaskError(exception_class_path="builtins.ValueError", traceback=_error(1)["traceback"]),
        TaskError(
            exception_class_path="builtins.KeyError", traceback=_error(2, "builtins.KeyError")["traceback"]
        ),
    ]
    assert failed.errors[0].exception_class is ValueError
    assert failed.errors[1].exception_class is KeyError
    assert failed.enqueued_at is not None and failed.started_at is not None
    assert failed.last_attempted_at is not None and failed.finished_at is not None
    assert failed.enqueued_at < failed.started_at < failed.last_attempted_at < failed.finished_at
    with pytest.raises(ValueError, match=r"^Task failed$"):
        _ = failed.return_value


def test_get_result_tolerates_malformed_error_entries() -> None:
    result = tasks.fail.enqueue("boom")
    TaskRecord.objects.filter(pk=result.id).update(
        status=TaskResultStatus.FAILED, errors=[{"traceback": "only a traceback"}, "junk"]
    )
    errors = tasks.fail.get_result(result.id).errors
    assert errors == [
        TaskError(exception_class_path="", traceback="only a traceback"),
        TaskError(exception_class_path="", traceback=""),
    ]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("tests.tasks.not_a_task", "does not point to a Task"),
        ("tests.tasks.vanished", "cannot be imported"),
        ("no_such_module_fasttasks.f", "cannot be imported"),
    ],
)
def test_get_result_with_stale_task_path(path: str, message: str) -> None:
    result = tasks.add.enqueue(1, 2)
    TaskRecord.objects.filter(pk=result.id).update(task_path=path)
    with pytest.raises(InvalidTaskPath, match=re.escape(repr(path)) + ".*" + message) as excinfo:
        task_backends["default"].get_result(result.id)
    assert isinstance(excinfo.value, ValueError)
    if message == "cannot be imported":
        assert isinstance(excinfo.value.__cause__, ImportError)


def test_resolve_task_is_cached() -> None:
    assert resolve_task("tests.tasks.add") is tasks.add
    assert resolve_task("tests.tasks.add") is tasks.add


def test_get_result_queries(django_assert_num_queries: Any) -> None:
    result = tasks.add.enqueue(1, 2)
    with django_assert_num_queries(1):
        tasks.add.get_result(result.id)


# -- system checks ---------------------------------------------------------------------------------


def _ids(messages: list[checks.CheckMessage]) -> list[str]:
    return [m.id for m in messages if m.id and m.id.startswith("fasttasks.")]


def test_check_clean() -> None:
    assert _ids(task_backends["default"].check()) == []
    assert _ids(checks.run_checks(databases=["default"])) == []


def test_check_app_not_installed() -> None:
    with modify_settings(INSTALLED_APPS={"remove": ["fasttasks"]}):
        messages = FastTasksBackend(alias="default", params={}).check()
    assert _ids(messages) == ["fasttasks.E001"]
    assert "fasttasks app is not installed" in messages[0].msg


def test_check_unknown_database_alias() -> None:
    backend = FastTasksBackend(alias="default", params={"OPTIONS": {"DATABASE": "queue"}})
    messages = backend.check()
    assert _ids(messages) == ["fasttasks.E002"]
    assert "'queue'" in messages[0].msg


def test_check_unknown_database_alias_through_system_checks() -> None:
    setting = {"default": {"BACKEND": "fasttasks.backend.FastTasksBackend", "OPTIONS": {"DATABASE": "queue"}}}
    with override_settings(TASKS=setting):
        assert "fasttasks.E002" in _ids(checks.run_checks())


def test_check_unsupported_vendor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection, "vendor", "mysql")
    messages = FastTasksBackend(alias="default", params={}).check()
    assert _ids(messages) == ["fasttasks.E003"]
    assert "'mysql' is not supported" in messages[0].msg


def test_enqueue_unsupported_vendor(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.core.exceptions import ImproperlyConfigured

    monkeypatch.setattr(connection, "vendor", "mysql")
    with pytest.raises(ImproperlyConfigured, match="not supported"):
        tasks.add.enqueue(1, 2)


def test_check_missing_table_is_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection.introspection, "table_names", lambda *a, **k: ["something_else"])
    backend = task_backends["default"]
    # Plain checks (every manage.py command) never touch the database ...
    assert _ids(backend.check()) == []
    # ... database checks (migrate, check --database) do, and only warn.
    messages = check_task_tables(databases=["default"])
    assert _ids(messages) == ["fasttasks.W001"]
    assert messages[0].level == checks.WARNING
    assert _ids(backend.check(databases=["default"])) == ["fasttasks.W001"]
    assert check_task_tables(databases=None) == []


def test_check_table_survives_database_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> list[str]:
        raise RuntimeError("database is down")

    monkeypatch.setattr(connection.introspection, "table_names", broken)
    assert check_task_tables(databases=["default"]) == []


# -- enqueue_many ----------------------------------------------------------------------------------


def test_enqueue_many_basic() -> None:
    received: list[Any] = []

    def receiver(sender: Any, task_result: Any, **kwargs: Any) -> None:
        received.append((sender, task_result))

    task_enqueued.connect(receiver)
    try:
        with CaptureQueriesContext(connection) as ctx:
            results = fasttasks.enqueue_many(
                tasks.echo, [((1,), {"a": (2,)}), ([3], {}), ((), {"b": {1: 2}})]
            )
    finally:
        task_enqueued.disconnect(receiver)
    assert len(ctx.captured_queries) == 1
    assert [r.args for r in results] == [[1], [3], []]
    assert [r.kwargs for r in results] == [{"a": [2]}, {}, {"b": {"1": 2}}]
    assert len({r.id for r in results}) == 3
    assert all(r.status == TaskResultStatus.READY for r in results)
    assert [r for _, r in received] == results
    assert all(sender is FastTasksBackend for sender, _ in received)
    for result in results:
        assert tasks.echo.get_result(result.id) == result


def test_enqueue_many_one_statement_per_chunk() -> None:
    n = 2 * BULK_CHUNK_SIZE + 1
    with CaptureQueriesContext(connection) as ctx:
        results = enqueue_many(tasks.add.using(priority=3), [((i, 1), {}) for i in range(n)])
    assert len(_inserts(ctx)) == math.ceil(n / BULK_CHUNK_SIZE)
    assert len(results) == n
    assert TaskRecord.objects.filter(priority=3).count() == n
    if IS_PG:
        assert sum("pg_notify" in sql for sql in _inserts(ctx)) == 1


def test_enqueue_many_validates_every_item_first() -> None:
    items: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((1, 2), {}),
        ((3, 4), {}),
        ((5, 6), {}),
        ((datetime.now(UTC), 7), {}),
        ((8, 9), {}),
    ]
    with CaptureQueriesContext(connection) as ctx, pytest.raises(TypeError) as excinfo:
        enqueue_many(tasks.add, items)
    assert "Task argument args[0] of items[3] is not JSON-serializable" in str(excinfo.value)
    assert ctx.captured_queries == []
    assert TaskRecord.objects.count() == 0


@pytest.mark.parametrize("bad", [(1, 2, 3), "ab", None, ((1,),)])
def test_enqueue_many_rejects_malformed_items(bad: Any) -> None:
    with pytest.raises(TypeError, match=r"items\[1\]"):
        enqueue_many(tasks.add, [((1, 2), {}), bad])
    assert TaskRecord.objects.count() == 0


def test_enqueue_many_validates_task() -> None:
    bad = tasks.add.using(queue_name="emails")
    with override_settings(
        TASKS={"default": {"BACKEND": "fasttasks.backend.FastTasksBackend", "QUEUES": ["default"]}}
    ):
        with pytest.raises(InvalidTask, match="Queue 'emails' is not valid"):
            enqueue_many(bad, [((1, 2), {})])
    assert TaskRecord.objects.count() == 0


def test_enqueue_many_empty() -> None:
    with CaptureQueriesContext(connection) as ctx:
        assert enqueue_many(tasks.add, []) == []
    assert ctx.captured_queries == []


@pytest.mark.django_db(transaction=True)
def test_enqueue_many_is_atomic_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failing later chunk must not leave the earlier chunks behind, even in autocommit code."""
    import fasttasks.backend as backend_module

    original = backend_module._insert_sql
    calls = {"n": 0}

    def failing_second_chunk(vendor: str, rows: int, notify: bool) -> str:
        calls["n"] += 1
        if calls["n"] == 2:
            return original(vendor, rows, notify).replace("fasttasks_task", "fasttasks_no_such_table")
        return original(vendor, rows, notify)

    monkeypatch.setattr(backend_module, "_insert_sql", failing_second_chunk)
    with pytest.raises(Exception, match="fasttasks_no_such_table"):
        enqueue_many(tasks.add, [((i, 1), {}) for i in range(BULK_CHUNK_SIZE + 1)])
    assert TaskRecord.objects.count() == 0


def test_aenqueue_many() -> None:
    results = async_to_sync(aenqueue_many)(tasks.add, [((1, 2), {}), ((3, 4), {})])
    assert [r.args for r in results] == [[1, 2], [3, 4]]
    assert TaskRecord.objects.count() == 2


def test_enqueue_many_falls_back_for_other_backends() -> None:
    dummy = ("django_tasks" if BACKPORT else "django.tasks") + ".backends.dummy.DummyBackend"
    with override_settings(TASKS={"default": {"BACKEND": dummy}}):
        results = enqueue_many(tasks.add, [((1, 2), {}), ((3,), {"b": 4})])
        assert [r.args for r in results] == [[1, 2], [3]]
        assert [r.kwargs for r in results] == [{}, {"b": 4}]
    assert TaskRecord.objects.count() == 0


# -- package import is cheap -----------------------------------------------------------------------


def test_importing_fasttasks_imports_no_backend_or_models() -> None:
    code = (
        "import sys, fasttasks; "
        "bad = [m for m in sys.modules if m in ('fasttasks.backend', 'fasttasks.models') "
        "or m.startswith('django.db.models')]; "
        "print(fasttasks.__version__); assert not bad, bad"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
    assert fasttasks.enqueue_many is enqueue_many
    assert fasttasks.FastTasksBackend is FastTasksBackend
    with pytest.raises(AttributeError):
        _ = fasttasks.does_not_exist


def test_enqueue_ids_are_time_ordered_uuid7() -> None:
    first = tasks.noop.enqueue()
    time.sleep(0.002)  # the next millisecond: ids of separate calls order by time
    second = tasks.noop.enqueue()
    assert uuid.UUID(first.id).version == 7
    assert uuid.UUID(first.id).variant == uuid.RFC_4122
    assert first.id < second.id
    assert len(first.id) < 64


# -- aenqueue: group commit --------------------------------------------------------------------------


def _gather_enqueues(*calls: Any) -> list[Any]:
    """Run ``(task, args)`` aenqueue calls concurrently on one event loop; exceptions are returned."""

    async def run() -> list[Any]:
        return await asyncio.gather(*(task.aenqueue(*args) for task, args in calls), return_exceptions=True)

    return async_to_sync(run)()


@pytest.mark.django_db(transaction=True)
def test_concurrent_aenqueues_share_one_insert() -> None:
    with CaptureQueriesContext(connection) as ctx:
        results = _gather_enqueues(*[(tasks.add, (i, 1)) for i in range(40)])
    assert len(_inserts(ctx)) <= 2  # one per call without group commit
    assert len({r.id for r in results}) == 40
    assert [r.args for r in results] == [[i, 1] for i in range(40)]
    for result in results:
        assert result.status == TaskResultStatus.READY
        assert tasks.add.get_result(result.id) == result
    assert TaskRecord.objects.count() == 40


@pytest.mark.django_db(transaction=True)
def test_grouped_aenqueues_keep_each_tasks_settings_and_a_bad_call_fails_alone() -> None:
    received: list[Any] = []

    def receiver(sender: Any, task_result: Any, **kwargs: Any) -> None:
        received.append(task_result)

    task_enqueued.connect(receiver)
    try:
        results = _gather_enqueues(
            (tasks.add, (1, 2)),
            (tasks.send_email, ("a@example.com",)),
            (tasks.add, (datetime.now(UTC), 2)),  # not JSON: fails at enqueue, in its own call
            (tasks.add.using(priority=-7), (3, 4)),
        )
    finally:
        task_enqueued.disconnect(receiver)
    assert isinstance(results[2], TypeError) and "args[0]" in str(results[2])
    good = [results[0], results[1], results[3]]
    assert received == good
    rows = {row.id: row for row in TaskRecord.objects.all()}
    assert set(rows) == {r.id for r in good}
    assert (rows[results[1].id].queue_name, rows[results[1].id].priority) == ("emails", 5)
    assert rows[results[1].id].task_path == "tests.tasks.send_email"
    assert (rows[results[3].id].priority, rows[results[3].id].args) == (-7, [3, 4])


@pytest.mark.django_db(transaction=True)
def test_a_failed_group_insert_fails_every_call_of_the_group(monkeypatch: pytest.MonkeyPatch) -> None:
    import fasttasks.backend as backend_module

    original = backend_module._insert_sql
    monkeypatch.setattr(
        backend_module,
        "_insert_sql",
        lambda *args: original(*args).replace("fasttasks_task", "fasttasks_no_such_table"),
    )
    results = _gather_enqueues(*[(tasks.add, (i, 1)) for i in range(5)])
    assert all(isinstance(r, Exception) and "fasttasks_no_such_table" in str(r) for r in results)
    monkeypatch.setattr(backend_module, "_insert_sql", original)
    assert TaskRecord.objects.count() == 0
    # The next calls on a new loop are not stuck behind the failed flush.
    assert [r.args for r in _gather_enqueues((tasks.add, (7, 7)))] == [[7, 7]]


@pytest.mark.skipif(not IS_PG, reason="LISTEN/NOTIFY is PostgreSQL only")
@pytest.mark.django_db(transaction=True)
def test_a_group_notifies_each_queue_once(listener: Any) -> None:
    _gather_enqueues((tasks.add, (1, 2)), (tasks.send_email, ("x",)), (tasks.add, (3, 4)))
    assert sorted(_notifications(listener, 5, stop_after=2)) == ["default", "emails"]
    assert _notifications(listener, 0.3) == []


def test_task_results_built_directly_equal_the_constructors() -> None:
    import dataclasses

    from fasttasks import _results
    from fasttasks.compat import TaskResult

    fields: dict[str, Any] = {
        "task": tasks.add,
        "id": "some-id",
        "status": TaskResultStatus.SUCCESSFUL,
        "enqueued_at": datetime(2026, 1, 2, tzinfo=UTC),
        "started_at": datetime(2026, 1, 3, tzinfo=UTC),
        "finished_at": datetime(2026, 1, 4, tzinfo=UTC),
        "last_attempted_at": datetime(2026, 1, 3, tzinfo=UTC),
        "args": [1, {"a": [2.5, None]}],
        "kwargs": {"b": "x"},
        "backend": "default",
        "errors": [TaskError(exception_class_path="builtins.ValueError", traceback="tb")],
        "worker_ids": ["w1", "w2"],
    }
    built = _results.build_task_result(**fields, return_value={"r": 1})
    expected = TaskResult(**fields)
    object.__setattr__(expected, "_return_value", {"r": 1})
    assert type(built) is TaskResult
    assert built == expected
    assert built.return_value == {"r": 1}
    assert repr(built) == repr(expected)
    assert dataclasses.replace(built, id="other").id == "other"
    if not BACKPORT:
        assert _results._BUILD_DIRECTLY, "Django's TaskResult changed: review fasttasks._results"


@pytest.mark.parametrize("path", ["fasttasks.exceptions.WorkerError", "fasttasks.exceptions.WorkerCrashed"])
def test_error_classes_the_worker_records_exist(path: str) -> None:
    # The Rust core writes these paths into errors (a dropped attempt, a rescued attempt); Django's
    # TaskError.exception_class imports them.
    error = TaskError(exception_class_path=path, traceback="")
    assert issubclass(error.exception_class, Exception)
