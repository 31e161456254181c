"""The Django model of the task table.

The table is created by the SQL in ``rust/fasttasks-core/sql/`` (through migration 0001), not from this
model; the model maps it for the admin and for queries. ``tests/test_schema.py`` keeps the two in step.
"""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _

from .compat import TaskResultStatus

__all__ = ["TaskRecord"]

FINISHED_STATUSES = (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED)


class TaskRecord(models.Model):
    """One enqueued task and everything that happened to it."""

    id = models.CharField(_("id"), max_length=64, primary_key=True)
    task_path = models.TextField(_("task path"))
    queue_name = models.CharField(_("queue name"), max_length=255)
    backend_name = models.CharField(_("backend name"), max_length=255)
    priority = models.IntegerField(_("priority"), default=0)
    status = models.CharField(
        _("status"), max_length=10, choices=TaskResultStatus.choices, default=TaskResultStatus.READY
    )
    args = models.JSONField(_("args"), default=list)
    kwargs = models.JSONField(_("kwargs"), default=dict)
    run_after = models.DateTimeField(_("run after"), null=True)
    available_at = models.DateTimeField(_("available at"))
    enqueued_at = models.DateTimeField(_("enqueued at"))
    started_at = models.DateTimeField(_("started at"), null=True)
    last_attempted_at = models.DateTimeField(_("last attempted at"), null=True)
    finished_at = models.DateTimeField(_("finished at"), null=True)
    attempts = models.IntegerField(_("attempts"), default=0)
    max_attempts = models.IntegerField(_("max attempts"), default=1)
    crashes = models.IntegerField(_("crashes"), default=0)
    cancel_requested_at = models.DateTimeField(_("cancel requested at"), null=True)
    unique_key = models.CharField(_("unique key"), max_length=64, null=True)
    worker_ids = models.JSONField(_("worker ids"), default=list)
    errors = models.JSONField(_("errors"), default=list)
    return_value = models.JSONField(_("return value"), null=True)
    worker_id = models.CharField(_("worker id"), max_length=64, null=True)
    lease_token = models.BigIntegerField(_("lease token"), null=True)

    class Meta:
        db_table = "fasttasks_task"
        verbose_name = _("task")
        verbose_name_plural = _("tasks")
        indexes = [  # noqa: RUF012 - Django Meta convention
            models.Index(
                fields=["-priority", "available_at", "id"],
                name="fasttasks_task_ready_idx",
                condition=models.Q(status="READY"),
            ),
            models.Index(
                fields=["worker_id"],
                name="fasttasks_task_running_idx",
                condition=models.Q(status="RUNNING"),
            ),
            models.Index(
                fields=["finished_at"],
                name="fasttasks_task_finished_idx",
                condition=models.Q(status__in=["SUCCESSFUL", "FAILED"]),
            ),
        ]
        constraints = [  # noqa: RUF012
            models.CheckConstraint(
                condition=models.Q(priority__gte=-100, priority__lte=100),
                name="fasttasks_task_priority_range",
            ),
            models.CheckConstraint(
                condition=models.Q(status__in=["READY", "RUNNING", "SUCCESSFUL", "FAILED"]),
                name="fasttasks_task_status_valid",
            ),
            # A lease exists only while RUNNING (the worker's completion guard relies on it).
            models.CheckConstraint(
                condition=models.Q(lease_token__isnull=True) | models.Q(status="RUNNING"),
                name="fasttasks_task_lease_only_while_running",
            ),
            # Unique tasks: one active (READY or RUNNING) row per key and backend.
            models.UniqueConstraint(
                fields=["backend_name", "unique_key"],
                condition=models.Q(unique_key__isnull=False, status__in=["READY", "RUNNING"]),
                name="fasttasks_task_unique_active_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_path} ({self.id})"

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES
