"""Nothing lost, nothing run twice without a crash: graceful stops with ``--grace``, the ``--processes``
supervisor, SIGKILLs during a drain (chaos), and a paused worker whose late results must be refused.

Real worker processes and real signals. Each execution of ``worker_tasks.log_execution`` is a row in
``EXECUTION_TABLE``, written by the task itself, so the tests count executions per task.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from django.db import connection, connections
from fasttasks.backend import enqueue_many
from fasttasks.compat import TaskResultStatus
from fasttasks.models import TaskRecord

from tests import worker_tasks
from tests.test_worker_process import REPO, lines, wait_for, worker_command, worker_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(240), pytest.mark.slow]

FAST_RESCUE = ("--heartbeat", "0.2", "--dead-after", "1")
CRASHED = "fasttasks.exceptions.WorkerCrashed"


@dataclass
class Started:
    process: subprocess.Popen[str]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., Started]]:
    """Starts ``fasttasks-worker`` with its output in a file (a pipe nobody reads would fill up and
    block a busy worker)."""
    started: list[Started] = []

    def start(*flags: str, worker_id: str = "process-worker", **env_overrides: str) -> Started:
        log = tmp_path / f"worker-{len(started)}.log"
        env = {**worker_env(), "FASTTASKS_TEST_CONN_MAX_AGE": "60", **env_overrides}
        command = [*worker_command(*flags)]
        command[command.index("--worker-id") + 1] = worker_id
        with log.open("w") as output:
            process = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT, text=True
            )
        started.append(Started(process, log))
        return started[-1]

    yield start
    for worker in started:
        for pid in child_pids(worker.process.pid):
            _kill_quietly(pid)
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait()


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def child_pids(parent: int) -> list[int]:
    """Live child processes of ``parent`` (from /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == parent and fields[0] != "Z":
            children.append(int(entry.name))
    return sorted(children)


def worker_id_of(pid: int) -> str:
    arguments = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    return arguments[arguments.index("--worker-id") + 1]


@pytest.fixture
def executions() -> Iterator[Callable[[], list[tuple[str, int, int, int, float]]]]:
    """Creates the executions table; yields a reader of (result_id, number, attempt, pid, started_at)."""
    table = worker_tasks.EXECUTION_TABLE
    key = "bigserial PRIMARY KEY" if connection.vendor == "postgresql" else "INTEGER PRIMARY KEY"
    real = "double precision" if connection.vendor == "postgresql" else "REAL"
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {table}")
        cursor.execute(
            f"CREATE TABLE {table} (id {key}, result_id varchar(64) NOT NULL, number integer NOT NULL, "
            f"attempt integer NOT NULL, pid integer NOT NULL, started_at {real} NOT NULL)"
        )

    def read() -> list[tuple[str, int, int, int, float]]:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT result_id, number, attempt, pid, started_at FROM {table} ORDER BY id")
            return [tuple(row) for row in cursor.fetchall()]  # type: ignore[misc]

    yield read
    connections.close_all()
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {table}")


def execution_count() -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {worker_tasks.EXECUTION_TABLE}")
        return int(cursor.fetchone()[0])


def enqueue_logged(count: int, seconds: float) -> list[str]:
    results = enqueue_many(worker_tasks.log_execution, [((number, seconds), {}) for number in range(count)])
    return [result.id for result in results]


def statuses() -> Counter[str]:
    return Counter(TaskRecord.objects.values_list("status", flat=True))


# -- graceful stop -----------------------------------------------------------------------------------


@pytest.mark.parametrize("processes", [1, 2])
def test_sigterm_during_a_drain_loses_nothing_and_runs_nothing_twice(
    start_worker: Callable[..., Started],
    executions: Callable[[], list[tuple[str, int, int, int, float]]],
    processes: int,
) -> None:
    ids = enqueue_logged(2000, 0.002)
    worker = start_worker("--concurrency", "4", "--processes", str(processes))
    wait_for(lambda: execution_count() >= 300, timeout=60, what="the drain to be under way")
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=60) == 0, worker.output()

    runs = Counter(row[0] for row in executions())
    assert max(runs.values()) == 1, "a task ran twice"
    by_status = dict(TaskRecord.objects.values_list("id", "status"))
    assert "RUNNING" not in by_status.values()
    # Finished exactly when run; everything else is back to READY, untouched.
    assert {rid for rid, status in by_status.items() if status == "SUCCESSFUL"} == set(runs)
    assert all(by_status[rid] == "READY" for rid in ids if rid not in runs)
    assert 300 <= len(runs) < 2000
    assert TaskRecord.objects.filter(status="READY").exclude(attempts=0).count() == 0

    # Another worker takes the rest: every task ran exactly once in all.
    rest = start_worker("--batch")
    assert rest.process.wait(timeout=120) == 0, rest.output()
    assert statuses() == Counter({"SUCCESSFUL": 2000})
    assert Counter(row[0] for row in executions()) == Counter({rid: 1 for rid in ids})


