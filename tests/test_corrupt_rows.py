"""Rows written straight into the task table, bypassing ``enqueue``: broken JSON, unknown task paths,
huge payloads, NULLs and odd values. Each corrupt row must end FAILED with an error that says what is
wrong, the good tasks around it (in the same claim) must run, and the worker must keep going.

The worker is a real subprocess (helpers from ``tests.test_worker_process``); rows are inserted with raw
SQL, so they hold what the database accepts, not what Django would write.
"""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from django.db import connection, transaction
from fasttasks.compat import TaskResultStatus

from tests import tasks
from tests.test_worker_process import (
    run_to_end,
    start_worker,  # noqa: F401 - a fixture
    wait_for,
    worker_command,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180), pytest.mark.slow]

WORKER_ID = "process-worker"  # what tests.test_worker_process.worker_command passes
IS_POSTGRES = connection.vendor == "postgresql"
JSON_COLUMNS = frozenset({"args", "kwargs", "worker_ids", "errors", "return_value"})
TIME_COLUMNS = frozenset(
    {"run_after", "available_at", "enqueued_at", "started_at", "last_attempted_at", "finished_at"}
)
#: One claim takes every due row of a test (a claim asks for at most `concurrency` rows at first).
CONCURRENCY = "64"

sqlite_only = pytest.mark.skipif(IS_POSTGRES, reason="PostgreSQL's typed columns cannot hold this value")
postgres_only = pytest.mark.skipif(not IS_POSTGRES, reason="a PostgreSQL value")


@dataclass(frozen=True)
class Sql:
    """A value written as a raw SQL expression (what no parameter can carry: a BLOB, bad UTF-8...)."""

    text: str


RowId = str | Sql


def _stamp(value: datetime) -> Any:
    if IS_POSTGRES:
        return value
    # What Django writes on SQLite: naive UTC text.
    return value.astimezone(timezone.utc).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def insert_row(**values: Any) -> RowId:
    """Insert one task row as given (defaults: a due ``tests.tasks.noop`` on the default queue)."""
    past = datetime.now(tz=timezone.utc) - timedelta(seconds=1)
    row: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "task_path": "tests.tasks.noop",
        "queue_name": "default",
        "backend_name": "default",
        "priority": 0,
        "status": "READY",
        "args": "[]",
        "kwargs": "{}",
        "run_after": None,
        "available_at": _stamp(past),
        "enqueued_at": _stamp(past),
        "attempts": 0,
        "max_attempts": 1,
        "worker_ids": "[]",
        "errors": "[]",
    }
    row.update(values)
    placeholders = []
    params = []
    for column, value in row.items():
        if isinstance(value, Sql):
            placeholders.append(value.text)
            continue
        placeholder = "%s"
        if IS_POSTGRES and column in JSON_COLUMNS:
            placeholder = "%s::jsonb"
        elif IS_POSTGRES and column in TIME_COLUMNS:
            placeholder = "%s::timestamptz"  # takes 'infinity' too
        placeholders.append(placeholder)
        params.append(value)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO fasttasks_task ({', '.join(row)}) VALUES ({', '.join(placeholders)})", params
        )
    row_id: RowId = row["id"]
    return row_id


@contextmanager
def checks_off() -> Iterator[None]:
    """SQLite: let rows break the table's CHECK constraints (as an older schema or a careless tool may)."""
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA ignore_check_constraints = ON")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA ignore_check_constraints = OFF")


@dataclass
class Row:
    status: str
    errors: Any
    worker_ids: Any
    return_value: Any
    finished: bool
    worker_id: Any
    lease_token: Any


def _json_column(column: str) -> str:
    # Read as bytes on SQLite: a corrupt row may hold text Python's sqlite3 cannot decode.
    return f"{column}::text" if IS_POSTGRES else f"CAST({column} AS BLOB)"


def _parse(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (bytes, memoryview)):
        value = bytes(value).decode("utf-8", "replace")
    try:
        return json.loads(value)
    except ValueError:
        return value  # still corrupt: the raw text


def _where(row_id: RowId) -> tuple[str, list[Any]]:
    if isinstance(row_id, Sql):
        return f"id = {row_id.text}", []
    return "id = %s", [row_id]


