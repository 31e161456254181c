"""The worker as users run it: a separate process started with ``fasttasks-worker`` or ``manage.py``,
stopped with real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connections
from fasttasks.compat import TaskResultStatus
from fasttasks.models import TaskRecord

from tests import worker_tasks

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120), pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    # The worker must use the database pytest-django created for this test run.
    env["FASTTASKS_TEST_DB_NAME"] = str(connections["default"].settings_dict["NAME"])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def worker_command(*flags: str) -> list[str]:
    return [sys.executable, "-m", "fasttasks.cli", "--worker-id", "process-worker", *flags]


def run_to_end(command: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=REPO, env=worker_env(), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def start_worker() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(*flags: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            worker_command(*flags),
            cwd=REPO,
            env=worker_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_for(condition: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_cli_batch_prints_banner_and_summary(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    results = [worker_tasks.record.enqueue(str(marks), str(i)) for i in range(20)]
    failing = worker_tasks.raises_value_error.enqueue("nope")

    finished = run_to_end(worker_command("--batch", "--queues", "*", "--concurrency", "3"))

    assert finished.returncode == 0, finished.stderr
    assert "fasttasks" in finished.stderr and "concurrency 3" in finished.stderr
    assert "queues *" in finished.stderr
    assert "21 tasks finished (20 successful, 1 failed" in finished.stderr
    assert sorted(lines(marks), key=int) == [str(i) for i in range(20)]
    for result in results:
        result.refresh()
        assert result.status == TaskResultStatus.SUCCESSFUL
        assert result.worker_ids == ["process-worker"]
    failing.refresh()
    assert failing.status == TaskResultStatus.FAILED
    # Django's own receiver logs failed tasks at ERROR, with the traceback.
    assert "ValueError: nope" in finished.stderr


def test_manage_py_command_takes_the_same_flags(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    worker_tasks.record_email.enqueue(str(marks), "mail")
    worker_tasks.record.enqueue(str(marks), "default")
    command = [sys.executable, "-m", "django", "fasttasks_worker", "--batch", "--queues", "emails", "-v", "2"]
    finished = run_to_end(command)
    assert finished.returncode == 0, finished.stderr
    assert lines(marks) == ["mail"]
    # -v 2 lets Django's per-task log lines through.
    assert "state=RUNNING" in finished.stderr or "RUNNING" in finished.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--concurrency", "0"], "must be at least 1"),
        (["--queues", "*,emails"], "cannot be combined"),
        (["--backend", "nope"], "nope"),
        (["--worker-id", "x" * 65], "1 to 64 characters"),
        (["--interval", "nan"], "finite"),
    ],
)
def test_bad_flags_fail_clearly(flags: list[str], message: str) -> None:
    finished = run_to_end(worker_command("--batch", *flags))
    assert finished.returncode == 2
    assert message in finished.stderr


def test_idle_worker_wakes_up_for_new_tasks(
    tmp_path: Path, start_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    marks = tmp_path / "marks"
    # A long poll interval: only a wake-up (NOTIFY / data_version) makes this fast.
    process = start_worker("--interval", "30")
    time.sleep(1.5)  # let it start, find nothing, and go idle
    started = time.monotonic()
    worker_tasks.record.enqueue(str(marks), "woken")
    wait_for(lambda: lines(marks) == ["woken"], timeout=10, what="the idle worker to run the new task")
    assert time.monotonic() - started < 5
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


def test_sigterm_finishes_running_tasks_and_hands_back_the_rest(
    tmp_path: Path, start_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    marks = tmp_path / "marks"
    slow = [worker_tasks.sleep_then_record.enqueue(str(marks), f"slow{i}", 1.5) for i in range(2)]
    waiting = [worker_tasks.record.using(priority=-10).enqueue(str(marks), f"quick{i}") for i in range(10)]
    process = start_worker("--concurrency", "2")
    wait_for(
        lambda: sum(line.startswith("start") for line in lines(marks)) == 2, what="both slow tasks to start"
    )

    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)

    assert process.returncode == 0, output
    assert sorted(lines(marks)) == ["end slow0", "end slow1", "start slow0", "start slow1"]
    for result in slow:
        result.refresh()
        assert result.status == TaskResultStatus.SUCCESSFUL
    for result in waiting:
        result.refresh()
        assert result.status == TaskResultStatus.READY
        assert result.attempts == 0
    assert "stopping" in output


def test_claimed_but_unstarted_tasks_are_handed_back(
    tmp_path: Path, start_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    marks = tmp_path / "marks"
    # One task thread busy; with concurrency 1 nothing else is claimed, so everything else stays READY
    # and nothing is lost or half-claimed when the worker stops.
    worker_tasks.sleep_then_record.enqueue(str(marks), "busy", 1.0)
    others = [worker_tasks.record.enqueue(str(marks), f"other{i}") for i in range(5)]
    process = start_worker("--concurrency", "1")
    wait_for(lambda: "start busy" in lines(marks), what="the slow task to start")
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0
    statuses = {r.id: TaskRecord.objects.get(id=r.id).status for r in others}
    done = [rid for rid, status in statuses.items() if status == "SUCCESSFUL"]
    ready = [rid for rid, status in statuses.items() if status == "READY"]
    assert len(done) + len(ready) == 5
    assert TaskRecord.objects.filter(status="RUNNING").count() == 0


def test_second_signal_exits_at_once(
    tmp_path: Path, start_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    marks = tmp_path / "marks"
    worker_tasks.sleep_then_record.enqueue(str(marks), "long", 60)
    process = start_worker("--concurrency", "1")
    wait_for(lambda: "start long" in lines(marks), what="the long task to start")
    process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=15)
    assert time.monotonic() - started < 10
    assert process.returncode == 1, output
    assert "exiting now" in output


def test_worker_survives_its_postgres_connections_being_killed(
    tmp_path: Path, start_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    connection = connections["default"]
    if connection.vendor != "postgresql":
        pytest.skip("pg_terminate_backend is PostgreSQL only")
    marks = tmp_path / "marks"
    process = start_worker("--interval", "0.2")
    worker_tasks.record.enqueue(str(marks), "before")
    wait_for(lambda: lines(marks) == ["before"], what="the first task")

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'fasttasks-worker' AND datname = current_database()"
        )
        (killed,) = cursor.fetchone()
    assert killed >= 1  # the store's pool and the LISTEN connection

    results = [worker_tasks.record.enqueue(str(marks), f"after{i}") for i in range(20)]
    wait_for(lambda: len(lines(marks)) == 21, timeout=30, what="the tasks enqueued after the kill")
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    for result in results:
        result.refresh()
        assert result.status == TaskResultStatus.SUCCESSFUL


def test_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    env = worker_env()
    if connections["default"].vendor == "postgresql":
        env["FASTTASKS_TEST_DB_NAME"] = "fasttasks_no_such_database"
        expected = "fasttasks_no_such_database"
    else:
        env["FASTTASKS_TEST_DB_NAME"] = str(tmp_path / "missing-dir" / "queue.sqlite3")
        expected = "unable to open database file"
    finished = subprocess.run(
        worker_command("--batch"), cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert finished.returncode == 1, finished.stderr
    assert "fasttasks-worker: error: the worker stopped" in finished.stderr
    assert expected in finished.stderr
    assert "Traceback" not in finished.stderr


def test_polling_worker_without_listen_notify(
    tmp_path: Path, start_worker: Callable[..., subprocess.Popen[str]]
) -> None:
    marks = tmp_path / "marks"
    process = start_worker("--backend", "polling", "--queues", "*", "--interval", "0.3")
    time.sleep(1.0)  # idle by now
    worker_tasks.record.using(backend="polling").enqueue(str(marks), "polled")
    wait_for(lambda: lines(marks) == ["polled"], timeout=10, what="the polling worker to run the task")
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "polling every 0.3s" in output


def test_a_database_without_the_task_table_is_a_setup_error(tmp_path: Path) -> None:
    env = worker_env()
    if connections["default"].vendor == "sqlite":
        env["FASTTASKS_TEST_DB_NAME"] = str(tmp_path / "not-migrated.sqlite3")
    else:
        env["FASTTASKS_TEST_DB_NAME"] = "postgres"  # exists, and holds no fasttasks table
    done = subprocess.run(
        worker_command("--batch"), cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "fasttasks_task" in done.stderr and "migrate" in done.stderr


# -- crash rescue ------------------------------------------------------------------------------------

FAST_RESCUE = ("--heartbeat", "0.2", "--dead-after", "1")


def _rows(**filters: Any) -> list[TaskRecord]:
    return list(TaskRecord.objects.filter(**filters).order_by("id"))


@pytest.mark.parametrize(
    "survivor_id",
    [
        pytest.param("survivor", id="another-worker-rescues-after-dead-after"),
        pytest.param("process-worker", id="restart-under-the-same-id-rescues-at-start"),
    ],
)
def test_tasks_of_a_killed_worker_run_again_elsewhere(
    tmp_path: Path, start_worker: Callable[..., subprocess.Popen[str]], survivor_id: str
) -> None:
    marks = tmp_path / "marks"
    results = [worker_tasks.sleep_then_record.enqueue(str(marks), f"t{i}", 1.0) for i in range(4)]
    doomed = start_worker("--concurrency", "2", "--prefetch", "0", *FAST_RESCUE)
    wait_for(lambda: sum(line.startswith("start") for line in lines(marks)) == 2, what="two tasks to start")
    doomed.kill()  # SIGKILL: no chance to hand anything back
    doomed.wait(timeout=10)
    killed_at = time.monotonic()
    orphans = [row.id for row in _rows(status="RUNNING")]
    assert len(orphans) == 2

    survivor = start_worker("--concurrency", "2", "--worker-id", survivor_id, *FAST_RESCUE)
    wait_for(
        lambda: TaskRecord.objects.filter(status="SUCCESSFUL").count() == 4, timeout=60, what="all tasks"
    )
    rescued_within = time.monotonic() - killed_at
    survivor.send_signal(signal.SIGTERM)
    assert survivor.wait(timeout=30) == 0

    for result in results:
        result.refresh()
        assert result.status == TaskResultStatus.SUCCESSFUL
    for row in _rows(id__in=orphans):
        assert (row.attempts, row.crashes) == (2, 1)
        assert [e["exception_class_path"] for e in row.errors] == ["fasttasks.exceptions.WorkerCrashed"]
        assert row.worker_ids == ["process-worker", survivor_id]
    # Every task ran to its end once more than it was killed: the two orphans twice, the others once.
    assert sorted(line for line in lines(marks) if line.startswith("end")) == [f"end t{i}" for i in range(4)]
    # Rescued after --dead-after (1 s) plus a heartbeat round or two, then 1 s of work each.
    assert rescued_within < 15
    # A clean exit removes the worker's registration and lease.
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM fasttasks_worker")
        assert cursor.fetchone() == (0,)


@pytest.mark.parametrize(
    ("how", "exit_code"),
    [("exit", 13), ("segfault", -signal.SIGSEGV), ("sigkill", -signal.SIGKILL)],
)
def test_a_task_that_keeps_killing_its_worker_ends_failed(
    tmp_path: Path, start_worker: Callable[..., subprocess.Popen[str]], how: str, exit_code: int
) -> None:
    marks = tmp_path / "marks"
    poison = worker_tasks.kill_own_process.enqueue(str(marks), how)
    for crash in range(1, 3):
        # Each worker picks the poison task up (after the rescue of the previous one) and dies with it.
        victim = start_worker("--max-crashes", "2", *FAST_RESCUE)
        assert victim.wait(timeout=30) == exit_code
        assert lines(marks).count("poison started") == crash
    survivor = start_worker("--max-crashes", "2", *FAST_RESCUE)
    wait_for(lambda: poison.refresh() or poison.status == TaskResultStatus.FAILED, timeout=30, what="FAILED")
    survivor.send_signal(signal.SIGTERM)
    assert survivor.wait(timeout=30) == 0
    assert lines(marks).count("poison started") == 2
    row = TaskRecord.objects.get(pk=poison.id)
    assert (row.attempts, row.crashes) == (2, 2)
    assert len(poison.errors) == 2
    assert all(error.exception_class_path == "fasttasks.exceptions.WorkerCrashed" for error in poison.errors)
