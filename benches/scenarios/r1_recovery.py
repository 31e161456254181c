"""R1: database faults under a steady drain (issue 4): is the worker back to full speed, and lost nothing?

One worker process drains pre-enqueued ``sleep_record`` tasks (``time.sleep(0.001)``, then the task's id
is appended to a file, so that a task that ran twice shows): fasttasks-worker with default flags
(concurrency 8; no ``--batch``: a service worker), django-tasks-db one ``db_worker --interval 0`` (no
``--batch``). After ``r1_settle`` s (2) of drain, a window of ``r1_before`` s (5) gives the steady rate;
then one fault, one per case:

- ``restart`` (PostgreSQL): ``pg_ctlcluster --skip-systemctl-redirect VERSION main restart -m fast`` (or
  the shell command in ``BENCH_PG_RESTART``); the database is *back* when ``pg_isready`` first succeeds
  after the command has returned. A thread polls ``pg_isready`` meanwhile: when the server itself
  refused and accepted connections again is in the JSON (``pg_refused_s``, the timeline).
- ``terminate`` (PostgreSQL): ``pg_terminate_backend`` of every connection to the target's database
  (the worker's pool, its LISTEN connection, its task threads'); *back* when the statement returns.
- ``lock`` (SQLite): another connection holds ``BEGIN EXCLUSIVE`` for ``r1_lock`` s (3) while the
  worker's busy timeout is 0.2 s (``BENCH_SQLITE_TIMEOUT``), so its writes fail rather than wait; *back*
  at the ``COMMIT``.

Throughput is read afterwards from the tasks' ``finished_at``, in 0.5 s buckets. Rate before = median
bucket of the window before the fault. Recovery = time from *back* to the start of the first of 2
consecutive buckets at >= 95 % of the rate before (resolution 0.5 s; target <= 10 s;
``recovery_from_fault_s`` in the JSON counts from the fault instead). Rate after = tasks finished in the
``r1_after`` s (10) after *back*, per second. The drain then runs to its end (or until the worker exits,
or makes no progress for 30 s), then SIGTERM. Outcome: *lost* = tasks FAILED or stuck RUNNING (plus, in
brackets, tasks left READY by a worker that died), runs beyond one per task (from the file), and whether
the worker was still running. A worker that dies or hangs is a result, not a failure of the benchmark.
The JSON keeps each case's bucket rates (``curve``), its timeline and the statuses at the end.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import threading
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

from _common import (
    FINISHED,
    LOG_DIR,
    BenchError,
    Case,
    Config,
    Measure,
    Metrics,
    Row,
    Stats,
    Target,
    Workers,
    case_stat,
    child,
    compare_row,
    dtdb_cmd,
    fmt_stat,
    pg_connect,
    status_counts,
    tail,
    worker_cmds,
)

ID = "R1"
TASK = "sleep_record"
FAULTS = {"postgres": ("restart", "terminate"), "sqlite": ("lock",)}
BUCKET = 0.5  # seconds
SHARE = 0.95  # of the rate before
SUSTAIN = 2  # consecutive buckets at SHARE or more
RECOVERY_GOAL = 10.0  # seconds from "back" to SHARE of the rate before
LOCK_BUSY_TIMEOUT = 0.2  # the worker's SQLite busy timeout in the lock case, seconds
STALL = 30.0  # seconds without a finished task (tasks left) after which the drain is given up
SECONDS = Measure(" s", digits=1, higher_better=False)
FAULT_TEXT = {
    "restart": "PostgreSQL restarted (pg_ctlcluster restart -m fast)",
    "terminate": "pg_terminate_backend of every worker connection",
    "lock": "SQLite locked: BEGIN EXCLUSIVE held {lock:g} s by another connection, worker busy timeout "
    f"{LOCK_BUSY_TIMEOUT:g} s",
}


# --- the faults -------------------------------------------------------------------------------------


def pg_restart_command() -> list[str]:
    """How to restart the PostgreSQL the benchmark uses: ``BENCH_PG_RESTART`` (a shell command), or
    pg_ctlcluster for the local cluster that is online on ``PGPORT`` (Debian/Ubuntu's postgresql-common)."""
    custom = os.environ.get("BENCH_PG_RESTART")
    if custom:
        return ["sh", "-c", custom]
    host, port = os.environ.get("PGHOST", "127.0.0.1"), os.environ.get("PGPORT", "5432")
    if host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("/"):
        raise BenchError(f"PostgreSQL at {host} is not local: set BENCH_PG_RESTART to restart it")
    tool, lister = shutil.which("pg_ctlcluster"), shutil.which("pg_lsclusters")
    if tool is None or lister is None:
        raise BenchError("no pg_ctlcluster here: set BENCH_PG_RESTART to a command that restarts PostgreSQL")
    listing = subprocess.run([lister, "--no-header"], check=False, capture_output=True, text=True, timeout=30)
    # Ver Cluster Port Status Owner Data-directory Log-file
    online = [f for f in (line.split() for line in listing.stdout.splitlines()) if len(f) >= 4]
    online = [f for f in online if f[2] == port and f[3].startswith("online")]
    if len(online) != 1:
        raise BenchError(
            f"no local cluster online on port {port} in pg_lsclusters (PostgreSQL in a container?): "
            "set BENCH_PG_RESTART to a command that restarts it"
        )
    version, cluster = online[0][:2]
    return [tool, "--skip-systemctl-redirect", version, cluster, "restart", "-m", "fast"]


def pg_ready() -> bool:
    host, port = os.environ.get("PGHOST", "127.0.0.1"), os.environ.get("PGPORT", "5432")
    tool = shutil.which("pg_isready")
    if tool is None:  # no client tools: a connection that works is as good
        try:
            with pg_connect("postgres") as conn:
                conn.execute("SELECT 1")
        except Exception:
            return False
        return True
    cmd = [tool, "-q", "-h", host, "-p", port, "-t", "1"]
    return subprocess.run(cmd, check=False, capture_output=True, timeout=10).returncode == 0


def wait_pg_ready(timeout: float) -> float:
    """time.time() when ``pg_isready`` first succeeds."""
    deadline = time.monotonic() + timeout
    while not pg_ready():
        if time.monotonic() > deadline:
            raise BenchError(f"PostgreSQL not ready {timeout:.0f} s after the restart")
        time.sleep(0.02)
    return time.time()


_restarted: list[list[str]] = []  # the restart commands run (cleanup() checks PostgreSQL is up after them)


def cleanup() -> None:
    if _restarted:
        ensure_pg_running(_restarted[-1])
        _restarted.clear()


def ensure_pg_running(restart_cmd: list[str]) -> None:
    """Never leave PostgreSQL down: start the cluster (or restart it again) if a restart failed."""
    if pg_ready():
        return
    cmd = restart_cmd if restart_cmd[0] == "sh" else [*restart_cmd[:4], "start"]
    subprocess.run(cmd, check=False, capture_output=True, timeout=120)
    wait_pg_ready(60)


def restart(cfg: Config, target: Target, marks: dict[str, float]) -> dict[str, float]:
    """Restart the cluster; meanwhile a thread polls pg_isready (every 50 ms) to see when the server
    actually refused and accepted connections (``pg_refusing``, ``pg_accepting``)."""
    cmd = pg_restart_command()
    _restarted.append(cmd)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            ok = pg_ready()
            if not ok and "pg_refusing" not in marks:
                marks["pg_refusing"] = time.time()
            elif ok and "pg_refusing" in marks and "pg_accepting" not in marks:
                marks["pg_accepting"] = time.time()
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began = time.time()
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as exc:
        ensure_pg_running(cmd)
        raise BenchError(f"{shlex.join(cmd)} timed out") from exc
    finally:
        marks["restart_returned"] = time.time()
        done.set()
        sampler.join()
    if proc.returncode != 0:
        ensure_pg_running(cmd)
        raise BenchError(f"{shlex.join(cmd)} failed (exit {proc.returncode}):\n{tail(proc.stderr)}")
    try:
        marks["back"] = wait_pg_ready(60)
    except BenchError:
        ensure_pg_running(cmd)
        raise
    if "pg_refusing" in marks:
        marks.setdefault("pg_accepting", marks["back"])
    return {"restart_cmd_s": marks["restart_returned"] - began}


def terminate(cfg: Config, target: Target, marks: dict[str, float]) -> dict[str, float]:
    with pg_connect("postgres") as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            [target.pg_name],
        ).fetchone()
    marks["back"] = time.time()
    if not row or not row[0]:
        raise BenchError(f"no connection to {target.pg_name} to terminate")
    return {"terminated": float(row[0])}


