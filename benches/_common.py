"""What every scenario shares: targets (database x implementation), databases, child steps, workers.

A *target* is one database (``sqlite`` | ``postgres``) with one implementation (``fasttasks`` |
``dtdb``, django-tasks-db). Each target has its own database (``fasttasks_bench_<impl>`` on PostgreSQL,
``benches/out/bench-<impl>.sqlite3``) so that targets can run side by side (the idle scenario does).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"
LOG_DIR = OUT_DIR / "logs"
BIN_DIR = Path(os.path.abspath(sys.executable)).parent
PG_PREFIX = os.environ.get("BENCH_PG_NAME", "fasttasks_bench")
IMPL_LABELS = {"fasttasks": "fasttasks", "dtdb": "django-tasks-db"}
TABLES = {"fasttasks": "fasttasks_task", "dtdb": "django_tasks_database_dbtaskresult"}
FINISHED = ("SUCCESSFUL", "FAILED")


class BenchError(Exception):
    """A scenario could not produce a valid figure (a wrong count, a worker that failed, ...)."""


@dataclass
class Config:
    quick: bool
    repeat: int
    dbs: list[str]
    impls: list[str]
    sizes: dict[str, float]
    worker_args: list[str]
    pg_error: str | None = None

    def size(self, key: str) -> int:
        return int(self.sizes[key])


# --- targets and their databases -------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    db: str  # sqlite | postgres
    impl: str  # fasttasks | dtdb
    suffix: str = ""  # a second database of the same target (S6 keeps its template there)

    @property
    def table(self) -> str:
        return TABLES[self.impl]

    @property
    def pg_name(self) -> str:
        return f"{PG_PREFIX}_{self.impl}{self.suffix}"

    @property
    def sqlite_path(self) -> Path:
        return OUT_DIR / f"bench-{self.impl}{self.suffix}.sqlite3"

    @property
    def name(self) -> str:
        return f"{self.db}/{self.impl}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            BENCH_DB=self.db,
            BENCH_IMPL=self.impl,
            BENCH_SQLITE_PATH=str(self.sqlite_path),
            BENCH_PG_NAME=self.pg_name,
            DJANGO_SETTINGS_MODULE="benchproj.settings",
            PYTHONUNBUFFERED="1",
        )
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH_DIR), env.get("PYTHONPATH")]))
        return env

    def reset(self) -> None:
        """An empty database (no tables)."""
        if self.db == "sqlite":
            remove_sqlite(self.sqlite_path)
            return
        pg_recreate(self.pg_name)

    def clone_from(self, template: Target) -> None:
        """This target's database becomes a copy of ``template``'s (S6: 5M rows without re-inserting)."""
        if self.db == "sqlite":
            remove_sqlite(self.sqlite_path)
            shutil.copyfile(template.sqlite_path, self.sqlite_path)
            return
        pg_recreate(self.pg_name, template=template.pg_name)

    def drop(self) -> None:
        if self.db == "sqlite":
            remove_sqlite(self.sqlite_path)
        else:
            with pg_connect("postgres") as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement on this target's database from the parent (no Django)."""
        if self.db == "sqlite":
            conn = sqlite3.connect(self.sqlite_path, timeout=20)
            try:
                return conn.execute(sql.replace("%s", "?"), params).fetchall()
            finally:
                conn.close()
        with pg_connect(self.pg_name) as conn:
            return conn.execute(sql, params).fetchall()  # type: ignore[no-any-return]


def targets(cfg: Config) -> list[Target]:
    """Every target of this run: each database with each implementation (databases outer)."""
    return [Target(db, impl) for db in cfg.dbs for impl in cfg.impls]


def remove_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def pg_connect(dbname: str) -> Any:
    import psycopg

    return psycopg.connect(
        host=os.environ.get("PGHOST", "127.0.0.1"),
        port=os.environ.get("PGPORT", "5432"),
        user=os.environ.get("PGUSER", "postgres"),
        password=os.environ.get("PGPASSWORD") or None,
        dbname=dbname,
        autocommit=True,
        connect_timeout=5,
    )


def check_postgres() -> str | None:
    try:
        with pg_connect("postgres") as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".strip()
    return None


def pg_recreate(name: str, template: str | None = None) -> None:
    with pg_connect("postgres") as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if template is None:
            conn.execute(f'CREATE DATABASE "{name}"')
        else:
            # FILE_COPY (PostgreSQL 15+) copies the files instead of WAL-logging every page of a large
            # template.
            version = int(conn.execute("SHOW server_version_num").fetchone()[0])
            strategy = " STRATEGY FILE_COPY" if version >= 150000 else ""
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"{strategy}')