def fetch(row_id: RowId) -> Row:
    where, params = _where(row_id)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT status, {_json_column('errors')}, {_json_column('worker_ids')}, "
            f"{_json_column('return_value')}, finished_at IS NOT NULL, worker_id, lease_token "
            f"FROM fasttasks_task WHERE {where}",
            params,
        )
        found = cursor.fetchall()
    assert len(found) == 1, f"row {row_id} not found exactly once: {found}"
    status, errors, worker_ids, return_value, finished, worker_id, lease_token = found[0]
    return Row(
        status=status,
        errors=_parse(errors),
        worker_ids=_parse(worker_ids),
        return_value=_parse(return_value),
        finished=bool(finished),
        worker_id=worker_id,
        lease_token=lease_token,
    )


def assert_failed(row_id: RowId, *fragments: str) -> dict[str, Any]:
    """The row ended FAILED, its last error entry mentions every fragment; returns that entry."""
    row = fetch(row_id)
    assert row.status == "FAILED", f"{row_id}: {row}"
    assert row.finished and row.worker_id is None and row.lease_token is None, row
    assert isinstance(row.errors, list) and row.errors, f"{row_id}: no error entry: {row.errors!r}"
    entry = row.errors[-1]
    assert isinstance(entry, dict), f"{row_id}: {row.errors!r}"
    text = f"{entry.get('exception_class_path')}\n{entry.get('traceback')}"
    for fragment in fragments:
        assert fragment in text, f"{row_id}: {fragment!r} not in the error:\n{text[:3000]}"
    return entry


def assert_successful(row_id: RowId) -> Row:
    row = fetch(row_id)
    assert row.status == "SUCCESSFUL", f"{row_id}: {row.status}, errors {str(row.errors)[:3000]}"
    assert row.finished and row.worker_id is None and row.lease_token is None, row
    return row


def assert_nothing_left() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT status, COUNT(*) FROM fasttasks_task WHERE status IN ('READY', 'RUNNING') GROUP BY status"
        )
        assert cursor.fetchall() == []


def enqueue_good(count: int = 5) -> list[Any]:
    return [tasks.add.enqueue(index, 1) for index in range(count)]


def assert_good_ran(results: Sequence[Any]) -> None:
    for index, result in enumerate(results):
        result.refresh()
        assert result.status == TaskResultStatus.SUCCESSFUL, (result.id, result.errors)
        assert result.return_value == index + 1


def run_batch() -> str:
    """Run a batch worker over every queue; it must end by itself, with exit code 0."""
    finished = run_to_end(
        worker_command("--batch", "--queues", "*", "--concurrency", CONCURRENCY), timeout=60
    )
    assert finished.returncode == 0, finished.stderr[-5000:]
    assert "panicked" not in finished.stderr, finished.stderr[-5000:]
    return finished.stderr


# -- arguments ----------------------------------------------------------------------------------------


def test_arguments_of_the_wrong_shape_fail_clearly() -> None:
    good = enqueue_good()
    wrong = {
        insert_row(task_path="tests.tasks.add", args='{"a": 1}'): "args must be a JSON array, not an object",
        insert_row(task_path="tests.tasks.add", args="5"): "args must be a JSON array, not a number",
        insert_row(task_path="tests.tasks.add", args='"1, 2"'): "args must be a JSON array, not a string",
        insert_row(task_path="tests.tasks.add", args="null"): "args must be a JSON array, not null",
        insert_row(
            task_path="tests.tasks.add", kwargs="[1, 2]"
        ): "kwargs must be a JSON object, not an array",
        insert_row(task_path="tests.tasks.add", kwargs="null"): "kwargs must be a JSON object, not null",
        insert_row(task_path="tests.tasks.add", kwargs="true"): "kwargs must be a JSON object, not a boolean",
    }

    run_batch()

    for row_id, message in wrong.items():
        entry = assert_failed(row_id, "corrupt task row", message)
        assert entry["exception_class_path"] == "builtins.ValueError"
        assert entry["attempt"] == 1 and entry["worker_id"] == WORKER_ID
    assert_good_ran(good)
    assert_nothing_left()


