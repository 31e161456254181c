#!/usr/bin/env python
"""The fasttasks demo (``make demo``): a shop's background work, 20,000 tasks, one worker, live progress.

1. Recreates ``examples/demo.sqlite3``, migrates, and creates customers and orders.
2. Enqueues a mix of realistic tasks (``fasttasks.enqueue_many`` for the bulk, ``task.enqueue`` for a few):
   order-confirmation emails, CSV import chunks, sales reports, coupons (some invalid, so they fail),
   async warehouse notifications, plus four special ones: an async task, a ``takes_context`` task, a
   deferred task (``run_after`` a few seconds ahead) and a high-priority task (``priority=50``).
3. Runs ``fasttasks-worker --batch`` as a subprocess and shows progress from the database while it runs.
   ``--batch`` drains what is due and exits; if the deferred task was not yet due then, the demo waits
   for it and runs a second ``--batch`` pass.
4. Prints what happened and checks it: it exits non-zero if any task is left unfinished, if the counts
   or the special tasks' results are wrong. So the demo doubles as a smoke test.

    cd examples && ../.venv/bin/python run_demo.py [--tasks 20000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

EXAMPLES_DIR = Path(__file__).resolve().parent
DB_PATH = EXAMPLES_DIR / "demo.sqlite3"
# The worker from this venv; DEMO_WORKER overrides it (e.g. to try the demo against another build).
WORKER = Path(
    os.environ.get("DEMO_WORKER") or Path(os.path.abspath(sys.executable)).parent / "fasttasks-worker"
)
CHUNK = 1_000
CSV_LINES_PER_CHUNK = 10
INVALID_COUPON_EVERY = 20  # one coupon in 20 is invalid -> that task fails with ValueError
DEFER_SECONDS = 3
TTY = sys.stdout.isatty()

sys.path.insert(0, str(EXAMPLES_DIR))
os.environ["DJANGO_SETTINGS_MODULE"] = "demo.settings"
os.environ.setdefault("DJANGO_DEBUG", "0")


def bold(text: str) -> str:
    return f"\033[1m{text}\033[0m" if TTY else text


def color(text: str, ok: bool) -> str:
    return f"\033[{32 if ok else 31}m{text}\033[0m" if TTY else text


def section(title: str) -> None:
    print(f"\n{bold('== ' + title + ' ==')}", flush=True)


@dataclass
class Plan:
    """How many tasks of each kind, derived from --tasks."""

    total: int
    confirmations: int
    csv_chunks: int
    reports: int
    coupons: int
    warehouse: int
    customers: int
    orders: int
    single_confirmations: int = 50

    @classmethod
    def for_total(cls, total: int) -> Plan:
        if total < 200:
            raise SystemExit("--tasks must be at least 200")
        # The context, deferred and high-priority tasks are single; the async one counts as a warehouse task.
        confirmations = total * 30 // 100
        csv_chunks = total * 15 // 100
        reports = total * 20 // 100
        coupons = total * 15 // 100
        warehouse = total - 3 - confirmations - csv_chunks - reports - coupons
        customers = max(20, total // 20)
        orders = max(confirmations, warehouse, coupons) + 10
        return cls(total, confirmations, csv_chunks, reports, coupons, warehouse, customers, orders)

    @property
    def invalid_coupons(self) -> int:
        return len(range(0, self.coupons, INVALID_COUPON_EVERY))

    @property
    def emails(self) -> int:
        return self.confirmations + 2  # + the deferred cart reminder + the refund notice


@dataclass
class Specials:
    async_id: str = ""
    async_order: str = ""
    context_id: str = ""
    deferred_id: str = ""
    deferred_run_after: datetime | None = None
    priority_id: str = ""
    priority_order: str = ""
    failed_id: str = ""


@dataclass
class Checks:
    results: list[tuple[str, bool, str]] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.results.append((name, ok, detail))
        return ok

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.results)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tasks", type=int, default=20_000, help="how many tasks to enqueue (default 20,000)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, help="fasttasks-worker --concurrency (default 8)"
    )
    args = parser.parse_args()
    plan = Plan.for_total(args.tasks)

    # Emails (EMAIL_FILE_PATH) and the worker's full output go to a scratch directory, kept on failure.
    work_dir = Path(tempfile.mkdtemp(prefix="fasttasks-demo-"))
    email_dir = work_dir / "emails"
    email_dir.mkdir()
    os.environ["DEMO_EMAIL_DIR"] = str(email_dir)
    code = 1
    try:
        code = run(plan, args.concurrency, work_dir)
        return code
    finally:
        if code == 0:
            shutil.rmtree(work_dir, ignore_errors=True)
        else:
            print(f"(emails and the worker's full output kept in {work_dir})")


def run(plan: Plan, concurrency: int, work_dir: Path) -> int:
    section("Setting up the example shop (examples/demo.sqlite3)")
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{DB_PATH}{suffix}").unlink(missing_ok=True)

    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    print("migrated a fresh database")
    create_fixtures(plan)
    print(f"created {plan.customers:,} customers and {plan.orders:,} orders")

    section(f"Enqueuing {plan.total:,} tasks")
    started = time.perf_counter()
    specials = enqueue_everything(plan)
    elapsed = time.perf_counter() - started
    print(f"enqueued {plan.total:,} tasks in {elapsed:.2f} s ({plan.total / elapsed:,.0f}/s)")

    section(f"Running fasttasks-worker --batch --concurrency {concurrency}")
    if not WORKER.exists():
        print(f"{WORKER} not found: build fasttasks into this venv first (make build)", file=sys.stderr)
        return 2
    passes: list[tuple[float, int, int]] = []  # (wall seconds, exit code, tasks finished during the pass)
    output = WorkerOutput(work_dir / "worker.log")
    passes.append(run_worker_pass(plan, concurrency, "pass 1", output))

    leftover = ready_not_due()
    if passes[-1][1] == 0 and leftover:
        due = max(leftover)
        wait = max(0.0, (due - now()).total_seconds()) + 0.2
        print(
            f"{len(leftover)} deferred task(s) not yet due when the batch ended; waiting {wait:.1f} s "
            f"until {due:%H:%M:%S}, then a second --batch pass",
            flush=True,
        )
        time.sleep(wait)
        passes.append(run_worker_pass(plan, concurrency, "pass 2", output))
    output.close()

    return report(plan, specials, passes, work_dir / "emails")


def now() -> datetime:
    from django.utils import timezone

    return timezone.now()


# --- fixtures and enqueue -----------------------------------------------------------------------------


def create_fixtures(plan: Plan) -> None:
    from shop.models import Customer, Order

    rng = random.Random(42)
    Customer.objects.bulk_create(
        Customer(name=f"Customer {i}", email=f"customer{i}@example.com") for i in range(plan.customers)
    )
    customer_ids = list(Customer.objects.values_list("id", flat=True))
    Order.objects.bulk_create(
        (
            Order(
                customer_id=customer_ids[i % len(customer_ids)],
                number=f"ORD-{i:06d}",
                total=Decimal(rng.randrange(500, 50_000)) / 100,
            )
            for i in range(plan.orders)
        ),
        batch_size=2_000,
    )


def enqueue_bulk(task: Any, calls: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> list[Any]:
    """``fasttasks.enqueue_many``, 1,000 tasks per call (one INSERT each), in one transaction."""
    from django.db import transaction
    from fasttasks import enqueue_many

    results = []
    with transaction.atomic():
        for first in range(0, len(calls), CHUNK):
            results.extend(enqueue_many(task, calls[first : first + CHUNK]))
    return results


def enqueue_everything(plan: Plan) -> Specials:
    from shop import tasks
    from shop.models import Customer, Order

    order_ids = list(Order.objects.order_by("id").values_list("id", flat=True))
    customer_ids = list(Customer.objects.order_by("id").values_list("id", flat=True))
    specials = Specials()

    def show(what: str, count: int) -> None:
        print(f"  {count:>7,}  {what}", flush=True)

    bulk_confirmations = plan.confirmations - plan.single_confirmations
    enqueue_bulk(tasks.send_order_confirmation, [((oid,), {}) for oid in order_ids[:bulk_confirmations]])
    # A few the way a web view would: one enqueue() per request.
    for oid in order_ids[bulk_confirmations : plan.confirmations]:
        tasks.send_order_confirmation.enqueue(oid)
    show(
        f"send_order_confirmation  (emails queue; {plan.single_confirmations} of them by single enqueue)",
        plan.confirmations,
    )

    rng = random.Random(7)
    chunks = []
    for chunk in range(plan.csv_chunks):
        lines = [
            f"SKU-{rng.randrange(10_000):05d},Product {rng.randrange(1000)},{rng.randrange(1, 50)},"
            f"{rng.randrange(100, 10_000) / 100:.2f}"
            for _ in range(CSV_LINES_PER_CHUNK)
        ]
        chunks.append(((chunk, lines), {}))
    enqueue_bulk(tasks.import_csv_chunk, chunks)
    show(f"import_csv_chunk         ({CSV_LINES_PER_CHUNK} CSV lines each, bulk ORM insert)", plan.csv_chunks)

    enqueue_bulk(
        tasks.build_sales_report,
        [((customer_ids[i % len(customer_ids)],), {}) for i in range(plan.reports)],
    )
    show("build_sales_report       (reports queue; ORM aggregation, returns a dict)", plan.reports)

    coupon_calls = []
    for i in range(plan.coupons):
        code = "EXPIRED99" if i % INVALID_COUPON_EVERY == 0 else rng.choice(["WELCOME10", "SPRING5"])
        coupon_calls.append(((order_ids[i], code), {}))
    coupon_results = enqueue_bulk(tasks.apply_coupon, coupon_calls)
    specials.failed_id = coupon_results[0].id  # i == 0 -> the invalid code
    show(
        f"apply_coupon             ({plan.invalid_coupons:,} with an invalid code -> ValueError)",
        plan.coupons,
    )

    warehouse_ids = order_ids[1 : plan.warehouse]
    enqueue_bulk(tasks.notify_warehouse, [((oid,), {}) for oid in warehouse_ids])
    result = tasks.notify_warehouse.enqueue(order_ids[0])  # the one whose result we check
    specials.async_id, specials.async_order = result.id, "ORD-000000"
    show("notify_warehouse         (async def: asyncio.sleep + async ORM)", plan.warehouse)

    specials.context_id = tasks.audit_attempt.enqueue("checked by run_demo").id
    show("audit_attempt            (takes_context=True, returns context.attempt)", 1)

    run_after = now() + timedelta(seconds=DEFER_SECONDS)
    result = tasks.send_cart_reminder.using(run_after=run_after).enqueue(customer_ids[0])
    specials.deferred_id, specials.deferred_run_after = result.id, run_after
    show(f"send_cart_reminder       (deferred: run_after = now + {DEFER_SECONDS} s)", 1)

    last = order_ids[plan.orders - 1]
    specials.priority_id = tasks.refund_order.using(priority=50).enqueue(last).id
    specials.priority_order = f"ORD-{plan.orders - 1:06d}"
    show("refund_order             (priority=50, enqueued last)", 1)
    return specials


# --- the worker and the live display ------------------------------------------------------------------


def status_counts() -> dict[str, int]:
    from django.db.models import Count
    from fasttasks.models import TaskRecord

    rows = TaskRecord.objects.order_by().values_list("status").annotate(n=Count("id"))
    counts = {"READY": 0, "RUNNING": 0, "SUCCESSFUL": 0, "FAILED": 0}
    counts.update({status: n for status, n in rows})
    return counts


def ready_not_due() -> list[datetime]:
    """run_after of READY tasks that are not due yet (what --batch leaves behind by design)."""
    from fasttasks.models import TaskRecord

    return list(
        TaskRecord.objects.filter(status="READY", run_after__gt=now()).values_list("run_after", flat=True)
    )


def run_worker_pass(plan: Plan, concurrency: int, label: str, output: WorkerOutput) -> tuple[float, int, int]:
    from django.db import connection

    cmd = [
        str(WORKER),
        "--batch",
        "--settings",
        "demo.settings",
        "--pythonpath",
        str(EXAMPLES_DIR),
        "--queues",
        "*",
        "--concurrency",
        str(concurrency),
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(EXAMPLES_DIR), env.get("PYTHONPATH")]))
    print(f"$ {shlex.join(cmd)}", flush=True)

    before = status_counts()
    finished_before = before["SUCCESSFUL"] + before["FAILED"]
    lines: queue.Queue[str | None] = queue.Queue()
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=EXAMPLES_DIR,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    reader = threading.Thread(target=pump, args=(proc.stdout, lines), daemon=True)
    reader.start()

    display = Progress(plan.total, label)
    timeout = max(300.0, plan.total / 20)  # far beyond any healthy run; a hung worker fails the demo
    last_plain = 0.0
    try:
        while True:
            exited = proc.poll() is not None
            drain_lines(lines, display, output)
            counts = status_counts()
            elapsed = time.perf_counter() - started
            if TTY:
                display.draw(counts, elapsed)
            elif elapsed - last_plain >= 2.0 and not exited:
                last_plain = elapsed
                print(display.line(counts, elapsed), flush=True)
            if exited:
                break
            if elapsed > timeout:
                display.clear()
                print(f"{label}: the worker is still running after {timeout:.0f} s; stopping it (SIGTERM)")
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                continue
            time.sleep(0.5)
    except BaseException as exc:
        # Never leave the worker behind: a worker still holding the database when the next demo run
        # recreates the file would write into the new one.
        display.clear()
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"demo failed ({exc!r})"
        print(f"{reason}: stopping the worker (SIGTERM) ...", flush=True)
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    wall = time.perf_counter() - started
    reader.join(timeout=5)
    drain_lines(lines, display, output)
    display.clear()
    if output.hidden:
        print(
            f"  worker | ({output.hidden:,} more per-task failure log records like the one above not shown)"
        )
        output.hidden = 0
    connection.close()
    counts = status_counts()
    print(display.line(counts, wall), flush=True)
    finished = counts["SUCCESSFUL"] + counts["FAILED"] - finished_before
    code = proc.returncode
    print(
        f"{label}: worker exited with code {code} after {wall:.2f} s; {finished:,} tasks finished", flush=True
    )
    return wall, code, finished


def pump(stream: Any, lines: queue.Queue[str | None]) -> None:
    for raw in iter(stream.readline, b""):
        lines.put(raw.decode(errors="replace").rstrip())
    lines.put(None)


def drain_lines(lines: queue.Queue[str | None], display: Progress, output: WorkerOutput) -> None:
    while True:
        try:
            line = lines.get_nowait()
        except queue.Empty:
            return
        if line is not None and output.feed(line):
            display.clear()
            print(f"  worker | {line}", flush=True)


class WorkerOutput:
    """Shows the worker's banner and summaries; of Django's per-task failure logs, only the first.

    ``django.tasks`` logs every failed task at ERROR with its traceback; with a few hundred failing on
    purpose that would bury everything else. Everything goes to ``worker.log`` in the scratch directory.
    """

    RECORD = re.compile(
        r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]\d+ (?P<level>[A-Z]+) (?P<name>[\w.]+): (?P<msg>.*)"
    )
    TASK_LOGGERS = ("django.tasks", "django_tasks")

    def __init__(self, path: Path) -> None:
        self.file = path.open("a", encoding="utf-8")
        self.hiding = False
        self.shown_task_records = 0
        self.hidden = 0

    def feed(self, line: str) -> bool:
        """Records the line; returns whether to show it."""
        self.file.write(line + "\n")
        record = self.RECORD.match(line)
        if record is None:
            return not self.hiding  # a continuation line (traceback) of the current record
        per_task = record["name"] in self.TASK_LOGGERS and record["msg"].startswith("Task id=")
        if per_task and self.shown_task_records >= 1:
            self.hiding = True
            self.hidden += 1
            return False
        self.shown_task_records += per_task
        self.hiding = False
        return True

    def close(self) -> None:
        self.file.close()


class Progress:
    def __init__(self, total: int, label: str) -> None:
        self.total = total
        self.label = label
        self.drawn = False

    def line(self, c: dict[str, int], elapsed: float) -> str:
        done = c["SUCCESSFUL"] + c["FAILED"]
        rate = done / elapsed if elapsed > 0 else 0.0
        return (
            f"{self.label} {elapsed:6.1f} s  done {done:>7,}/{self.total:,} ({100 * done / self.total:5.1f}%)"
            f"  successful {c['SUCCESSFUL']:,}  failed {c['FAILED']:,}  running {c['RUNNING']:,}"
            f"  ready {c['READY']:,}  ~{rate:,.0f} tasks/s"
        )

    def draw(self, c: dict[str, int], elapsed: float) -> None:
        done = c["SUCCESSFUL"] + c["FAILED"]
        width = 24
        filled = int(width * done / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        sys.stdout.write(f"\r[{bar}] {self.line(c, elapsed)}\033[K")
        sys.stdout.flush()
        self.drawn = True

    def clear(self) -> None:
        if self.drawn:
            sys.stdout.write("\r\033[K")
            sys.stdout.flush()
            self.drawn = False


# --- the report ---------------------------------------------------------------------------------------


def count_emails(email_dir: Path) -> dict[str, int]:
    separator = b"-" * 79 + b"\n"
    counts = {"total": 0, "confirmations": 0, "reminders": 0, "refunds": 0}
    for path in email_dir.glob("*.log"):
        data = path.read_bytes()
        counts["total"] += data.count(separator)
        counts["confirmations"] += data.count(b"\nSubject: Your order ")
        counts["reminders"] += data.count(b"\nSubject: You left something in your cart")
        counts["refunds"] += data.count(b"\nSubject: Refund for order ")
    return counts


def report(plan: Plan, sp: Specials, passes: list[tuple[float, int, int]], email_dir: Path) -> int:
    from fasttasks.models import TaskRecord
    from shop import tasks
    from shop.models import ImportedRow, Order

    checks = Checks()
    section("What happened")
    for i, (_, code, _) in enumerate(passes, 1):
        checks.add(f"worker pass {i} exited 0", code == 0, f"exit code {code}")
    counts = status_counts()
    print("tasks by status:  " + "   ".join(f"{status} {n:,}" for status, n in counts.items()))
    wall, _, finished = passes[0]
    print(
        f"worker pass 1:    {finished:,} tasks in {wall:.2f} s = {finished / wall:,.0f} tasks/s "
        "(worker process start to exit, start-up included)"
    )
    if len(passes) > 1:
        print(f"worker pass 2:    {passes[1][2]:,} task(s), after waiting for the deferred task to be due")
    checks.add("no task left READY or RUNNING", counts["READY"] == 0 and counts["RUNNING"] == 0, str(counts))
    checks.add(
        f"{plan.invalid_coupons:,} FAILED (the invalid coupons), the rest SUCCESSFUL",
        counts["FAILED"] == plan.invalid_coupons
        and counts["SUCCESSFUL"] == plan.total - plan.invalid_coupons,
        f"FAILED {counts['FAILED']:,}, SUCCESSFUL {counts['SUCCESSFUL']:,}",
    )
    failed_paths = set(TaskRecord.objects.filter(status="FAILED").values_list("task_path", flat=True))
    checks.add(
        "every failure is apply_coupon", failed_paths <= {"shop.tasks.apply_coupon"}, str(failed_paths)
    )

    emails = count_emails(email_dir)
    print(
        f"emails sent:      {emails['total']:,} ({emails['confirmations']:,} order confirmations, "
        f"{emails['reminders']} cart reminder, {emails['refunds']} refund notice) via {email_dir}"
    )
    checks.add(f"{plan.emails:,} emails sent", emails["total"] == plan.emails, f"{emails['total']:,} sent")
    confirmed = Order.objects.filter(confirmation_sent_at__isnull=False).count()
    checks.add("every confirmed order marked", confirmed == plan.confirmations, f"{confirmed:,} marked")
    rows = ImportedRow.objects.count()
    print(f"CSV rows imported: {rows:,} from {plan.csv_chunks:,} chunks")
    checks.add("CSV rows imported", rows == plan.csv_chunks * CSV_LINES_PER_CHUNK, f"{rows:,} rows")
    notified = Order.objects.filter(warehouse_notified=True).count()
    checks.add("warehouse notified (async tasks)", notified == plan.warehouse, f"{notified:,} orders")

    section("One failed task, read back with get_result()")
    failed = tasks.apply_coupon.get_result(sp.failed_id)
    print(f"apply_coupon{tuple(failed.args)} -> {failed.status}")
    if failed.errors:
        error = failed.errors[-1]
        print(f"  exception: {error.exception_class_path}")
        print("  traceback (last lines):")
        for line in error.traceback.rstrip().splitlines()[-3:]:
            print(f"    {line}")
        checks.add(
            "failed task's error is builtins.ValueError",
            error.exception_class_path == "builtins.ValueError" and "Invalid coupon code" in error.traceback,
            error.exception_class_path,
        )
    else:
        checks.add("failed task has an error recorded", False, f"status {failed.status}, no errors")

    section("The special tasks, read back with get_result()")
    check_special(
        checks,
        "async task (notify_warehouse)",
        lambda: tasks.notify_warehouse.get_result(sp.async_id),
        lambda r: r.return_value == {"order": sp.async_order, "warehouse_notified": True},
    )
    check_special(
        checks,
        "takes_context (audit_attempt)",
        lambda: tasks.audit_attempt.get_result(sp.context_id),
        lambda r: r.return_value == {"attempt": 1, "task_id": sp.context_id, "note": "checked by run_demo"},
    )
    deferred = check_special(
        checks,
        "deferred (send_cart_reminder)",
        lambda: tasks.send_cart_reminder.get_result(sp.deferred_id),
        lambda r: r.started_at is not None and r.started_at >= sp.deferred_run_after,
    )
    if deferred is not None and deferred.started_at is not None and sp.deferred_run_after is not None:
        late = (deferred.started_at - sp.deferred_run_after).total_seconds()
        print(
            f"    run_after {sp.deferred_run_after:%H:%M:%S.%f}, started {deferred.started_at:%H:%M:%S.%f}"
            f" ({late:+.3f} s)"
        )
    urgent = check_special(
        checks,
        "high priority (refund_order, priority=50)",
        lambda: tasks.refund_order.get_result(sp.priority_id),
        lambda r: r.return_value is not None and r.return_value.get("order") == sp.priority_order,
    )
    if urgent is not None and urgent.started_at is not None:
        earlier = TaskRecord.objects.filter(started_at__lt=urgent.started_at).count()
        limit = max(50, plan.total // 100)
        print(f"    enqueued last of {plan.total:,}; {earlier:,} task(s) started before it")
        checks.add(
            f"priority task started among the first {limit:,}", earlier < limit, f"{earlier:,} started before"
        )

    section("Checks")
    for name, ok, detail in checks.results:
        mark = color("ok  ", True) if ok else color("FAIL", False)
        print(f"  {mark} {name}" + ("" if ok else f"  ({detail})"))
    print()
    if checks.ok:
        print(color(bold(f"Demo OK: {plan.total:,} tasks ran, results as expected."), True))
        return 0
    print(color(bold("Demo FAILED: see the checks above."), False))
    return 1


def check_special(checks: Checks, name: str, fetch: Callable[[], Any], valid: Callable[[Any], bool]) -> Any:
    try:
        result = fetch()
    except Exception as exc:
        checks.add(name, False, f"get_result raised {exc!r}")
        print(f"  {name}: get_result raised {exc!r}")
        return None
    value: Any = result.return_value if result.status == "SUCCESSFUL" else None
    print(f"  {name}: {result.status} after {result.attempts} attempt(s) -> {value!r}")
    if result.errors:
        print(f"    error: {result.errors[-1].exception_class_path}")
    checks.add(
        name, result.status == "SUCCESSFUL" and valid(result), f"status {result.status}, value {value!r}"
    )
    return result


if __name__ == "__main__":
    sys.exit(main())
