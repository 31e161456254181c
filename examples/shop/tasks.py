"""Background work of the demo shop: the kinds of tasks Django apps hand to a worker.

Every function here is an ordinary Django task (``django.tasks.task``); nothing is fasttasks-specific
except that ``settings.TASKS`` points at ``fasttasks.backend.FastTasksBackend``.
"""

import asyncio
import csv
from decimal import Decimal
from typing import Any

from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Avg, Count, Sum
from django.utils import timezone

try:
    from django.tasks import TaskContext, task
except ImportError:  # Django 5.2 with the django-tasks backport
    from django_tasks import TaskContext, task  # type: ignore[no-redef]

from .models import Customer, ImportedRow, Order

COUPONS = {"WELCOME10": Decimal("0.10"), "SPRING5": Decimal("0.05")}


@task(queue_name="emails")
def send_order_confirmation(order_id: int) -> dict[str, Any]:
    """Email the customer that their order was received (through Django's mail API)."""
    order = Order.objects.select_related("customer").get(pk=order_id)
    send_mail(
        subject=f"Your order {order.number}",
        message=(
            f"Hello {order.customer.name},\n\n"
            f"thank you for your order {order.number} of {order.total} EUR.\n"
            "We will let you know when it ships.\n"
        ),
        from_email=None,
        recipient_list=[order.customer.email],
    )
    Order.objects.filter(pk=order_id).update(confirmation_sent_at=timezone.now())
    return {"order": order.number, "to": order.customer.email}


@task
def import_csv_chunk(chunk: int, lines: list[str]) -> int:
    """Parse one chunk of a product CSV and write its rows with one bulk insert."""
    rows = [
        ImportedRow(chunk=chunk, sku=sku, name=name, quantity=int(quantity), price=Decimal(price))
        for sku, name, quantity, price in csv.reader(lines)
    ]
    with transaction.atomic():
        ImportedRow.objects.filter(chunk=chunk).delete()  # idempotent: a retried chunk replaces itself
        ImportedRow.objects.bulk_create(rows)
    return len(rows)


@task(queue_name="reports")
def build_sales_report(customer_id: int) -> dict[str, Any]:
    """Aggregate a customer's orders with the ORM; the report is the task's return value."""
    customer = Customer.objects.get(pk=customer_id)
    totals = Order.objects.filter(customer_id=customer_id).aggregate(
        orders=Count("id"), revenue=Sum("total"), average=Avg("total"), discounts=Sum("discount")
    )
    cents = Decimal("0.01")
    return {
        "customer": customer.email,
        "orders": totals["orders"],
        "revenue": str(Decimal(totals["revenue"] or 0).quantize(cents)),
        "average": str(Decimal(totals["average"] or 0).quantize(cents)),
        "discounts": str(Decimal(totals["discounts"] or 0).quantize(cents)),
    }


@task
def apply_coupon(order_id: int, code: str) -> dict[str, Any]:
    """Apply a coupon; an unknown code raises ValueError, so the task ends FAILED with that error."""
    if code not in COUPONS:
        raise ValueError(f"Invalid coupon code {code!r} for order {order_id}")
    order = Order.objects.get(pk=order_id)
    discount = (order.total * COUPONS[code]).quantize(Decimal("0.01"))
    Order.objects.filter(pk=order_id).update(coupon_code=code, discount=discount)
    return {"order": order.number, "discount": str(discount)}


@task
async def notify_warehouse(order_id: int) -> dict[str, Any]:
    """An async task: wait on (simulated) network I/O, then use the async ORM."""
    await asyncio.sleep(0.001)  # stands in for an HTTP call to the warehouse system
    order = await Order.objects.aget(pk=order_id)
    await Order.objects.filter(pk=order_id).aupdate(warehouse_notified=True)
    return {"order": order.number, "warehouse_notified": True}


@task(takes_context=True)
def audit_attempt(context: TaskContext, note: str) -> dict[str, Any]:
    """A task that receives its ``TaskContext``: which attempt is this, and what is my id?"""
    return {"attempt": context.attempt, "task_id": context.task_result.id, "note": note}


@task(queue_name="emails")
def send_cart_reminder(customer_id: int) -> dict[str, Any]:
    """Enqueued with ``.using(run_after=...)``: a reminder that must not go out before its time."""
    customer = Customer.objects.get(pk=customer_id)
    send_mail(
        subject="You left something in your cart",
        message=f"Hello {customer.name},\n\nyour cart is waiting for you.\n",
        from_email=None,
        recipient_list=[customer.email],
    )
    return {"customer": customer.email, "sent_at": timezone.now().isoformat()}


@task
def refund_order(order_id: int) -> dict[str, Any]:
    """Urgent work, enqueued with ``.using(priority=50)`` so it jumps the queue."""
    order = Order.objects.select_related("customer").get(pk=order_id)
    Order.objects.filter(pk=order_id).update(refunded=True)
    send_mail(
        subject=f"Refund for order {order.number}",
        message=f"Hello {order.customer.name},\n\nwe have refunded {order.total} EUR.\n",
        from_email=None,
        recipient_list=[order.customer.email],
    )
    return {"order": order.number, "refunded": str(order.total)}
