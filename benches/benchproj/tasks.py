"""The benchmark tasks. ``noop`` measures the queue itself: claim, run, record."""

try:
    from django.tasks import task
except ImportError:  # Django 5.2 with the django-tasks backport
    from django_tasks import task  # type: ignore[no-redef]


@task
def noop() -> None:
    return None