def to_epoch(value: Any) -> float | None:
    """A timestamp read from either database as seconds since the epoch (SQLite stores UTC text)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return float(value.timestamp())


# --- child steps (Django in a fresh process) --------------------------------------------------------


def child(target: Target, *args: object, timeout: float = 1800) -> dict[str, Any]:
    cmd = [sys.executable, str(BENCH_DIR / "_child.py"), *map(str, args)]
    try:
        proc = subprocess.run(
            cmd,
            cwd=BENCH_DIR,
            env=target.env(),
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{shlex.join(cmd[1:])} timed out after {timeout:.0f} s") from exc
    if proc.returncode != 0:
        raise BenchError(f"{shlex.join(cmd[1:])} failed (exit {proc.returncode}):\n{tail(proc.stderr)}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# --- worker processes -------------------------------------------------------------------------------


def fasttasks_cmd(extra: Sequence[str], batch: bool = True) -> list[str]:
    exe = BIN_DIR / "fasttasks-worker"
    if not exe.exists():
        raise BenchError(f"{exe} not found: build fasttasks into this venv first (make build)")
    cmd = [str(exe), "--settings", "benchproj.settings", "--pythonpath", str(BENCH_DIR), "--verbosity", "0"]
    return [*cmd, *(["--batch"] if batch else []), *extra]


def dtdb_cmd(interval: float = 0, batch: bool = True) -> list[str]:
    # django-tasks-db's settings for throughput: no start-up jitter, no sleep between tasks.
    cmd = [sys.executable, "manage.py", "db_worker", "--no-startup-delay", "--interval", f"{interval:g}"]
    return [*cmd, *(["--batch"] if batch else []), "--verbosity", "0"]


def worker_cmds(
    cfg: Config, target: Target, batch: bool = True, ft_extra: Sequence[str] = (), dtdb_procs: int = 1
) -> list[list[str]]:
    """fasttasks: one process, default flags + ``--worker-args`` + ``ft_extra`` (the scenario's own flags
    come last, so they win); django-tasks-db: ``dtdb_procs`` processes."""
    if target.impl == "fasttasks":
        return [fasttasks_cmd([*cfg.worker_args, *ft_extra], batch=batch)]
    return [dtdb_cmd(batch=batch) for _ in range(dtdb_procs)]


class Workers:
    """Worker processes of one run, each logging to ``benches/out/logs/<name>-p<i>.log``."""

    def __init__(
        self, target: Target, cmds: list[list[str]], name: str, env: dict[str, str] | None = None
    ) -> None:
        """``env``: variables added to the target's environment (R1: the SQLite busy timeout)."""
        self.logs: list[Path] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.started = time.perf_counter()
        env = {**target.env(), **(env or {})}
        for i, cmd in enumerate(cmds):
            log = LOG_DIR / f"{name}-p{i + 1}.log"
            self.logs.append(log)
            with log.open("wb") as fh:
                fh.write(f"$ {shlex.join(cmd)}\n".encode())
                fh.flush()
                self.procs.append(
                    subprocess.Popen(
                        cmd, cwd=BENCH_DIR, env=env, stdin=subprocess.DEVNULL, stdout=fh, stderr=fh
                    )
                )

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def wait(self, timeout: float, every: Callable[[], None] | None = None, period: float = 0.5) -> float:
        """Wait for every process to exit (``every`` is called each ``period`` seconds meanwhile); the wall
        time from start. Raises BenchError (after killing them) on a timeout or a non-zero exit."""
        deadline = self.started + timeout
        while any(p.poll() is None for p in self.procs):
            if time.perf_counter() > deadline:
                self.kill()
                raise BenchError(f"workers killed after the {timeout:.0f} s timeout\n{self.log_tails()}")
            if every is not None:
                every()
            wait_any(self.procs, period)
        wall = time.perf_counter() - self.started
        self.check_exit_codes()
        return wall

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (graceful stop) and wait."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.perf_counter() + timeout
        while any(p.poll() is None for p in self.procs):
            if time.perf_counter() > deadline:
                self.kill()
                raise BenchError(f"workers did not stop within {timeout:.0f} s of SIGTERM")
            wait_any(self.procs, 0.05)
        self.check_exit_codes()

    def check_exit_codes(self) -> None:
        codes = [p.returncode for p in self.procs]
        if any(code != 0 for code in codes):
            raise BenchError(f"worker exit codes {codes}\n{self.log_tails()}")

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    def log_tails(self) -> str:
        return "\n".join(f"--- {rel(p)} (last lines):\n{tail(p.read_text())}" for p in self.logs)


def wait_any(procs: list[subprocess.Popen[bytes]], seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        if all(p.poll() is not None for p in procs):
            return
        time.sleep(min(0.01, max(0.0, end - time.perf_counter())))


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of the whole process (every thread), from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- checks on the database -------------------------------------------------------------------------


def status_counts(target: Target) -> dict[str, int]:
    rows = target.query(f"SELECT status, COUNT(*) FROM {target.table} GROUP BY status")
    return {str(status): int(n) for status, n in rows}


def expect_counts(target: Target, expected: dict[str, int]) -> None:
    counts = status_counts(target)
    if counts != expected:
        raise BenchError(f"expected {expected} in {target.name}, found {counts}")


def span_seconds(target: Target, since: float | None = None) -> float:
    """first started_at -> last finished_at of the tasks started after ``since`` (epoch seconds)."""
    sql = f"SELECT MIN(started_at), MAX(finished_at) FROM {target.table}"
    params: list[Any] = []
    if since is not None:
        sql += " WHERE started_at >= %s"
        params.append(db_time(target, since))
    rows = target.query(sql, params)
    first, last = (to_epoch(v) for v in rows[0])
    if first is None or last is None or last <= first:
        raise BenchError(f"no usable started_at/finished_at in {target.name}: {rows[0]}")
    return last - first


def db_time(target: Target, epoch: float) -> Any:
    """A query parameter for a timestamp column (SQLite: UTC text, as Django writes it)."""
    moment = dt.datetime.fromtimestamp(epoch, dt.timezone.utc)
    if target.db == "sqlite":
        return moment.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
    return moment


# --- small helpers ----------------------------------------------------------------------------------


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(REPO_DIR))
    except ValueError:
        return str(path)