def lock(cfg: Config, target: Target, marks: dict[str, float]) -> dict[str, float]:
    other = sqlite3.connect(str(target.sqlite_path), timeout=30, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        marks["locked"] = time.time()
        time.sleep(cfg.sizes["r1_lock"])
        other.execute("COMMIT")
    finally:
        other.close()
    marks["back"] = time.time()
    return {}


FAULT_FNS = {"restart": restart, "terminate": terminate, "lock": lock}


# --- measuring --------------------------------------------------------------------------------------


def watch(proc: subprocess.Popen[bytes], until: float) -> bool:
    """Sleep until time.time() >= ``until``; False (at once) if the process exits meanwhile."""
    while time.time() < until:
        if proc.poll() is not None:
            return False
        time.sleep(min(0.05, max(0.0, until - time.time())))
    return proc.poll() is None


def finish_times(target: Target) -> list[float]:
    """Every finished task's ``finished_at`` as epoch seconds, sorted."""
    if target.db == "postgres":
        expr = "EXTRACT(EPOCH FROM finished_at)"
    else:  # Django writes UTC text
        expr = "(julianday(finished_at) - 2440587.5) * 86400.0"
    rows = target.query(f"SELECT {expr} FROM {target.table} WHERE finished_at IS NOT NULL")
    return sorted(float(value) for (value,) in rows)


def bucket_rates(times: list[float], start: float, buckets: int) -> list[float]:
    counts = [0] * buckets
    for t in times:
        k = int((t - start) // BUCKET)
        if 0 <= k < buckets:
            counts[k] += 1
    return [n / BUCKET for n in counts]


def recovery_seconds(rates_after: list[float], rate_before: float) -> float | None:
    """Start of the first of SUSTAIN consecutive buckets at SHARE of the rate before (None: never)."""
    need = SHARE * rate_before
    for k in range(len(rates_after) - SUSTAIN + 1):
        if all(r >= need for r in rates_after[k : k + SUSTAIN]):
            return k * BUCKET
    return None


def count_for(cfg: Config, impl: str) -> int:
    return cfg.size("r1" if impl == "fasttasks" else "r1_dtdb")


def measure(cfg: Config, rep: int, target: Target, fault: str) -> Metrics:
    count = count_for(cfg, target.impl)
    before_s, after_s = cfg.sizes["r1_before"], cfg.sizes["r1_after"]
    if fault == "restart":
        try:
            pg_restart_command()  # fails early where PostgreSQL cannot be restarted
        except BenchError as exc:
            if not cfg.quick:
                raise
            # The smoke run (CI) may have PostgreSQL in a container: no restart case there.
            print(f" skipped: {exc}", end="", flush=True)
            return {}
    name = f"R1-{target.db}-{target.impl}-{fault}-r{rep}"
    runs_file = LOG_DIR / f"{name}.runs"
    runs_file.unlink(missing_ok=True)
    env = {"BENCH_RUNS_FILE": str(runs_file)}
    if fault == "lock":
        env["BENCH_SQLITE_TIMEOUT"] = str(LOCK_BUSY_TIMEOUT)
    if target.impl == "fasttasks":
        # --verbosity 1 (its default): the log shows the failures the worker saw and its retries.
        cmds = worker_cmds(cfg, target, batch=False, ft_extra=["--verbosity", "1"])
    else:
        cmds = [dtdb_cmd(interval=0, batch=False)]
    target.reset()
    child(target, "prepare", TASK, count)
    workers = Workers(target, cmds, name, env=env)
    proc = workers.procs[0]
    table = target.table
    timeline: dict[str, float] = {}
    try:
        # Under way: the first task has finished.
        deadline = time.monotonic() + 60
        while not target.query(f"SELECT 1 FROM {table} WHERE status = 'SUCCESSFUL' LIMIT 1"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the worker did not start draining\n{workers.log_tails()}")
            time.sleep(0.05)
        timeline["under_way"] = time.time()
        if not watch(proc, timeline["under_way"] + cfg.sizes["r1_settle"] + before_s):
            raise BenchError(f"the worker exited before the fault\n{workers.log_tails()}")
        timeline["fault"] = time.time()
        info = FAULT_FNS[fault](cfg, target, timeline)
        back = timeline["back"]
        watch(proc, back + after_s + SUSTAIN * BUCKET)
        timeline["observed"] = time.time()
        # The drain to its end: every task finished, the worker gone, or no progress for STALL s.
        progress, done_before = time.time(), -1
        while proc.poll() is None:
            counts = status_counts(target)
            done = sum(counts.get(status, 0) for status in FINISHED)
            if done >= count:
                break
            now = time.time()
            if done != done_before:
                progress, done_before = now, done
            elif now - progress > STALL:
                timeline["stalled"] = now
                break
            time.sleep(0.5)
        timeline["drained"] = time.time()
        survived = proc.poll() is None
    finally:
        stop_code = stop(workers)
    exit_code = proc.returncode
    counts = status_counts(target)
    times = finish_times(target)
    metrics = analyse(cfg, target, count, times, counts, timeline, runs_file, survived, workers)
    metrics.update(info)
    metrics["timeline"].update(statuses=counts, exit_code=exit_code, stop_exit_code=stop_code)
    return metrics


def stop(workers: Workers, timeout: float = 40) -> int | None:
    """SIGTERM (graceful stop, within the worker's 25 s grace), then SIGKILL; the exit code."""
    proc = workers.procs[0]
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            workers.kill()
    return proc.returncode


def analyse(
    cfg: Config,
    target: Target,
    count: int,
    times: list[float],
    counts: dict[str, int],
    timeline: dict[str, float],
    runs_file: Path,
    survived: bool,
    workers: Workers,
) -> dict[str, Any]:
    before_s, after_s = cfg.sizes["r1_before"], cfg.sizes["r1_after"]
    fault, back = timeline["fault"], timeline["back"]
    rates_before = bucket_rates(times, fault - before_s, round(before_s / BUCKET))
    rate_before = statistics.median(rates_before)
    if rate_before <= 0:
        raise BenchError(f"no tasks finished in the {before_s:g} s before the fault")
    # Buckets after "back" up to the end of the drain (a partial last bucket would look like a slump).
    end = max(times[-1] if times else back, back)
    rates_after = bucket_rates(times, back, int((end - back) // BUCKET))
    recovery = recovery_seconds(rates_after, rate_before)
    in_after = sum(1 for t in times if back <= t < back + after_s)
    succeeded = counts.get("SUCCESSFUL", 0)
    left = counts.get("READY", 0)
    lost = count - succeeded - left  # FAILED, stuck RUNNING, missing
    lines = runs_file.read_text().split() if runs_file.exists() else []
    runs = Counter(lines)
    if len(runs) < succeeded:
        raise BenchError(f"{runs_file} lists {len(runs)} tasks, but {succeeded} succeeded: runs not recorded")
    ran_dry = survived and "stalled" not in timeline and times[-1] < back + after_s + SUSTAIN * BUCKET
    if ran_dry and not cfg.quick:  # the quick run's drains are too short for the windows
        raise BenchError(
            f"the drain ended {times[-1] - back:.1f} s after the database was back, before the "
            f"{after_s:g} s window did: raise --size r1 (fasttasks) / r1_dtdb"
        )
    metrics: dict[str, Any] = {
        "rate_before": rate_before,
        "rate_after": in_after / after_s,
        "after_pct": 100.0 * in_after / after_s / rate_before,
        "down_s": back - fault,
        "recovered": float(recovery is not None and recovery <= RECOVERY_GOAL),
        "lost": float(lost),
        "left_ready": float(left),
        "twice": float(sum(n - 1 for n in runs.values())),
        "ran": float(len(runs)),
        "survived": float(survived),
        "stalled": float("stalled" in timeline),
        "tasks": float(count),
    }
    if recovery is not None:
        metrics["recovery_s"] = recovery
    # The same counted from the start of the fault (outage included), and for a restart how long the
    # server itself refused connections (pg_ctlcluster returns a while after it accepts them again).
    from_fault = recovery_seconds(bucket_rates(times, fault, int((end - fault) // BUCKET)), rate_before)
    if from_fault is not None:
        metrics["recovery_from_fault_s"] = from_fault
    if "pg_refusing" in timeline and "pg_accepting" in timeline:
        metrics["pg_refused_s"] = timeline["pg_accepting"] - timeline["pg_refusing"]
    # Not aggregated (run.py keeps only numbers): the curve and the timeline, for the JSON.
    start = fault - before_s
    buckets = int((end - start) // BUCKET) if end > start else 0
    metrics["curve"] = {
        "bucket_s": BUCKET,
        "start_from_back_s": round(start - back, 3),
        "fault_from_back_s": round(fault - back, 3),
        "per_s": bucket_rates(times, start, buckets),
    }
    # Seconds from "back" (negative: before it).
    metrics["timeline"] = {k: round(v - back, 3) for k, v in timeline.items() if k != "back"}
    if not survived:
        metrics["timeline"]["log_tail"] = workers.log_tails()
    return metrics


# --- the suite's interface --------------------------------------------------------------------------


def cases(cfg: Config, selected: set[str]) -> list[Case]:
    if ID not in selected:
        return []
    out = []
    for db in cfg.dbs:
        for fault in FAULTS[db]:
            for impl in cfg.impls:
                target = Target(db, impl)
                out.append(
                    Case(
                        ID,
                        fault,
                        db,
                        impl,
                        run=partial(measure, target=target, fault=fault),
                        max_reps=cfg.size("r1_reps"),
                        note=f"{count_for(cfg, impl):,} tasks",
                    )
                )
    return out


def fault_text(cfg: Config, fault: str) -> str:
    return FAULT_TEXT[fault].format(lock=cfg.sizes["r1_lock"])


def ones(st: dict[str, float]) -> int | None:
    """How many repetitions had 1 for a 0/1 metric, where median/min/max/n tell it (n <= 3, or all alike)."""
    n = int(st["n"])
    if st["min"] == st["max"]:
        return round(st["min"]) * n
    if n == 2:
        return 1
    if n == 3:
        return 2 if st["median"] == 1 else 1
    return None


def outcome_cell(stats: Stats, fault: str, db: str, impl: str) -> tuple[str, bool | None]:
    """'lost 0, run twice 0, worker survived 3/3' and whether that is a clean result."""
    st = {m: case_stat(stats, ID, fault, db, impl, m) for m in ("lost", "left_ready", "twice", "survived")}
    survived, lost, left, twice = st["survived"], st["lost"], st["left_ready"], st["twice"]
    if not survived or not lost or not twice:
        return "—", None
    n, alive = int(survived["n"]), ones(survived)
    text = f"lost {fmt_stat(lost)}"
    if left and left["max"] > 0:
        text += f" (+ left READY {fmt_stat(left)})"
    text += f", run twice {fmt_stat(twice)}, worker survived "
    text += f"{alive}/{n}" if alive is not None else f"in some of {n}"
    clean = lost["max"] == 0 and survived["min"] == 1 and (not left or left["max"] == 0)
    return text, clean


def recovery_cell(stats: Stats, fault: str, db: str, impl: str) -> str:
    rec = case_stat(stats, ID, fault, db, impl, "recovery_s")
    ok = case_stat(stats, ID, fault, db, impl, "recovered")
    if not ok:
        return "—"
    n = int(ok["n"])
    measured = int(rec["n"]) if rec else 0
    if measured == 0:
        return f"never ({n}/{n})" if n > 1 else "never"
    text = fmt_stat(rec, SECONDS.unit, SECONDS.digits)
    if measured < n:
        text += f"; never in {n - measured} of {n}"
    return text


def rows(cfg: Config, stats: Stats, selected: set[str]) -> list[Row]:
    if ID not in selected:
        return []
    before_s, after_s = cfg.sizes["r1_before"], cfg.sizes["r1_after"]
    drain = (
        f"{count_for(cfg, 'fasttasks'):,} x 1 ms sync task, 1 worker process, default flags without "
        f"--batch (dtdb: {count_for(cfg, 'dtdb'):,} tasks, db_worker --interval 0)"
    )
    out = []
    for db in cfg.dbs:
        for fault in FAULTS[db]:
            text = fault_text(cfg, fault)
            what = f"{text}: rate before, median of {BUCKET:g} s buckets over {before_s:g} s; {drain}"
            out.append(compare_row(stats, ID, db, "rate_before", what, variant=fault, target="(report)"))

            what = f"{text}: rate in the {after_s:g} s after the database is back"
            pcts = []
            for impl in ("fasttasks", "dtdb"):
                pct = case_stat(stats, ID, fault, db, impl, "after_pct")
                if pct:
                    pcts.append(f"{'dtdb' if impl == 'dtdb' else impl} {fmt_stat(pct, ' %')} of before")
            target = "(report)" + (f"; {', '.join(pcts)}" if pcts else "")
            out.append(compare_row(stats, ID, db, "rate_after", what, variant=fault, target=target))

            what = (
                f"{text}: database back -> rate >= {SHARE:.0%} of before ({SUSTAIN} consecutive "
                f"{BUCKET:g} s buckets; resolution {BUCKET:g} s)"
            )
            row = compare_row(
                stats, ID, db, "recovery_s", what, SECONDS, variant=fault, goal=RECOVERY_GOAL, goal_on="max"
            )
            row.fasttasks = recovery_cell(stats, fault, db, "fasttasks")
            row.dtdb = recovery_cell(stats, fault, db, "dtdb")
            down = case_stat(stats, ID, fault, db, "fasttasks", "down_s")
            refused = case_stat(stats, ID, fault, db, "fasttasks", "pg_refused_s")
            row.target = f"<= {RECOVERY_GOAL:g} s"
            if down:
                row.target += f" (fault -> back {fmt_stat(down, ' s', 1)}"
                if refused:
                    row.target += f"; the server refused connections {fmt_stat(refused, ' s', 1)} of it"
                row.target += ")"
            recovered = case_stat(stats, ID, fault, db, "fasttasks", "recovered")
            if recovered:
                row.met = "yes" if recovered["min"] == 1 else "NO"
            out.append(row)

            ours, ours_clean = outcome_cell(stats, fault, db, "fasttasks")
            theirs, _ = outcome_cell(stats, fault, db, "dtdb")
            out.append(
                Row(
                    ID,
                    f"{text}: tasks lost (FAILED or stuck RUNNING), runs beyond one per task, worker alive",
                    db,
                    ours,
                    theirs,
                    "",
                    "0 lost, worker survives",
                    "" if ours_clean is None else ("yes" if ours_clean else "NO"),
                )
            )
    return out
