"""The read-only TaskRecord admin."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib import admin
from django.test import Client
from django.urls import path, reverse
from fasttasks.compat import TaskResultStatus
from fasttasks.models import TaskRecord

from tests import tasks

urlpatterns = [path("admin/", admin.site.urls)]

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]

EVIL = "<script>alert('x')</script>"


@pytest.fixture
def failed_task() -> TaskRecord:
    result = tasks.fail.enqueue(EVIL)
    assert result.enqueued_at is not None
    TaskRecord.objects.filter(pk=result.id).update(
        status=TaskResultStatus.FAILED,
        attempts=2,
        max_attempts=2,
        worker_ids=["worker-a", "worker-<b>"],
        started_at=result.enqueued_at + timedelta(seconds=1),
        last_attempted_at=result.enqueued_at + timedelta(seconds=3),
        finished_at=result.enqueued_at + timedelta(seconds=4),
        errors=[
            {
                "exception_class_path": "builtins.ValueError",
                "traceback": f"Traceback (most recent call last):\nValueError: {EVIL} first",
                "attempt": 1,
                "worker_id": "worker-a",
            },
            {
                "exception_class_path": "builtins.ValueError",
                "traceback": f"Traceback (most recent call last):\nValueError: {EVIL} second",
                "attempt": 2,
                "worker_id": "worker-<b>",
            },
        ],
    )
    return TaskRecord.objects.get(pk=result.id)


def _change_url(record: TaskRecord) -> str:
    return reverse("admin:fasttasks_taskrecord_change", args=[record.pk])


def test_registered() -> None:
    assert admin.site.is_registered(TaskRecord)


def test_changelist(admin_client: Client, failed_task: TaskRecord) -> None:
    ready = tasks.add.using(queue_name="low", priority=9).enqueue(1, 2)
    response = admin_client.get(reverse("admin:fasttasks_taskrecord_changelist"))
    assert response.status_code == 200
    content = response.content.decode()
    assert failed_task.pk in content
    assert ready.id in content
    assert "tests.tasks.fail" in content
    assert EVIL not in content


def test_changelist_does_not_load_json_columns(admin_client: Client, failed_task: TaskRecord) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as ctx:
        response = admin_client.get(reverse("admin:fasttasks_taskrecord_changelist"))
    assert response.status_code == 200
    selects = [q["sql"] for q in ctx.captured_queries if 'FROM "fasttasks_task"' in q["sql"]]
    assert selects
    for sql in selects:
        assert '"fasttasks_task"."errors"' not in sql
        assert '"fasttasks_task"."args"' not in sql


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("?status__exact=FAILED", {"failed"}),
        ("?queue_name=low", {"ready"}),
        ("?priority=9", {"ready"}),
        ("?q=tests.tasks.add", {"ready"}),
    ],
)
def test_changelist_filters_and_search(
    admin_client: Client, failed_task: TaskRecord, query: str, expected: set[str]
) -> None:
    ready = tasks.add.using(queue_name="low", priority=9).enqueue(1, 2)
    ids = {"failed": failed_task.pk, "ready": ready.id}
    response = admin_client.get(reverse("admin:fasttasks_taskrecord_changelist") + query)
    assert response.status_code == 200
    content = response.content.decode()
    for name, task_id in ids.items():
        assert (task_id in content) == (name in expected), name


def test_search_by_id(admin_client: Client, failed_task: TaskRecord) -> None:
    other = tasks.add.enqueue(1, 2)
    response = admin_client.get(reverse("admin:fasttasks_taskrecord_changelist") + f"?q={failed_task.pk}")
    content = response.content.decode()
    assert failed_task.pk in content
    assert other.id not in content


def test_change_page_shows_everything_escaped(admin_client: Client, failed_task: TaskRecord) -> None:
    response = admin_client.get(_change_url(failed_task))
    assert response.status_code == 200
    content = response.content.decode()
    assert EVIL not in content
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; first" in content
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; second" in content
    assert content.count('<pre class="fasttasks-traceback">') == 2
    assert "Attempt 1" in content and "Attempt 2" in content
    assert "worker-&lt;b&gt;" in content
    assert "builtins.ValueError" in content
    # args as pretty JSON
    assert '<pre class="fasttasks-json">[\n  &quot;&lt;script&gt;' in content
    # read-only: no save button
    assert 'name="_save"' not in content


def test_change_page_successful_return_value(admin_client: Client) -> None:
    result = tasks.echo.enqueue(1, k="v")
    TaskRecord.objects.filter(pk=result.id).update(
        status=TaskResultStatus.SUCCESSFUL, return_value={"answer": [42, "<i>"]}, worker_ids=["w"]
    )
    response = admin_client.get(_change_url(TaskRecord.objects.get(pk=result.id)))
    assert response.status_code == 200
    content = response.content.decode()
    assert "&quot;answer&quot;: [\n    42,\n    &quot;&lt;i&gt;&quot;" in content


def test_add_is_forbidden(admin_client: Client) -> None:
    response = admin_client.get(reverse("admin:fasttasks_taskrecord_add"))
    assert response.status_code == 403


def test_change_is_forbidden(admin_client: Client, failed_task: TaskRecord) -> None:
    before = TaskRecord.objects.get(pk=failed_task.pk).status
    response = admin_client.post(_change_url(failed_task), {"status": "READY"})
    assert response.status_code == 403
    assert TaskRecord.objects.get(pk=failed_task.pk).status == before


def test_delete_finished_task(admin_client: Client, failed_task: TaskRecord) -> None:
    url = reverse("admin:fasttasks_taskrecord_delete", args=[failed_task.pk])
    assert admin_client.get(url).status_code == 200
    response = admin_client.post(url, {"post": "yes"})
    assert response.status_code == 302
    assert not TaskRecord.objects.filter(pk=failed_task.pk).exists()


@pytest.mark.parametrize("status", [TaskResultStatus.READY, TaskResultStatus.RUNNING])
def test_delete_unfinished_task_is_forbidden(admin_client: Client, status: Any) -> None:
    result = tasks.add.enqueue(1, 2)
    TaskRecord.objects.filter(pk=result.id).update(status=status)
    url = reverse("admin:fasttasks_taskrecord_delete", args=[result.id])
    assert admin_client.post(url, {"post": "yes"}).status_code == 403
    assert TaskRecord.objects.filter(pk=result.id).exists()


def test_bulk_delete_action_skips_unfinished(admin_client: Client, failed_task: TaskRecord) -> None:
    ready = tasks.add.enqueue(1, 2)
    response = admin_client.post(
        reverse("admin:fasttasks_taskrecord_changelist"),
        {"action": "delete_finished", "_selected_action": [failed_task.pk, ready.id]},
        follow=True,
    )
    assert response.status_code == 200
    assert not TaskRecord.objects.filter(pk=failed_task.pk).exists()
    assert TaskRecord.objects.filter(pk=ready.id).exists()
    content = response.content.decode()
    assert "Deleted 1 finished task." in content
    assert "Skipped 1 task that has not finished." in content


def test_stock_delete_action_is_removed(admin_client: Client) -> None:
    response = admin_client.get(reverse("admin:fasttasks_taskrecord_changelist"))
    content = response.content.decode()
    assert 'value="delete_finished"' in content
    assert 'value="delete_selected"' not in content
