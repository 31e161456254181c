"""Type-checked by ``tests/test_typing.py`` (mypy --strict), never imported by the suite: the decorated
functions keep their parameter and return types, and enqueue checks its arguments."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, assert_type

import fasttasks
from django.tasks import TaskContext


@fasttasks.task
def add(a: int, b: int) -> int:
    return a + b


@fasttasks.task(max_attempts=5, retry_on=(ConnectionError,), backoff=fasttasks.ExponentialBackoff(base=2))
def sync_invoice(invoice_id: int, *, force: bool = False) -> str:
    return str(invoice_id)


@fasttasks.task(unique_key=lambda invoice_id: f"invoice-{invoice_id}", timeout=30)
def send_invoice(invoice_id: int) -> None:
    pass


@fasttasks.task(takes_context=True, max_attempts=2)
def with_context(context: TaskContext[Any, Any], name: str) -> list[str]:
    return [name] * context.attempt


@fasttasks.task(max_attempts=3)
async def fetch(url: str) -> bytes:
    return url.encode()


assert_type(add.enqueue(1, 2).return_value, int)
assert_type(sync_invoice.enqueue(7, force=True).return_value, str)
assert_type(with_context.enqueue("x").return_value, list[str])
moved: fasttasks.Task[..., int] = add.using(priority=3)  # still a fasttasks.Task
assert_type(add.using(priority=3).enqueue(1, 2).return_value, int)
assert_type(sync_invoice.with_options(unique=True, timeout=3).enqueue(7).return_value, str)
assert_type(send_invoice.enqueue(1).return_value, None)
assert_type(fasttasks.cancel("id"), fasttasks.Cancellation)
assert_type(fasttasks.is_cancelled(add.enqueue(1, 2)), bool)
assert_type(add.using(priority=3).max_attempts, int | None)
# django-stubs types a coroutine task's result as the coroutine it returns.
coroutine_task: fasttasks.Task[..., Coroutine[Any, Any, bytes]] = fetch

add.enqueue("1", 2)  # type: ignore[arg-type]
send_invoice.with_options(unique=True).enqueue("1")  # type: ignore[arg-type]
sync_invoice.enqueue(7, forced=True)  # type: ignore[call-arg]
with_context.enqueue()  # type: ignore[call-arg]
fasttasks.task(max_attempts="3")(add.func)  # type: ignore[call-overload]
