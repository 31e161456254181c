"""One import point for the tasks framework: ``django.tasks`` (Django 6+) or the ``django_tasks`` backport.

Everything else in fasttasks imports these names from here and never from either framework directly, so
the two supported stacks (Django 6.0/6.1, and Django 5.2 + django-tasks >= 0.12) differ in this file only.
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import TYPE_CHECKING

__all__ = [
    "BACKPORT",
    "DEFAULT_TASK_BACKEND_ALIAS",
    "DEFAULT_TASK_QUEUE_NAME",
    "LOGGER_NAMES",
    "TASKS_LOGGER_NAME",
    "TASK_MAX_PRIORITY",
    "TASK_MIN_PRIORITY",
    "BaseTaskBackend",
    "InvalidTask",
    "InvalidTaskBackend",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "TaskResultDoesNotExist",
    "TaskResultMismatch",
    "TaskResultStatus",
    "default_task_backend",
    "normalize_json",
    "task",
    "task_backends",
    "task_enqueued",
    "task_finished",
    "task_started",
]

if TYPE_CHECKING or find_spec("django.tasks") is not None:
    from django.tasks import (
        DEFAULT_TASK_BACKEND_ALIAS,
        DEFAULT_TASK_QUEUE_NAME,
        Task,
        TaskContext,
        TaskResult,
        TaskResultStatus,
        default_task_backend,
        task,
        task_backends,
    )
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import TASK_MAX_PRIORITY, TASK_MIN_PRIORITY, TaskError
    from django.tasks.exceptions import (
        InvalidTask,
        InvalidTaskBackend,
        TaskResultDoesNotExist,
        TaskResultMismatch,
    )
    from django.tasks.signals import task_enqueued, task_finished, task_started
    from django.utils.json import normalize_json

    #: True when running on the django-tasks backport instead of ``django.tasks``.
    BACKPORT = False
    #: The logger the framework's own signal receivers write to.
    TASKS_LOGGER_NAME = "django.tasks"
else:  # pragma: no cover - exercised on Django 5.2 with the backport
    if find_spec("django_tasks") is None:
        raise ImportError(
            "fasttasks needs Django's tasks framework: use Django 6.0 or later, or Django 5.2 with the "
            "django-tasks backport (pip install 'fasttasks[django52]', and add 'django_tasks' to "
            "INSTALLED_APPS)."
        )
    from django_tasks import (
        DEFAULT_TASK_BACKEND_ALIAS,
        DEFAULT_TASK_QUEUE_NAME,
        TaskContext,
        TaskResult,
        TaskResultStatus,
        default_task_backend,
        task,
        task_backends,
    )
    from django_tasks import exceptions as _exceptions
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import TASK_MAX_PRIORITY, TASK_MIN_PRIORITY, Task, TaskError
    from django_tasks.signals import task_enqueued, task_finished, task_started
    from django_tasks.utils import normalize_json

    # django-tasks 0.12 names these InvalidTaskError / InvalidTaskBackendError; its unreleased HEAD
    # already uses Django's names. Accept both.
    InvalidTask = getattr(_exceptions, "InvalidTask", None) or _exceptions.InvalidTaskError
    InvalidTaskBackend = (
        getattr(_exceptions, "InvalidTaskBackend", None) or _exceptions.InvalidTaskBackendError
    )
    TaskResultDoesNotExist = _exceptions.TaskResultDoesNotExist
    TaskResultMismatch = _exceptions.TaskResultMismatch

    BACKPORT = True
    TASKS_LOGGER_NAME = "django_tasks"

#: Every logger a worker should configure: the framework's and ours.
LOGGER_NAMES: tuple[str, ...] = (TASKS_LOGGER_NAME, "fasttasks")