def test_grace_period_ends_the_stop_and_the_running_task_is_rescued(
    tmp_path: Path, start_worker: Callable[..., Started]
) -> None:
    marks = tmp_path / "marks"
    result = worker_tasks.sleep_then_record.enqueue(str(marks), "long", 3.0)
    first = start_worker("--concurrency", "1", "--grace", "0.5", *FAST_RESCUE, worker_id="first")
    wait_for(lambda: "start long" in lines(marks), what="the task to start")
    signalled = time.monotonic()
    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(timeout=30) == 1, first.output()
    assert time.monotonic() - signalled < 3.0  # 0.5 s of grace, not the task's 3 s
    assert "grace period of 0.5s is over" in first.output()
    assert lines(marks) == ["start long"]

    # The worker deregistered as it left, so the next worker's start-up rescue takes the task at once.
    second = start_worker("--concurrency", "1", *FAST_RESCUE, worker_id="second")
    wait_for(lambda: result.refresh() or result.status == TaskResultStatus.SUCCESSFUL, what="the rerun")
    second.process.send_signal(signal.SIGTERM)
    assert second.process.wait(timeout=30) == 0, second.output()
    assert lines(marks) == ["start long", "start long", "end long"]
    row = TaskRecord.objects.get(pk=result.id)
    assert (row.attempts, row.crashes, row.worker_ids) == (2, 1, ["first", "second"])
    assert [error["exception_class_path"] for error in row.errors] == [CRASHED]


# -- the --processes supervisor ----------------------------------------------------------------------


def wait_for_children(worker: Started, count: int, exclude: tuple[int, ...] = ()) -> list[int]:
    wait_for(
        lambda: len([pid for pid in child_pids(worker.process.pid) if pid not in exclude]) == count,
        timeout=30,
        what=f"{count} worker processes",
    )
    return child_pids(worker.process.pid)


def test_supervisor_runs_processes_and_restarts_a_killed_one(
    tmp_path: Path, start_worker: Callable[..., Started]
) -> None:
    supervisor = start_worker("--processes", "2", "--concurrency", "2", worker_id="sup")
    first, second = wait_for_children(supervisor, 2)
    ids = {first: worker_id_of(first), second: worker_id_of(second)}
    assert set(ids.values()) == {"sup-1", "sup-2"}

    os.kill(first, signal.SIGKILL)
    replacement = [pid for pid in wait_for_children(supervisor, 2, exclude=(first,)) if pid != second]
    assert len(replacement) == 1 and replacement[0] != first
    assert worker_id_of(replacement[0]) == ids[first]  # same slot, same id

    # Both processes run tasks.
    marks = tmp_path / "marks"
    results = [worker_tasks.sleep_then_record.enqueue(str(marks), f"t{i}", 0.3) for i in range(8)]
    wait_for(lambda: TaskRecord.objects.filter(status="SUCCESSFUL").count() == 8, what="the tasks")
    assert all(result.refresh() or result.status == TaskResultStatus.SUCCESSFUL for result in results)
    assert len({tuple(result.worker_ids) for result in results}) == 2

    supervisor.process.send_signal(signal.SIGTERM)
    assert supervisor.process.wait(timeout=30) == 0, supervisor.output()
    assert child_pids(supervisor.process.pid) == []
    output = supervisor.output()
    assert f"worker process {ids[first]} was killed by SIGKILL" in output and "restarting it in" in output


