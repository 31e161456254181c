"""The TaskRecord model and the schema SQL (rust/fasttasks-core/sql) must describe the same table."""

from __future__ import annotations

import importlib
from io import StringIO
from types import SimpleNamespace
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connection, models
from fasttasks import _core
from fasttasks.models import TaskRecord

from tests import tasks

pytestmark = pytest.mark.django_db

TABLE = "fasttasks_task"
#: Every table the schema SQL creates: the tasks, the worker registry and the maintenance leader lease.
ALL_TABLES = (TABLE, "fasttasks_worker", "fasttasks_leader")
IS_SQLITE = connection.vendor == "sqlite"
migration_0001 = importlib.import_module("fasttasks.migrations.0001_initial")


def _columns() -> dict[str, Any]:
    with connection.cursor() as cursor:
        return {info.name: info for info in connection.introspection.get_table_description(cursor, TABLE)}


def _varchar_lengths() -> dict[str, int]:
    with connection.cursor() as cursor:
        if IS_SQLITE:
            cursor.execute(f"SELECT name, type FROM pragma_table_info('{TABLE}')")
            lengths = {}
            for name, declared in cursor.fetchall():
                if declared.lower().startswith("varchar("):
                    lengths[name] = int(declared[len("varchar(") : -1])
            return lengths
        cursor.execute(
            "SELECT column_name, character_maximum_length FROM information_schema.columns "
            "WHERE table_name = %s AND character_maximum_length IS NOT NULL",
            [TABLE],
        )
        return dict(cursor.fetchall())


def _model_fields() -> dict[str, models.Field[Any, Any]]:
    return {field.column: field for field in TaskRecord._meta.concrete_fields if field.column}


def test_model_maps_the_table() -> None:
    assert TaskRecord._meta.db_table == TABLE
    assert str(TaskRecord._meta.verbose_name) == "task"


def test_columns_match() -> None:
    columns = _columns()
    fields = _model_fields()
    assert list(columns) == list(fields), "same columns, in the same order"
    for name, field in fields.items():
        assert columns[name].null_ok == field.null, f"nullability of {name}"


def test_column_types_match() -> None:
    columns = _columns()
    for name, field in _model_fields().items():
        found = connection.introspection.get_field_type(columns[name].type_code, columns[name])
        expected = field.get_internal_type()
        if IS_SQLITE and expected == "JSONField":
            expected = "TextField"  # JSON is text with a json_valid() CHECK on SQLite
        assert found == expected, f"type of {name}"


def test_varchar_lengths_match() -> None:
    lengths = _varchar_lengths()
    char_fields = {
        name: field.max_length
        for name, field in _model_fields().items()
        if isinstance(field, models.CharField)
    }
    assert lengths == char_fields


def test_primary_key() -> None:
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, TABLE)
    primary = [c["columns"] for c in constraints.values() if c["primary_key"]]
    assert primary == [["id"]]
    assert TaskRecord._meta.pk is not None and TaskRecord._meta.pk.column == "id"


def test_indexes_match() -> None:
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, TABLE)
    for index in TaskRecord._meta.indexes:
        assert index.name in constraints, f"index {index.name} missing from the SQL schema"
        found = constraints[index.name]
        expected_columns = [name.lstrip("-") for name in index.fields]
        assert found["columns"] == expected_columns
        if "orders" in found:
            assert found["orders"] == ["DESC" if name.startswith("-") else "ASC" for name in index.fields]
    unique = [c for c in TaskRecord._meta.constraints if isinstance(c, models.UniqueConstraint)]
    for constraint in unique:
        assert constraints[constraint.name]["unique"], f"{constraint.name} is not UNIQUE in the SQL schema"
        assert constraints[constraint.name]["columns"] == list(constraint.fields)
    sql_indexes = {name for name, c in constraints.items() if c.get("index") and not c["primary_key"]}
    assert sql_indexes == {index.name for index in [*TaskRecord._meta.indexes, *unique]}