@sqlite_only
def test_arguments_that_are_not_json_fail_clearly() -> None:
    good = enqueue_good()
    with checks_off():
        broken = {
            insert_row(args="not json"): "args are not valid JSON",
            insert_row(args="[1, 2"): "args are not valid JSON",
            insert_row(args=""): "args are not valid JSON",
            insert_row(args="[NaN]"): "args are not valid JSON",
            insert_row(kwargs='{"a": }'): "kwargs are not valid JSON",
            insert_row(kwargs="{'a': 1}"): "kwargs are not valid JSON",
        }

    run_batch()

    for row_id, message in broken.items():
        assert_failed(row_id, "builtins.ValueError", "corrupt task row", message)
    assert_good_ran(good)
    assert_nothing_left()


@sqlite_only
def test_blobs_and_invalid_utf8_fail_without_blocking_the_claim() -> None:
    # SQLite stores bytes as a BLOB whatever the column's type, and its JSON functions refuse BLOBs;
    # `json_valid` accepts a BLOB holding JSON, so args=b"[]" passes the table's CHECK.
    good = enqueue_good()
    blob_args = insert_row(args=b"[]")
    blob_path = insert_row(task_path=b"tests.tasks.noop")
    blob_queue = insert_row(queue_name=b"default")
    insert_row(id=b"blob-id")
    # Text that is not UTF-8 (SQLite never checks): in the path, in the arguments, in the id.
    bad_path = insert_row(task_path=Sql("CAST(X'74657374732E7461736B73FF' AS TEXT)"))
    bad_args = insert_row(args=Sql("CAST(X'5B22FF225D' AS TEXT)"))
    bad_id = insert_row(id=Sql("CAST(X'6261642D6964FF' AS TEXT)"))

    run_batch()

    assert_failed(blob_args, "corrupt task row", "args holds a BLOB")
    assert_failed(blob_path, "corrupt task row", "task_path holds a BLOB")
    assert_failed(blob_queue, "corrupt task row", "queue_name holds a BLOB")
    assert_failed(Sql("X'626C6F622D6964'"), "corrupt task row", "id holds a BLOB")
    assert_failed(bad_path, "corrupt task row", "task_path holds text that is not valid UTF-8")
    assert_failed(bad_args, "corrupt task row", "args holds text that is not valid UTF-8")
    assert_failed(bad_id, "corrupt task row", "id holds text that is not valid UTF-8")
    assert_good_ran(good)
    assert_nothing_left()


# -- task paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("nonexistent.module.func", "cannot be imported: No module named 'nonexistent'"),
        ("tests.worker_tasks.not_there", "cannot be imported"),
        ("tests.tasks.noop.func", "cannot be imported"),
        ("tests", "cannot be imported"),
        ("", "cannot be imported"),
        ("os.path.join", "does not point to a Task (found builtins.function)"),
        ("tests.tasks.not_a_task", "does not point to a Task"),
        ("json.JSONDecoder", "does not point to a Task (found builtins.type)"),
    ],
)
def test_unknown_task_paths_fail_clearly(path: str, message: str) -> None:
    good = enqueue_good(3)
    row_id = insert_row(task_path=path, args="[1, 2]")

    run_batch()

    entry = assert_failed(row_id, repr(path), message)
    assert entry["exception_class_path"] == "fasttasks._results.InvalidTaskPath"
    assert_good_ran(good)
    assert_nothing_left()


# -- NULLs and leftovers ------------------------------------------------------------------------------


def test_nulls_and_leftovers_in_nullable_columns() -> None:
    good = enqueue_good()
    old = _stamp(datetime(2020, 1, 1, tzinfo=timezone.utc))
    # Every nullable column the worker reads or writes, NULL.
    all_null = insert_row(
        task_path="tests.tasks.add",
        args="[1, 2]",
        run_after=None,
        started_at=None,
        last_attempted_at=None,
        finished_at=None,
        return_value=None,
        worker_id=None,
        lease_token=None,
    )
    # A READY row still holding a previous attempt's values.
    leftovers = insert_row(
        task_path="tests.tasks.add",
        args="[2, 2]",
        started_at=old,
        last_attempted_at=old,
        finished_at=old,
        return_value='{"stale": true}',
        worker_id="ghost-worker",
        attempts=3,
    )
    # JSON null (and other non-arrays) where the worker appends to a list.
    odd_worker_ids = [insert_row(worker_ids=value) for value in ("null", "{}", '"someone"')]
    odd_errors = [
        insert_row(task_path="tests.tasks.fail", args='["boom"]', errors=value)
        for value in ("null", '{"old": 1}', "7")
    ]

    run_batch()

    assert assert_successful(all_null).return_value == 3
    row = assert_successful(leftovers)
    assert row.return_value == 4
    for row_id in odd_worker_ids:
        worker_ids = assert_successful(row_id).worker_ids
        assert isinstance(worker_ids, list) and worker_ids[-1] == WORKER_ID, worker_ids
    for row_id in odd_errors:
        assert_failed(row_id, "builtins.ValueError", "boom")
        assert len(fetch(row_id).errors) == 2, "the old value is kept, the new entry appended"
    assert_good_ran(good)
    assert_nothing_left()