def test_manage_py_runs_processes_that_import_the_project_like_it(tmp_path: Path) -> None:
    """Run from elsewhere, the project importable only through --pythonpath: the worker processes
    must find it the same way."""
    marks = tmp_path / "marks"
    for number in range(20):
        worker_tasks.record.enqueue(str(marks), f"t{number}")
    command = [
        *("python", "-m", "django", "fasttasks_worker", "--pythonpath", str(REPO)),
        *("--settings", "tests.settings", "--processes", "2", "--batch"),
    ]
    command[0] = sys.executable
    env = {**worker_env(), "PYTHONPATH": ""}
    env.pop("DJANGO_SETTINGS_MODULE")
    finished = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert sorted(lines(marks)) == sorted(f"t{number}" for number in range(20))
    assert statuses() == Counter({"SUCCESSFUL": 20})


def test_supervisor_backs_off_a_crash_loop(start_worker: Callable[..., Started], tmp_path: Path) -> None:
    # A database that cannot be reached makes every worker process exit 1 right after it starts.
    unreachable = (
        "fasttasks_no_such_database"
        if connection.vendor == "postgresql"
        else str(tmp_path / "missing-dir" / "queue.sqlite3")
    )
    supervisor = start_worker("--processes", "2", FASTTASKS_TEST_DB_NAME=unreachable)
    wait_for(
        lambda: supervisor.output().count("restarting it in 2.0s") == 2,
        timeout=60,
        what="both processes to be on their third restart",
    )
    supervisor.process.send_signal(signal.SIGTERM)
    # The stop itself went well: the crashes were reported (logged) as they happened.
    assert supervisor.process.wait(timeout=30) == 0
    delays: dict[str, list[float]] = defaultdict(list)
    for line in supervisor.output().splitlines():
        if "restarting it in" in line:
            slot = line.split("worker process ")[1].split()[0]
            delays[slot].append(float(line.split("restarting it in ")[1].split("s")[0]))
    # Each slot waits 0.5, 1, 2 (then 4...) s before its restarts: doubling, not a spin.
    assert len(delays) == 2
    for waited in delays.values():
        assert len(waited) >= 3 and waited == [0.5 * 2**k for k in range(len(waited))], delays


def test_supervisor_stops_on_a_setup_error(start_worker: Callable[..., Started], tmp_path: Path) -> None:
    not_migrated = "postgres" if connection.vendor == "postgresql" else str(tmp_path / "not-migrated.sqlite3")
    supervisor = start_worker("--processes", "2", FASTTASKS_TEST_DB_NAME=not_migrated)
    assert supervisor.process.wait(timeout=60) == 2
    output = supervisor.output()
    assert "setup error" in output and "migrate" in output
    assert "restarting" not in output


def test_workers_stop_when_their_supervisor_is_killed(start_worker: Callable[..., Started]) -> None:
    supervisor = start_worker("--processes", "2")
    children = wait_for_children(supervisor, 2)
    supervisor.process.kill()
    supervisor.process.wait()

    def gone() -> bool:
        return not any(Path(f"/proc/{pid}").exists() and _not_zombie(pid) for pid in children)

    wait_for(gone, timeout=30, what="the orphaned workers to stop")
    # They stopped gracefully (SIGTERM), so they deregistered.
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM fasttasks_worker")
        assert cursor.fetchone() == (0,)


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# -- chaos ---------------------------------------------------------------------------------------------