def test_check_constraints_match() -> None:
    names = [c.name for c in TaskRecord._meta.constraints if isinstance(c, models.CheckConstraint)]
    with connection.cursor() as cursor:
        if IS_SQLITE:
            cursor.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = %s", [TABLE])
            (table_sql,) = cursor.fetchone()
            for name in names:
                assert f"CONSTRAINT {name} CHECK" in table_sql
        else:
            constraints = connection.introspection.get_constraints(cursor, TABLE)
            assert {n for n, c in constraints.items() if c["check"]} == set(names)


def test_ready_index_is_partial() -> None:
    with connection.cursor() as cursor:
        if IS_SQLITE:
            cursor.execute("SELECT sql FROM sqlite_master WHERE name = 'fasttasks_task_ready_idx'")
        else:
            cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'fasttasks_task_ready_idx'")
        (definition,) = cursor.fetchone()
    assert "WHERE" in definition and "READY" in definition


def test_database_defaults_accept_a_minimal_insert() -> None:
    """The worker and other writers may rely on the SQL defaults the model also declares."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {TABLE} (id, task_path, queue_name, backend_name, available_at, enqueued_at) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            [
                "minimal",
                "tests.tasks.noop",
                "default",
                "default",
                "2030-01-01 00:00:00",
                "2030-01-01 00:00:00",
            ],
        )
    row = TaskRecord.objects.get(pk="minimal")
    defaults = {
        "priority": 0,
        "status": "READY",
        "args": [],
        "kwargs": {},
        "attempts": 0,
        "max_attempts": 1,
        "crashes": 0,
        "worker_ids": [],
        "errors": [],
    }
    for name, value in defaults.items():
        assert getattr(row, name) == value
        field = TaskRecord._meta.get_field(name)
        assert isinstance(field, models.Field)
        assert field.get_default() == value
    assert tasks.noop.get_result("minimal").status == "READY"


def test_schema_statements_exist_for_both_vendors() -> None:
    for vendor in ("sqlite", "postgresql"):
        statements = _core.schema_statements(vendor)
        assert any(f"CREATE TABLE {TABLE}" in s for s in statements)
        assert sum("CREATE INDEX" in s for s in statements) == len(TaskRecord._meta.indexes)


def test_no_missing_migrations() -> None:
    out = StringIO()
    call_command("makemigrations", "fasttasks", "--check", "--dry-run", stdout=out, stderr=out)
    assert "No changes detected" in out.getvalue()


def test_migration_rejects_unsupported_vendor() -> None:
    editor = SimpleNamespace(connection=SimpleNamespace(vendor="mysql", alias="legacy"))
    with pytest.raises(ImproperlyConfigured, match="vendor 'mysql' is not supported"):
        migration_0001.create_schema(None, editor)


@pytest.mark.django_db(transaction=True)
def test_migrate_backwards_and_forwards() -> None:
    try:
        call_command("migrate", "fasttasks", "zero", verbosity=0)
        assert not set(ALL_TABLES) & set(connection.introspection.table_names())
    finally:
        call_command("migrate", "fasttasks", verbosity=0)
    assert set(ALL_TABLES) <= set(connection.introspection.table_names())
    with connection.cursor() as cursor:
        assert "fasttasks_task_ready_idx" in connection.introspection.get_constraints(cursor, TABLE)
    result = tasks.add.enqueue(1, 2)
    assert tasks.add.get_result(result.id).args == [1, 2]


@pytest.mark.django_db(transaction=True)
def test_sqlmigrate_shows_the_schema_sql() -> None:
    """The RunPython goes through schema_editor.execute, so sqlmigrate prints (and does not run) it."""
    out = StringIO()
    call_command("sqlmigrate", "fasttasks", "0001", stdout=out)
    assert f"CREATE TABLE {TABLE}" in out.getvalue()
    assert "CREATE INDEX fasttasks_task_ready_idx" in out.getvalue()
    out = StringIO()
    call_command("sqlmigrate", "fasttasks", "0001", "--backwards", stdout=out)
    assert f"DROP TABLE IF EXISTS {TABLE}" in out.getvalue()
    assert TABLE in connection.introspection.table_names()