def fmt_n(n: float) -> str:
    return f"{n:,.0f}"


# --- cases, statistics and table rows ---------------------------------------------------------------

Metrics = dict[str, float]
Key = tuple[str, str, str, str]  # scenario, variant, db, impl
Stats = dict[Key, dict[str, dict[str, float]]]  # per case: metric -> median/min/max/n


@dataclass
class Case:
    """One cell measured once per repetition: ``run(cfg, rep)`` returns its metrics.

    A case that measures several targets at once (idle) returns ``{(db, impl): metrics}`` through
    ``run_many`` instead.
    """

    scenario: str
    variant: str
    db: str
    impl: str
    run: Callable[[Config, int], Metrics] | None = None
    run_many: Callable[[Config, int], dict[tuple[str, str], Metrics]] | None = None
    max_reps: int | None = None  # measured in the first max_reps repetitions only (None: all)
    note: str = ""

    @property
    def label(self) -> str:
        who = IMPL_LABELS.get(self.impl, self.impl)
        db = "" if self.db == "*" else self.db
        who = "" if self.impl == "*" else who
        return " ".join(filter(None, [self.scenario, self.variant, db, who, self.note]))


@dataclass
class Row:
    scenario: str
    what: str
    db: str
    fasttasks: str
    dtdb: str
    ratio: str
    target: str
    met: str  # yes | NO | "" (no target)


def stat(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    import statistics

    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def fmt_stat(st: dict[str, float] | None, unit: str = "", digits: int = 0) -> str:
    if not st:
        return "—"
    f = f"{{:,.{digits}f}}"
    if st["n"] == 1:
        return f"{f.format(st['median'])}{unit}"
    return f"{f.format(st['median'])}{unit} ({f.format(st['min'])}-{f.format(st['max'])})"


def ratio_text(ours: dict[str, float] | None, theirs: dict[str, float] | None, higher_better: bool) -> str:
    if not ours or not theirs:
        return "n/a"
    a, b = (ours["median"], theirs["median"]) if higher_better else (theirs["median"], ours["median"])
    if b <= 0:
        return "n/a"
    return f"{a / b:.1f}x"


def met_text(ok: bool | None) -> str:
    return "" if ok is None else ("yes" if ok else "NO")


@dataclass(frozen=True)
class Measure:
    """How a metric is shown (unit, decimals) and which way is better (for the ratio and the goal)."""

    unit: str = ""
    digits: int = 0
    higher_better: bool = True


PER_SECOND = Measure("/s")  # a rate: tasks (or enqueues) per second, more is better


def case_stat(
    stats: Stats, scenario: str, variant: str, db: str, impl: str, metric: str
) -> dict[str, float] | None:
    """The statistics of one metric of one case; None when the case was not run (or lacks the metric)."""
    return stats.get((scenario, variant, db, impl), {}).get(metric)


def compare_row(
    stats: Stats,
    scenario: str,
    db: str,
    metric: str,
    what: str,
    measure: Measure = PER_SECOND,
    *,
    variant: str = "",
    their_variant: str | None = None,
    target: str = "",
    goal: float | None = None,
    goal_on: str = "median",
    with_ratio: bool = True,
) -> Row:
    """A summary row: fasttasks' and django-tasks-db's ``metric`` side by side, and their ratio.

    ``target`` is the text shown; ``goal`` the figure fasttasks must reach (at least it, or at most it
    when lower is better), judged on its ``goal_on`` statistic ("max" where every repetition must meet
    it); no goal leaves "met" empty. ``their_variant`` is for a django-tasks-db case that stands for
    several fasttasks variants (S4: one figure for every concurrency).
    """
    ours = case_stat(stats, scenario, variant, db, "fasttasks", metric)
    their_key = variant if their_variant is None else their_variant
    theirs = case_stat(stats, scenario, their_key, db, "dtdb", metric)
    better = measure.higher_better
    met = None
    if ours and goal:
        met = ours[goal_on] >= goal if better else ours[goal_on] <= goal
    return Row(
        scenario,
        what,
        db,
        fmt_stat(ours, measure.unit, measure.digits),
        fmt_stat(theirs, measure.unit, measure.digits),
        ratio_text(ours, theirs, higher_better=better) if with_ratio else "",
        target,
        met_text(met),
    )