def test_chaos_drain_with_sigkills_loses_nothing(
    start_worker: Callable[..., Started],
    executions: Callable[[], list[tuple[str, int, int, int, float]]],
) -> None:
    """10,000 tasks, 2 supervisors x 2 processes at default timings; 5 SIGKILLs of a random worker
    process during the drain (each restarted by its supervisor)."""
    tasks, concurrency, kills = 10_000, 8, 5
    ids = enqueue_logged(tasks, 0.03)
    supervisors = [
        start_worker("--processes", "2", "--concurrency", str(concurrency), worker_id=name)
        for name in ("chaos-a", "chaos-b")
    ]
    for supervisor in supervisors:
        wait_for_children(supervisor, 2)
    chooser = random.Random(os.environ.get("FASTTASKS_CHAOS_SEED", "4"))
    killed: list[tuple[str, int, float]] = []  # (worker id, pid, when: wall clock, as started_at)
    in_flight: list[int] = []
    wait_for(lambda: execution_count() >= 500, timeout=60, what="the drain to be under way")
    first_seen: dict[int, float] = {}
    while len(killed) < kills:
        now = time.monotonic()
        for supervisor in supervisors:
            for pid in child_pids(supervisor.process.pid):
                first_seen.setdefault(pid, now)
        # A process that has been up a while is running tasks; one that has just been restarted may
        # still be importing Django, and killing it would test nothing.
        victims = sorted(pid for pid, seen in first_seen.items() if now - seen >= 2.5 and _alive(pid))
        if not victims:
            time.sleep(0.1)
            continue
        victim = chooser.choice(victims)
        worker_id = worker_id_of(victim)
        os.kill(victim, signal.SIGKILL)
        killed.append((worker_id, victim, time.time()))
        # In flight at the kill: what the dead process held (running, or run with the result not yet
        # written, or claimed ahead). Nothing changes these rows until the rescue, a second or more later.
        in_flight.append(TaskRecord.objects.filter(status="RUNNING", worker_id=worker_id).count())
        time.sleep(1.5)
    assert execution_count() < tasks, "the drain ended before the last kill; make the tasks longer"

    wait_for(
        lambda: TaskRecord.objects.filter(status="SUCCESSFUL").count() == tasks,
        timeout=180,
        what="every task to succeed",
    )
    for supervisor in supervisors:
        supervisor.process.send_signal(signal.SIGTERM)
    for supervisor in supervisors:
        assert supervisor.process.wait(timeout=60) == 0, supervisor.output()

    assert statuses() == Counter({"SUCCESSFUL": tasks})
    rows = executions()
    runs = Counter(row[0] for row in rows)
    assert set(runs) == set(ids), "a task never ran"
    duplicates = len(rows) - tasks
    # Only tasks a killed process held run again.
    assert duplicates <= sum(in_flight), (duplicates, in_flight)
    killed_pids = {pid for _, pid, _ in killed}
    by_task: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for result_id, _number, _attempt, pid, started_at in rows:
        by_task[result_id].append((pid, started_at))
    for result_id, runs_of_task in by_task.items():
        for pid, _ in sorted(runs_of_task, key=lambda run: run[1])[:-1]:
            assert pid in killed_pids, f"{result_id} ran again though its earlier run was not killed"

    # Rescue time: from the kill of a task's worker to the task's next start elsewhere, for every
    # task rescued (those that had started, and those only claimed ahead).
    rescue_times = []
    per_kill: dict[tuple[str, float], list[tuple[float, float]]] = defaultdict(list)
    for row in TaskRecord.objects.filter(crashes__gt=0):
        for error in row.errors:
            if error["exception_class_path"] != CRASHED:
                continue
            rescued_at = datetime.fromisoformat(error["failed_at"]).timestamp()
            killed_at = max(
                when for wid, _, when in killed if wid == error["worker_id"] and when <= rescued_at
            )
            next_start = min(started for _, started in by_task[row.id] if started >= rescued_at)
            rescue_times.append(next_start - killed_at)
            per_kill[(error["worker_id"], killed_at)].append((rescued_at - killed_at, next_start - killed_at))
    assert rescue_times, "no task was rescued: the kills hit nothing"
    print(
        f"\nchaos ({connection.vendor}): {tasks} tasks, {kills} SIGKILLs, {len(rows)} executions, "
        f"{duplicates} duplicates, {sum(in_flight)} in flight at the kills {in_flight}, "
        f"{len(rescue_times)} tasks rescued, rescue time max "
        f"{max(rescue_times):.2f}s, median {sorted(rescue_times)[len(rescue_times) // 2]:.2f}s"
    )
    for (worker_id, killed_at), times in sorted(per_kill.items(), key=lambda item: item[0][1]):
        print(
            f"  kill of {worker_id} at +{killed_at - killed[0][2]:.1f}s: {len(times)} tasks rescued after "
            f"{max(rescued for rescued, _ in times):.2f}s, running again after "
            f"{max(started for _, started in times):.2f}s"
        )
    assert max(rescue_times) <= 15.0


