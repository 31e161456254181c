"""Read-only admin for the task table: "what happened to this task?".

Nothing can be added or edited (the worker owns the rows). Finished tasks (SUCCESSFUL or FAILED) can be
deleted; READY and RUNNING ones cannot, since deleting them would silently drop or orphan work.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, cast

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from .models import FINISHED_STATUSES, TaskRecord

if TYPE_CHECKING:
    _ModelAdmin = admin.ModelAdmin[TaskRecord]
else:  # ModelAdmin is not subscriptable at runtime
    _ModelAdmin = admin.ModelAdmin


def _pretty_json(value: Any) -> SafeString:
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=repr)
    return format_html('<pre class="fasttasks-json">{}</pre>', text)


@admin.register(TaskRecord)
class TaskRecordAdmin(_ModelAdmin):
    list_display = (
        "id",
        "task_path",
        "status",
        "queue_name",
        "priority",
        "attempts",
        "enqueued_at",
        "started_at",
        "finished_at",
    )
    list_filter = ("status", "queue_name", "priority")
    search_fields = ("=id", "task_path")
    ordering = ("-enqueued_at",)
    show_full_result_count = False
    actions = ("delete_finished",)

    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    "task_path",
                    "status",
                    "backend_name",
                    "queue_name",
                    "priority",
                    "unique_key",
                )
            },
        ),
        (
            _("Arguments and result"),
            {"fields": ("args_display", "kwargs_display", "return_value_display")},
        ),
        (
            _("Attempts"),
            {
                "fields": (
                    "attempts",
                    "max_attempts",
                    "crashes",
                    "errors_display",
                    "worker_ids_display",
                    "worker_id",
                )
            },
        ),
        (
            _("Timestamps"),
            {
                "fields": (
                    "enqueued_at",
                    "run_after",
                    "available_at",
                    "started_at",
                    "last_attempted_at",
                    "finished_at",
                    "cancel_requested_at",
                )
            },
        ),
    )
    # Nothing is edited here: the worker owns these rows.
    readonly_fields = tuple(
        name for _, options in fieldsets for name in cast("tuple[str, ...]", options["fields"])
    )

    # The changelist shows none of the (possibly large) JSON columns; do not fetch them for 100 rows.
    _LIST_DEFERRED = ("args", "kwargs", "errors", "return_value", "worker_ids")

    def get_queryset(self, request: HttpRequest) -> QuerySet[TaskRecord]:
        queryset = super().get_queryset(request)
        match = getattr(request, "resolver_match", None)
        if match is not None and (match.url_name or "").endswith("_changelist"):
            queryset = queryset.defer(*self._LIST_DEFERRED)
        return queryset

    # -- permissions ---------------------------------------------------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: TaskRecord | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: TaskRecord | None = None) -> bool:
        if obj is not None and not obj.is_finished:
            return False
        return super().has_delete_permission(request, obj)

    def get_actions(self, request: HttpRequest, action_location: Any = None) -> dict[str, Any]:
        # action_location exists from Django 6.1 on; pass it only when Django gave it.
        if action_location is None:
            actions = super().get_actions(request)
        else:
            actions = super().get_actions(request, action_location=action_location)
        # The stock action would also delete READY/RUNNING rows; delete_finished replaces it.
        actions.pop("delete_selected", None)
        return actions

    @admin.action(description=_("Delete selected finished tasks"), permissions=["delete"])
    def delete_finished(self, request: HttpRequest, queryset: QuerySet[TaskRecord]) -> None:
        finished = queryset.filter(status__in=FINISHED_STATUSES)
        skipped = queryset.count() - finished.count()
        deleted, _details = finished.delete()
        self.message_user(
            request,
            ngettext("Deleted %(count)d finished task.", "Deleted %(count)d finished tasks.", deleted)
            % {"count": deleted},
            messages.SUCCESS,
        )
        if skipped:
            self.message_user(
                request,
                ngettext(
                    "Skipped %(count)d task that has not finished.",
                    "Skipped %(count)d tasks that have not finished.",
                    skipped,
                )
                % {"count": skipped},
                messages.WARNING,
            )

    # -- detail fields -------------------------------------------------------------------------------

    @admin.display(description=_("args"))
    def args_display(self, obj: TaskRecord) -> SafeString:
        return _pretty_json(obj.args)

    @admin.display(description=_("kwargs"))
    def kwargs_display(self, obj: TaskRecord) -> SafeString:
        return _pretty_json(obj.kwargs)

    @admin.display(description=_("return value"))
    def return_value_display(self, obj: TaskRecord) -> SafeString | str:
        if obj.status != "SUCCESSFUL":
            return "-"
        return _pretty_json(obj.return_value)

    @admin.display(description=_("worker ids"))
    def worker_ids_display(self, obj: TaskRecord) -> SafeString | str:
        if not obj.worker_ids:
            return "-"
        return format_html_join(
            "",
            "<div>{}. <code>{}</code></div>",
            ((number, worker) for number, worker in enumerate(obj.worker_ids, start=1)),
        )

    @admin.display(description=_("errors"))
    def errors_display(self, obj: TaskRecord) -> SafeString | str:
        """Every failed attempt, oldest first, with its traceback (escaped, in <pre>)."""
        if not obj.errors:
            return "-"
        rows = []
        for number, entry in enumerate(obj.errors, start=1):
            if not isinstance(entry, dict):
                entry = {"traceback": repr(entry)}
            attempt = entry.get("attempt", number)
            worker = entry.get("worker_id")
            rows.append(
                (
                    attempt,
                    f" on worker {worker}" if worker else "",
                    entry.get("exception_class_path", "?"),
                    entry.get("traceback", ""),
                )
            )
        return format_html_join(
            "",
            '<div class="fasttasks-error"><p><strong>Attempt {}{}</strong>: <code>{}</code></p>'
            '<pre class="fasttasks-traceback">{}</pre></div>',
            rows,
        )
