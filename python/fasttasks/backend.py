"""``FastTasksBackend``: the ``django.tasks`` backend that stores tasks in a database table.

Enqueueing is one ``INSERT`` through Django's own connection for the configured database alias, so a
task is part of the caller's transaction: rolled back means no task, committed means the task exists.
The Rust worker (``fasttasks-worker`` / ``manage.py fasttasks_worker``) claims and runs the rows.

Configuration::

    TASKS = {
        "default": {
            "BACKEND": "fasttasks.backend.FastTasksBackend",
            "QUEUES": ["default"],
            "OPTIONS": {"DATABASE": "default"},  # the DATABASES alias holding the queue table
        }
    }
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from datetime import datetime
from datetime import timezone as dt_timezone
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar, cast
from zoneinfo import ZoneInfo

from django.apps import apps
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils import timezone

from . import _json
from ._cancel import Cancellation, cancel_in_database
from ._interrupts import timeout_value
from ._results import build_task_result, errors_from_json, task_for_row
from ._task import Task as FastTask
from ._unique import insert_unique, unique_key_for
from .compat import (
    BACKPORT,
    BaseTaskBackend,
    InvalidTask,
    Task,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
    task_enqueued,
)
from .retry import RetryDefaults

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

    from .models import TaskRecord

__all__ = ["FastTasksBackend", "aenqueue_many", "enqueue_many"]

_P = ParamSpec("_P")
_R = TypeVar("_R")

#: Database vendors the schema exists for.
SUPPORTED_VENDORS: Final = ("postgresql", "sqlite")
#: PostgreSQL channel notified (payload: the queue name) whenever tasks are enqueued.
NOTIFY_CHANNEL: Final = "fasttasks"
#: Task ids are at most this long (the column is varchar(64)).
MAX_ID_LENGTH: Final = 64
#: Queue and backend names are at most this long (varchar(255)).
MAX_NAME_LENGTH: Final = 255
#: Rows per INSERT statement in enqueue_many.
BULK_CHUNK_SIZE: Final = 2_000
TABLE: Final = "fasttasks_task"

_UTC = dt_timezone.utc
_COLUMNS = (
    "id, task_path, queue_name, backend_name, priority, status, args, kwargs, "
    "run_after, available_at, enqueued_at, max_attempts"
)
#: One row of an INSERT, in this order: id, task_path, queue_name, backend_name, priority, args, kwargs,
#: run_after, available_at, enqueued_at, max_attempts (the status is a literal).
_Row = tuple[str, str, str, str, int, str, str, Any, Any, Any, int]


def new_task_ids(count: int) -> list[str]:
    """``count`` UUIDv7 strings (RFC 9562), increasing in the order given.

    Rows enqueued together share ``available_at``, so the claim order among them is the id order:
    time-ordered ids with a per-call counter (RFC 9562's "fixed-length dedicated counter" method) make a
    bulk enqueue run first-in, first-out, and keep primary-key inserts append-mostly.
    """
    millis = time.time_ns() // 1_000_000
    # 74 bits of counter (12 in rand_a, 62 in rand_b), seeded at random with the top bit clear so that
    # adding up to 2**73 never carries into the timestamp.
    counter = secrets.randbits(73)
    head = (millis & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | 0b10 << 62
    ids = []
    for offset in range(count):
        value = counter + offset
        h = f"{head | (value >> 62) << 64 | (value & 0x3FFF_FFFF_FFFF_FFFF):032x}"
        # str(uuid.UUID(int=...)) spelled out: this runs once per enqueued task.
        ids.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return ids


@lru_cache(maxsize=8)
def _insert_sql(vendor: str, rows: int, notify: bool) -> str:
    """The INSERT for one row (``rows == 1``, a plain ``VALUES`` row) or for more (``rows > 1``).

    Several rows go in one statement with one parameter, a JSON array of rows (``args``/``kwargs``
    inside as strings holding their JSON text), expanded by ``jsonb_array_elements`` (PostgreSQL: jsonb,
    parsed once; ``->>`` on plain json re-parses the element per column) or
    ``json_each`` (SQLite): the statement is short and the same for any N, and the rows cost one fast
    ``json.dumps`` (psycopg adapts Python lists to arrays in pure Python, about 1 µs per value). On
    PostgreSQL ``pg_notify`` follows for each distinct queue (a second JSON array). A single row keeps
    the plain ``VALUES`` form, which plans faster.
    """
    postgres = vendor == "postgresql"
    if rows == 1:
        casts = "%s::jsonb, %s::jsonb" if postgres else "%s, %s"
        sql = (
            f"INSERT INTO {TABLE} ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, 'READY', {casts}, %s, %s, %s, %s)"
        )
        queues = "(VALUES (%s)) AS q(q)"
    elif postgres:
        column_casts = ["", "", "", "", "::integer", "::jsonb", "::jsonb", "::timestamptz", "::timestamptz"]
        column_casts += ["::timestamptz", "::integer"]
        values = ", ".join(f"(e ->> {i}){cast}" for i, cast in enumerate(column_casts))
        values = values.replace("(e ->> 5)", "'READY', (e ->> 5)", 1)
        sql = f"INSERT INTO {TABLE} ({_COLUMNS}) SELECT {values} FROM jsonb_array_elements(%s::jsonb) AS e"
        queues = "jsonb_array_elements_text(%s::jsonb) AS q(q)"
    else:
        fields = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(11))
        values = fields.replace("json_extract(value, '$[5]')", "'READY', json_extract(value, '$[5]')", 1)
        sql = f"INSERT INTO {TABLE} ({_COLUMNS}) SELECT {values} FROM json_each(%s)"
    if notify:
        # A data-modifying CTE always runs to completion; each NOTIFY is delivered at commit, and not
        # at all if the transaction rolls back.
        sql = f"WITH ins AS ({sql}) SELECT pg_notify('{NOTIFY_CHANNEL}', q) FROM {queues}"
    return sql


def _json_row(row: _Row) -> _Row | list[Any]:
    """A PostgreSQL row for the JSON parameter: timestamps as ISO 8601 text with their offset."""
    run_after, available_at, enqueued_at = row[7], row[8], row[9]
    if run_after is None and available_at is enqueued_at:
        stamp = enqueued_at.isoformat()
        return [*row[:7], None, stamp, stamp, row[10]]
    return [*row[:7], *(None if v is None else v.isoformat() for v in row[7:10]), row[10]]


def _as_utc(value: datetime) -> datetime:
    """An aware UTC datetime; a naive value (possible only with USE_TZ=False) is in TIME_ZONE."""
    if timezone.is_naive(value):
        value = timezone.make_aware(value, timezone.get_default_timezone())
    return value.astimezone(_UTC)


def _to_db(vendor: str, value: datetime | None) -> Any:
    """Adapt an aware UTC datetime for the task table, which always holds UTC.

    PostgreSQL gets the aware value (``timestamptz``). SQLite gets the text form the schema documents,
    ``YYYY-MM-DD HH:MM:SS.ffffff`` in UTC; ``connection.ops.adapt_datetimefield_value`` is not used
    there because it would convert to ``DATABASES[...]["TIME_ZONE"]`` and refuses aware values when
    ``USE_TZ`` is off.
    """
    if value is None or vendor != "sqlite":
        return value
    return value.replace(tzinfo=None).isoformat(" ", "microseconds")


def _from_db(connection: BaseDatabaseWrapper, value: datetime | None) -> datetime | None:
    """An aware UTC datetime from a value the ORM read from the task table."""
    if value is None:
        return None
    if connection.vendor == "sqlite":
        # Stored as naive UTC text. With USE_TZ the ORM made it aware in the connection's time zone,
        # which is UTC unless DATABASES[...]["TIME_ZONE"] says otherwise: undo that.
        if timezone.is_aware(value):
            tz = connection.timezone or _UTC
            value = value.astimezone(tz).replace(tzinfo=None)
        return value.replace(tzinfo=_UTC)
    if timezone.is_naive(value):
        # USE_TZ=False: PostgreSQL returned local time of the session time zone.
        value = value.replace(tzinfo=ZoneInfo(connection.timezone_name))
    return value.astimezone(_UTC)


def _is_valid_id(result_id: object) -> bool:
    if not isinstance(result_id, str) or not result_id or len(result_id) > MAX_ID_LENGTH:
        return False
    if "\x00" in result_id:
        return False
    if not result_id.isascii():
        try:
            result_id.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


class _Unset:
    """Not read yet (``None`` is a valid setting)."""


_UNSET = _Unset()


class FastTasksBackend(BaseTaskBackend):
    """Store tasks in the ``fasttasks_task`` table of a Django database (PostgreSQL or SQLite).

    ``OPTIONS["DATABASE"]`` names the ``DATABASES`` alias holding the table (default ``"default"``).
    Instances are cheap (no database access, no model import): Django creates one per thread, and
    ``@task`` creates one at import time.
    """

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True
    #: Django 6.1's ``@task(**options)`` builds this class: fasttasks' options work with Django's
    #: decorator (``fasttasks.task`` takes the same on every version).
    task_class = FastTask

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.database_alias: str = self.options.get("DATABASE", DEFAULT_DB_ALIAS)
        # PostgreSQL wake-ups: enqueue sends NOTIFY and workers LISTEN. Turn off where LISTEN cannot
        # work (behind a transaction-pooling PgBouncer); workers then poll every --interval (jittered).
        self.listen_notify: bool = bool(self.options.get("LISTEN_NOTIFY", True))
        self._retry_defaults: RetryDefaults | None = None
        self._default_timeout: float | _Unset | None = _UNSET

    @property
    def retry_defaults(self) -> RetryDefaults:
        """``OPTIONS["RETRY"]``, read on first use rather than in ``__init__``: its dotted paths import
        project modules, and ``@task`` creates the backend while those may still be importing."""
        if self._retry_defaults is None:
            self._retry_defaults = RetryDefaults.from_options(self.options.get("RETRY"), self.alias)
        return self._retry_defaults

    @property
    def default_timeout(self) -> float | None:
        """``OPTIONS["TIMEOUT"]``: seconds an attempt of a task without a ``timeout`` of its own may run."""
        if isinstance(self._default_timeout, _Unset):
            where = f"TASKS[{self.alias!r}]['OPTIONS']['TIMEOUT']"
            self._default_timeout = timeout_value(self.options.get("TIMEOUT"), where)
        return self._default_timeout

    def timeout_for(self, task: Task[..., Any]) -> float | None:
        own = getattr(task, "timeout", None)
        return own if own is not None else self.default_timeout

    # -- validation ------------------------------------------------------------------------------

    def validate_task(self, task: Task[..., Any]) -> None:
        super().validate_task(task)
        if len(task.queue_name) > MAX_NAME_LENGTH:
            raise InvalidTask(f"queue_name must be at most {MAX_NAME_LENGTH} characters long.")
        self.retry_defaults.max_attempts_for(task)

    # -- enqueue -----------------------------------------------------------------------------------

    def enqueue(
        self, task: Task[_P, _R], args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> TaskResult[_P, _R]:
        """Insert the task in the caller's transaction and return its ``READY`` result.

        ``args``/``kwargs`` of the result are what the worker will receive, i.e. after a JSON round
        trip: tuples become lists and dict keys become strings, exactly as ``get_result`` returns them.
        """
        self.validate_task(task)
        args_text, kwargs_text = _json.encode_arguments(args, kwargs)
        return cast("TaskResult[_P, _R]", self._insert([(task, args_text, kwargs_text)])[0])

    async def aenqueue(
        self, task: Task[_P, _R], args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> TaskResult[_P, _R]:
        """``enqueue`` for async code. Concurrent calls on one event loop share one INSERT and one
        commit (group commit, see ``fasttasks._group_enqueue``); a bad argument fails only its call."""
        from ._group_enqueue import enqueue_in_group

        self.validate_task(task)
        args_text, kwargs_text = _json.encode_arguments(args, kwargs)
        return cast("TaskResult[_P, _R]", await enqueue_in_group(self, (task, args_text, kwargs_text)))

    def enqueue_many(
        self,
        task: Task[_P, _R],
        items: Iterable[tuple[Sequence[Any], Mapping[str, Any]]],
    ) -> list[TaskResult[_P, _R]]:
        """Enqueue ``task`` once per ``(args, kwargs)`` item, validating every item before writing.

        One ``INSERT`` per ``BULK_CHUNK_SIZE`` items (all inside one atomic block when there is more
        than one chunk), one ``NOTIFY`` per call; ``task_enqueued`` is sent for each result.
        """
        self.validate_task(task)
        entries = []
        for index, item in enumerate(items):
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise TypeError(
                    f"enqueue_many() items must be (args, kwargs) pairs; items[{index}] is {item!r}."
                )
            args, kwargs = item
            args_text, kwargs_text = _json.encode_arguments(args, kwargs, where=f" of items[{index}]")
            entries.append((task, args_text, kwargs_text))
        if not entries:
            return []
        return cast("list[TaskResult[_P, _R]]", self._insert(entries))

    def _insert(self, entries: Sequence[tuple[Task[..., Any], str, str]]) -> list[TaskResult[..., Any]]:
        """Insert validated, encoded ``(task, args_text, kwargs_text)`` entries; send ``task_enqueued``."""
        connection = connections[self.database_alias]
        vendor = connection.vendor
        if vendor not in SUPPORTED_VENDORS:
            raise ImproperlyConfigured(_vendor_message(self.alias, self.database_alias, vendor))

        now = datetime.now(_UTC)
        enqueued_at = _to_db(vendor, now)
        ids = new_task_ids(len(entries))
        # The columns a task decides, computed once per distinct task object of the call.
        per_task: dict[int, tuple[str, str, str, int, Any, Any, int]] = {}
        rows: list[_Row] = []
        for result_id, (task, args_text, kwargs_text) in zip(ids, entries, strict=True):
            shared = per_task.get(id(task))
            if shared is None:
                run_after = _as_utc(task.run_after) if task.run_after is not None else None
                shared = per_task[id(task)] = (
                    task.module_path,
                    task.queue_name,
                    self.alias,
                    int(task.priority),
                    _to_db(vendor, run_after),
                    _to_db(vendor, run_after or now),  # available_at
                    self.retry_defaults.max_attempts_for(task),
                )
            path, queue, alias, priority, run_after_db, available_at, max_attempts = shared
            rows.append(
                (
                    result_id,
                    path,
                    queue,
                    alias,
                    priority,
                    args_text,
                    kwargs_text,
                    run_after_db,
                    available_at,
                    enqueued_at,
                    max_attempts,
                )
            )

        notify = vendor == "postgresql" and self.listen_notify
        keys = [unique_key_for(task, args_text, kwargs_text) for task, args_text, kwargs_text in entries]
        unique = [index for index, key in enumerate(keys) if key is not None]
        if unique:
            plain_rows = [row for row, key in zip(rows, keys, strict=True) if key is None]
        else:
            plain_rows = rows
        # Several statements must succeed or fail together, even in autocommit mode.
        several = len(plain_rows) > BULK_CHUNK_SIZE or (len(unique) > 0 and len(rows) > 1)
        block = transaction.atomic(using=self.database_alias) if several else nullcontext()
        # Entries that found their unique key taken: the index of the entry, the active row.
        existing: dict[int, TaskRecord] = {}
        with block, connection.cursor() as cursor:
            for index in unique:
                key = keys[index]
                assert key is not None
                found = insert_unique(self, cursor, rows[index], key, notify, entries[index][0].queue_name)
                if found is not None:
                    existing[index] = found
            rows = plain_rows
            for start in range(0, len(rows), BULK_CHUNK_SIZE):
                chunk = rows[start : start + BULK_CHUNK_SIZE]
                last = start + BULK_CHUNK_SIZE >= len(rows)
                params: list[Any]
                if len(rows) == 1:
                    params = list(chunk[0])
                elif vendor == "postgresql":
                    params = [_json.dumps([_json_row(row) for row in chunk])]
                else:
                    params = [_json.dumps(chunk)]
                if notify and last:
                    plain = [entry for entry, key in zip(entries, keys, strict=True) if key is None]
                    queues = sorted({task.queue_name for task, _, _ in plain})
                    params.append(queues[0] if len(rows) == 1 else _json.dumps(queues))
                cursor.execute(_insert_sql(vendor, min(len(rows), 2), notify and last), params)

        results: list[TaskResult[..., Any]] = []
        sender = type(self)
        for index, (result_id, (task, args_text, kwargs_text)) in enumerate(zip(ids, entries, strict=True)):
            if index in existing:
                # Not enqueued: the task with this unique key that is already waiting or running.
                results.append(self.result_from_record(existing[index]))
                continue
            result = build_task_result(
                task=task,
                id=result_id,
                status=TaskResultStatus.READY,
                enqueued_at=now,
                started_at=None,
                finished_at=None,
                last_attempted_at=None,
                args=_json.loads(args_text),
                kwargs=_json.loads(kwargs_text),
                backend=self.alias,
                errors=[],
                worker_ids=[],
            )
            results.append(result)
            task_enqueued.send(sender=sender, task_result=result)
        return results

    # -- cancellation ------------------------------------------------------------------------------

    def cancel(self, result_id: str) -> Cancellation:
        """Stop the task ``result_id`` (see ``fasttasks.cancel``), in the caller's transaction."""
        return cancel_in_database(self, result_id)

    # -- results -----------------------------------------------------------------------------------

    def get_result(self, result_id: str) -> TaskResult[..., Any]:
        """The stored result, rebuilt completely (every attempt's error, worker ids, return value).

        Unknown and malformed ids (not a string, empty, longer than 64 characters) raise
        ``TaskResultDoesNotExist``. If the stored task path no longer imports or no longer names a
        ``Task``, ``fasttasks._results.InvalidTaskPath`` (a ``ValueError``) is raised: the row exists,
        but no ``TaskResult`` can be built without its ``Task``.
        """
        if not _is_valid_id(result_id):
            raise TaskResultDoesNotExist(result_id)
        from .models import TaskRecord

        try:
            row = TaskRecord.objects.using(self.database_alias).get(pk=result_id)
        except TaskRecord.DoesNotExist:
            raise TaskResultDoesNotExist(result_id) from None
        return self.result_from_record(row)

    def result_from_record(self, row: TaskRecord) -> TaskResult[..., Any]:
        """Build the ``TaskResult`` of a ``TaskRecord`` read from this backend's database."""
        connection = connections[self.database_alias]
        task = task_for_row(
            row.task_path,
            priority=row.priority,
            queue_name=row.queue_name,
            run_after=_from_db(connection, row.run_after),
            backend=row.backend_name,
        )
        return build_task_result(
            task=task,
            id=row.id,
            status=row.status,
            enqueued_at=_from_db(connection, row.enqueued_at),
            started_at=_from_db(connection, row.started_at),
            finished_at=_from_db(connection, row.finished_at),
            last_attempted_at=_from_db(connection, row.last_attempted_at),
            args=row.args,
            kwargs=row.kwargs,
            backend=row.backend_name,
            errors=errors_from_json(row.errors),
            worker_ids=list(row.worker_ids or ()),
            return_value=row.return_value,
        )

    # -- checks ------------------------------------------------------------------------------------

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        messages: list[checks.CheckMessage] = list(super().check(**kwargs))
        if not apps.is_installed("fasttasks"):
            messages.append(
                checks.Error(
                    f"TASKS[{self.alias!r}] uses {type(self).__name__}, but the fasttasks app is not "
                    "installed.",
                    hint="Add 'fasttasks' to INSTALLED_APPS (its migration creates the task table).",
                    id="fasttasks.E001",
                )
            )
        if BACKPORT and not apps.is_installed("django_tasks"):
            messages.append(
                checks.Warning(
                    "The django-tasks backport is in use but 'django_tasks' is not in INSTALLED_APPS, so "
                    "its system checks and log receivers are not registered.",
                    hint="Add 'django_tasks' to INSTALLED_APPS.",
                    id="fasttasks.W002",
                )
            )
        if not isinstance(self.database_alias, str) or self.database_alias not in settings.DATABASES:
            messages.append(
                checks.Error(
                    f"TASKS[{self.alias!r}]['OPTIONS']['DATABASE'] is {self.database_alias!r}, which "
                    "is not a database alias in DATABASES.",
                    hint=f"Use one of: {', '.join(map(repr, settings.DATABASES))}.",
                    id="fasttasks.E002",
                )
            )
            return messages
        vendor = connections[self.database_alias].vendor
        if vendor not in SUPPORTED_VENDORS:
            messages.append(
                checks.Error(
                    _vendor_message(self.alias, self.database_alias, vendor),
                    hint="Point OPTIONS['DATABASE'] at a PostgreSQL or SQLite database.",
                    id="fasttasks.E003",
                )
            )
            return messages
        try:
            _ = self.retry_defaults, self.default_timeout
        except InvalidTask as exc:
            messages.append(
                checks.Error(str(exc), hint="See the README's section on retries.", id="fasttasks.E004")
            )
        databases = kwargs.get("databases")
        if databases and self.database_alias in databases:
            messages.extend(self.check_table())
        return messages

    def check_table(self) -> list[checks.CheckMessage]:
        """A warning if the task table is missing (never an error: ``migrate`` must still run)."""
        connection = connections[self.database_alias]
        try:
            with connection.cursor() as cursor:
                tables = connection.introspection.table_names(cursor)
        except Exception:  # the database may be unreachable while checks run; not our concern here
            return []
        if TABLE in tables:
            return []
        return [
            checks.Warning(
                f"The task table {TABLE!r} does not exist in database {self.database_alias!r} "
                f"(used by TASKS[{self.alias!r}]).",
                hint=f"Run 'manage.py migrate fasttasks --database {self.database_alias}'.",
                id="fasttasks.W001",
            )
        ]


def _vendor_message(alias: str, database: str, vendor: str) -> str:
    return (
        f"TASKS[{alias!r}] stores tasks in database {database!r}, whose vendor {vendor!r} is not "
        f"supported; fasttasks supports {' and '.join(SUPPORTED_VENDORS)}."
    )


def enqueue_many(
    task: Task[_P, _R],
    items: Iterable[tuple[Sequence[Any], Mapping[str, Any]]],
) -> list[TaskResult[_P, _R]]:
    """Enqueue ``task`` once per ``(args, kwargs)`` pair; return the results in order.

    With a ``FastTasksBackend`` every item is validated and encoded first (a bad item raises and
    nothing is written), then the rows are inserted with one statement per ``BULK_CHUNK_SIZE``
    items. With any other backend this falls back to ``backend.enqueue`` item by item, so code using
    it also runs under e.g. the ``ImmediateBackend`` or ``DummyBackend`` in tests.
    """
    backend = task.get_backend()
    if isinstance(backend, FastTasksBackend):
        return backend.enqueue_many(task, items)
    results = []
    for index, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(f"enqueue_many() items must be (args, kwargs) pairs; items[{index}] is {item!r}.")
        args, kwargs = item
        results.append(task.enqueue(*args, **kwargs))
    return results


async def aenqueue_many(
    task: Task[_P, _R],
    items: Iterable[tuple[Sequence[Any], Mapping[str, Any]]],
) -> list[TaskResult[_P, _R]]:
    """``enqueue_many`` for async code (runs it in Django's thread-sensitive executor)."""
    from asgiref.sync import sync_to_async

    return await sync_to_async(enqueue_many, thread_sensitive=True)(task, list(items))