def test_a_dead_leaders_tasks_run_elsewhere_within_15s_at_default_timings(
    start_worker: Callable[..., Started],
    executions: Callable[[], list[tuple[str, int, int, int, float]]],
) -> None:
    """The slow path, not helped by a restart under the same id: the killed worker is the leader, so
    its tasks wait for its heartbeat and its lease to run out (--dead-after 10 s, --heartbeat 2 s)."""
    enqueue_logged(24, 0.5)
    doomed = start_worker("--concurrency", "4", "--prefetch", "0", worker_id="doomed")
    wait_for(lambda: "doomed is now the maintenance leader" in doomed.output(), what="the doomed leader")
    survivor = start_worker("--concurrency", "4", "--prefetch", "0", worker_id="survivor")
    wait_for(
        lambda: Counter(row[3] for row in executions())[doomed.process.pid] >= 4,
        what="the doomed worker to run tasks",
    )
    doomed.process.kill()
    killed_at = time.time()
    doomed.process.wait()
    orphans = set(
        TaskRecord.objects.filter(status="RUNNING", worker_id="doomed").values_list("id", flat=True)
    )
    assert orphans
    wait_for(
        lambda: TaskRecord.objects.filter(status="SUCCESSFUL").count() == 24, timeout=60, what="all tasks"
    )
    survivor.process.send_signal(signal.SIGTERM)
    assert survivor.process.wait(timeout=30) == 0, survivor.output()
    rescue_times = [
        min(
            started
            for result_id, _, _, _, started in executions()
            if result_id == orphan and started > killed_at
        )
        - killed_at
        for orphan in orphans
    ]
    print(
        f"\nrescue of a dead leader's {len(orphans)} tasks at default timings ({connection.vendor}): "
        f"running again after {min(rescue_times):.2f}-{max(rescue_times):.2f}s"
    )
    assert "survivor is now the maintenance leader" in survivor.output()
    assert max(rescue_times) <= 15.0


# -- a paused worker ------------------------------------------------------------------------------------


def test_a_paused_worker_cannot_overwrite_the_rescued_attempt(
    start_worker: Callable[..., Started],
    executions: Callable[[], list[tuple[str, int, int, int, float]]],
) -> None:
    ids = enqueue_logged(2, 2.0)
    paused = start_worker("--concurrency", "2", "--prefetch", "0", *FAST_RESCUE, worker_id="paused")
    wait_for(lambda: execution_count() == 2, what="both tasks to start")
    paused.process.send_signal(signal.SIGSTOP)
    try:
        rescuer = start_worker("--concurrency", "2", *FAST_RESCUE, worker_id="rescuer")
        wait_for(
            lambda: TaskRecord.objects.filter(status="SUCCESSFUL").count() == 2,
            timeout=30,
            what="the rescuer to finish both tasks",
        )
    finally:
        paused.process.send_signal(signal.SIGCONT)
    # The paused worker wakes up, finishes its (rescued) attempts and reports them: refused.
    wait_for(lambda: "were rejected" in paused.output(), timeout=30, what="the late results to be refused")
    for worker in (paused, rescuer):
        worker.process.send_signal(signal.SIGTERM)
        assert worker.process.wait(timeout=30) == 0, worker.output()

    rescuer_pid = rescuer.process.pid
    for result_id in ids:
        row = TaskRecord.objects.get(pk=result_id)
        assert row.status == "SUCCESSFUL"
        assert row.return_value == rescuer_pid  # the newer attempt's result stands
        assert row.worker_ids == ["paused", "rescuer"]
        assert (row.attempts, row.crashes) == (2, 1)
        assert [error["exception_class_path"] for error in row.errors] == [CRASHED]
    assert Counter(pid for *_, pid, _ in executions()) == Counter({paused.process.pid: 2, rescuer_pid: 2})
    assert "taken for dead" in paused.output()
