"""Create the task table from the schema SQL shipped with the Rust core.

The database side runs ``fasttasks._core.schema_statements(vendor)`` (the single source of truth, also
used by the Rust tests); the state side declares the matching ``TaskRecord`` model. Routers are asked
about ``model_name="taskrecord"`` so a router that sends fasttasks to its own database works.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import migrations, models
from django.db.backends.base.schema import BaseDatabaseSchemaEditor

SUPPORTED_VENDORS = ("postgresql", "sqlite")


def create_schema(apps: Any, schema_editor: BaseDatabaseSchemaEditor) -> None:
    vendor = schema_editor.connection.vendor
    if vendor not in SUPPORTED_VENDORS:
        raise ImproperlyConfigured(
            f"fasttasks cannot create its table in database {schema_editor.connection.alias!r}: "
            f"vendor {vendor!r} is not supported (fasttasks supports PostgreSQL and SQLite). Route the "
            "fasttasks app to a supported database, or do not migrate it on this one."
        )
    from fasttasks import _core

    for statement in _core.schema_statements(vendor):
        schema_editor.execute(statement, params=None)


def drop_schema(apps: Any, schema_editor: BaseDatabaseSchemaEditor) -> None:
    # Dropping a table drops its indexes too.
    for table in ("fasttasks_leader", "fasttasks_worker", "fasttasks_task"):
        schema_editor.execute(f"DROP TABLE IF EXISTS {table}", params=None)


class Migration(migrations.Migration):
    initial = True

    dependencies = []  # noqa: RUF012 - Django migration convention

    operations = [  # noqa: RUF012
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunPython(create_schema, drop_schema, hints={"model_name": "taskrecord"}),
            ],
            state_operations=[
                migrations.CreateModel(
                    name="TaskRecord",
                    fields=[
                        (
                            "id",
                            models.CharField(
                                max_length=64, primary_key=True, serialize=False, verbose_name="id"
                            ),
                        ),
                        ("task_path", models.TextField(verbose_name="task path")),
                        ("queue_name", models.CharField(max_length=255, verbose_name="queue name")),
                        ("backend_name", models.CharField(max_length=255, verbose_name="backend name")),
                        ("priority", models.IntegerField(default=0, verbose_name="priority")),
                        (
                            "status",
                            models.CharField(
                                choices=[
                                    ("READY", "Ready"),
                                    ("RUNNING", "Running"),
                                    ("FAILED", "Failed"),
                                    ("SUCCESSFUL", "Successful"),
                                ],
                                default="READY",
                                max_length=10,
                                verbose_name="status",
                            ),
                        ),
                        ("args", models.JSONField(default=list, verbose_name="args")),
                        ("kwargs", models.JSONField(default=dict, verbose_name="kwargs")),
                        ("run_after", models.DateTimeField(null=True, verbose_name="run after")),
                        ("available_at", models.DateTimeField(verbose_name="available at")),
                        ("enqueued_at", models.DateTimeField(verbose_name="enqueued at")),
                        ("started_at", models.DateTimeField(null=True, verbose_name="started at")),
                        (
                            "last_attempted_at",
                            models.DateTimeField(null=True, verbose_name="last attempted at"),
                        ),
                        ("finished_at", models.DateTimeField(null=True, verbose_name="finished at")),
                        ("attempts", models.IntegerField(default=0, verbose_name="attempts")),
                        ("max_attempts", models.IntegerField(default=1, verbose_name="max attempts")),
                        ("crashes", models.IntegerField(default=0, verbose_name="crashes")),
                        (
                            "cancel_requested_at",
                            models.DateTimeField(null=True, verbose_name="cancel requested at"),
                        ),
                        (
                            "unique_key",
                            models.CharField(max_length=64, null=True, verbose_name="unique key"),
                        ),
                        ("worker_ids", models.JSONField(default=list, verbose_name="worker ids")),
                        ("errors", models.JSONField(default=list, verbose_name="errors")),
                        ("return_value", models.JSONField(null=True, verbose_name="return value")),
                        ("worker_id", models.CharField(max_length=64, null=True, verbose_name="worker id")),
                        ("lease_token", models.BigIntegerField(null=True, verbose_name="lease token")),
                    ],
                    options={
                        "verbose_name": "task",
                        "verbose_name_plural": "tasks",
                        "db_table": "fasttasks_task",
                        "indexes": [
                            models.Index(
                                condition=models.Q(("status", "READY")),
                                fields=["-priority", "available_at", "id"],
                                name="fasttasks_task_ready_idx",
                            ),
                            models.Index(
                                condition=models.Q(("status", "RUNNING")),
                                fields=["worker_id"],
                                name="fasttasks_task_running_idx",
                            ),
                            models.Index(
                                condition=models.Q(("status__in", ["SUCCESSFUL", "FAILED"])),
                                fields=["finished_at"],
                                name="fasttasks_task_finished_idx",
                            ),
                        ],
                        "constraints": [
                            models.CheckConstraint(
                                condition=models.Q(("priority__gte", -100), ("priority__lte", 100)),
                                name="fasttasks_task_priority_range",
                            ),
                            models.CheckConstraint(
                                condition=models.Q(
                                    ("status__in", ["READY", "RUNNING", "SUCCESSFUL", "FAILED"])
                                ),
                                name="fasttasks_task_status_valid",
                            ),
                            models.CheckConstraint(
                                condition=models.Q(
                                    ("lease_token__isnull", True), ("status", "RUNNING"), _connector="OR"
                                ),
                                name="fasttasks_task_lease_only_while_running",
                            ),
                            models.UniqueConstraint(
                                condition=models.Q(
                                    ("status__in", ["READY", "RUNNING"]), ("unique_key__isnull", False)
                                ),
                                fields=("backend_name", "unique_key"),
                                name="fasttasks_task_unique_active_idx",
                            ),
                        ],
                    },
                ),
            ],
        ),
    ]