@sqlite_only
def test_invalid_json_in_worker_ids_and_errors_columns() -> None:
    # Both columns are written by the worker (claim and completion append to them): text that is not
    # JSON must not make those statements fail for the whole batch.
    good = enqueue_good()
    with checks_off():
        bad_worker_ids = insert_row(worker_ids="not json")
        bad_errors = insert_row(task_path="tests.tasks.fail", args='["boom"]', errors="[oops")

    run_batch()

    worker_ids = assert_successful(bad_worker_ids).worker_ids
    assert worker_ids == ["not json", WORKER_ID]
    assert_failed(bad_errors, "builtins.ValueError", "boom")
    assert fetch(bad_errors).errors[0] == "[oops", "the corrupt text is kept, as a string"
    assert_good_ran(good)
    assert_nothing_left()


# -- huge payloads ------------------------------------------------------------------------------------


def test_huge_payloads_run_or_fail_cleanly() -> None:
    good = enqueue_good()
    big = "x" * 20_000_000
    echoed = tasks.echo.enqueue(big, key=big[:1000])
    unknown = insert_row(task_path="tests.nothing_here.f", args=json.dumps([big]))
    many = insert_row(task_path="tests.tasks.echo", args=json.dumps(list(range(1_000_000))))

    run_batch()

    echoed.refresh()
    assert echoed.status == TaskResultStatus.SUCCESSFUL, echoed.errors
    assert echoed.return_value == {"args": [big], "kwargs": {"key": big[:1000]}}
    assert_failed(unknown, "cannot be imported")
    assert assert_successful(many).return_value == {"args": list(range(1_000_000)), "kwargs": {}}
    assert_good_ran(good)
    assert_nothing_left()


# -- odd values ---------------------------------------------------------------------------------------


def test_values_django_would_refuse() -> None:
    good = enqueue_good()
    unknown_queue = insert_row(queue_name="not-a-queue")
    empty_queue = insert_row(queue_name="")
    # Attempts at the integer limit: counting this attempt must not overflow (and stop every claim).
    at_the_limit = insert_row(attempts=2**31 - 1)
    negative = insert_row(attempts=-5)

    run_batch()

    assert_failed(unknown_queue, "InvalidTask", "Queue 'not-a-queue' is not valid")
    assert_failed(empty_queue, "InvalidTask")
    assert_successful(at_the_limit)
    assert_successful(negative)
    assert_good_ran(good)
    assert_nothing_left()


@sqlite_only
def test_sqlite_values_outside_the_schema() -> None:
    good = enqueue_good()
    with checks_off():
        too_high = insert_row(priority=1000)
        far_too_high = insert_row(priority=2**40)
        not_a_number = insert_row(priority="high")
        fraction = insert_row(priority=1.5)
        attempts_text = insert_row(max_attempts="many")

    run_batch()

    assert_failed(too_high, "InvalidTask", "priority must be a whole number between -100 and 100")
    assert_failed(far_too_high, "InvalidTask", "priority must be a whole number between -100 and 100")
    assert_failed(not_a_number, "corrupt task row", "priority holds a text value, not an integer")
    assert_failed(fraction, "corrupt task row", "priority holds a real value, not an integer")
    assert_failed(attempts_text, "corrupt task row", "max_attempts holds a text value, not an integer")
    assert_good_ran(good)
    assert_nothing_left()


@sqlite_only
def test_sqlite_timestamps_in_odd_formats() -> None:
    # The claim filters and orders on the stored text; the timestamps a job carries are informational,
    # and one that does not parse falls back (run_after: none; the others: the claim time).
    good = enqueue_good()
    rows = [
        insert_row(run_after="soon"),
        insert_row(enqueued_at="yesterday"),
        insert_row(run_after="20000-01-01 00:00:00"),
        insert_row(available_at=""),
        insert_row(available_at=Sql("0")),
        insert_row(available_at="2020-01-01T00:00:00+00:00", run_after="2020-01-01T00:00:00+00:00"),
        insert_row(started_at="garbage", attempts=1),
        insert_row(enqueued_at=Sql("X'00'")),
    ]

    run_batch()

    for row_id in rows:
        assert_successful(row_id)
    assert_good_ran(good)
    assert_nothing_left()


@postgres_only
def test_postgres_timestamps_beyond_python() -> None:
    # Valid PostgreSQL timestamps that no Python datetime (or chrono type) can hold.
    good = enqueue_good()
    rows = [
        insert_row(run_after="infinity"),
        insert_row(enqueued_at="-infinity"),
        insert_row(available_at="-infinity"),
        insert_row(run_after="20000-01-01 00:00:00+00"),
        insert_row(enqueued_at="4000-01-01 00:00:00+00 BC"),
        insert_row(started_at="infinity", attempts=1),
        insert_row(run_after="294276-12-31 23:59:59+00"),
    ]

    run_batch()

    for row_id in rows:
        assert_successful(row_id)
    assert_good_ran(good)
    assert_nothing_left()


# -- all at once, with a worker that keeps running ----------------------------------------------------


def _corrupt_mix() -> dict[RowId, str]:
    """A corrupt row of each kind the database can hold, with what its error must say ("" = it runs)."""
    rows: dict[RowId, str] = {
        insert_row(args='{"a": 1}'): "args must be a JSON array",
        insert_row(kwargs="[]"): "kwargs must be a JSON object",
        insert_row(task_path="nonexistent.module.func"): "cannot be imported",
        insert_row(task_path="os.path.join"): "does not point to a Task",
        insert_row(queue_name="not-a-queue"): "is not valid for backend",
        insert_row(attempts=2**31 - 1): "",
        insert_row(errors="null", task_path="tests.tasks.fail", args='["boom"]'): "boom",
    }
    if IS_POSTGRES:
        rows[insert_row(run_after="infinity")] = ""
        rows[insert_row(enqueued_at="-infinity")] = ""
    else:
        rows[insert_row(args=b"[]")] = "args holds a BLOB"
        rows[insert_row(id=Sql("CAST(X'6964FF' AS TEXT)"))] = "id holds text that is not valid UTF-8"
        with checks_off():
            rows[insert_row(args="not json")] = "args are not valid JSON"
            rows[insert_row(worker_ids="not json")] = ""
            rows[insert_row(errors="not json", task_path="tests.tasks.fail", args='["boom"]')] = "boom"
    return rows


def test_a_running_worker_survives_corrupt_rows_in_the_same_claim(start_worker: Any) -> None:  # noqa: F811
    worker = start_worker("--queues", "*", "--concurrency", CONCURRENCY)
    # Good and corrupt rows committed together: the idle worker wakes and claims them in one go.
    with transaction.atomic():
        good = enqueue_good(10)
        corrupt = _corrupt_mix()
        rows: list[RowId] = [*corrupt, *(result.id for result in good)]

    def all_finished() -> bool:
        return all(fetch(row_id).status in ("SUCCESSFUL", "FAILED") for row_id in rows)

    wait_for(all_finished, timeout=30, what="every row to finish")
    assert worker.poll() is None, "the worker exited"
    for row_id, message in corrupt.items():
        if message and message != "boom":
            assert_failed(row_id, message)
        elif message == "boom":
            assert_failed(row_id, "builtins.ValueError", "boom")
        else:
            assert_successful(row_id)
    assert_good_ran(good)

    # Still claiming.
    later = tasks.add.enqueue(40, 2)
    wait_for(lambda: fetch(later.id).status == "SUCCESSFUL", timeout=30, what="a task enqueued afterwards")
    assert_nothing_left()
    worker.send_signal(signal.SIGTERM)
    output, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, output[-5000:]
    assert "panicked" not in output
