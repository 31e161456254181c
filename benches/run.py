#!/usr/bin/env python
"""Drain benchmark: fasttasks against django-tasks-db, on SQLite and PostgreSQL, in the same run.

For each database and each repetition, every scenario starts from a fresh database: migrate, enqueue N
no-op tasks (not timed as part of the drain), then start the worker process(es) in ``--batch`` mode and
time the drain until they have all exited. Scenarios:

- ``fasttasks``: one ``fasttasks-worker --batch --concurrency 8`` process;
- ``django-tasks-db x1``: one ``manage.py db_worker --batch --no-startup-delay --interval 0`` process
  (db_worker runs one task at a time);
- ``django-tasks-db x2``: two such processes at once (one per core on a 2-core machine).

Two figures per run: *wall* (worker processes start → all exited, so it includes Python/Django start-up)
and *span* (first ``started_at`` → last ``finished_at`` as recorded in the database). Results go to
``benches/out/*.json``; a full run that succeeded appends a dated section to ``benches/RESULTS.md``.

    .venv/bin/python benches/run.py                 # 20,000 tasks, 3 repetitions, both databases
    .venv/bin/python benches/run.py --quick         # smoke run: 2,000 tasks, once, nothing recorded
    .venv/bin/python benches/run.py --db sqlite --impl dtdb --tasks 5000
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shlex
import sqlite3
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"
LOG_DIR = OUT_DIR / "logs"
RESULTS_MD = BENCH_DIR / "RESULTS.md"
BIN_DIR = Path(os.path.abspath(sys.executable)).parent
PG_DB_NAME = os.environ.get("BENCH_PG_NAME", "fasttasks_bench")
IMPL_LABELS = {"fasttasks": "fasttasks", "dtdb": "django-tasks-db"}


@dataclass
class Scenario:
    db: str  # sqlite | postgres
    impl: str  # fasttasks | dtdb
    procs: int
    concurrency: int

    @property
    def key(self) -> str:
        return f"{self.db}/{self.impl}x{self.procs}"

    @property
    def label(self) -> str:
        if self.impl == "fasttasks":
            return f"fasttasks-worker --concurrency {self.concurrency}"
        return f"django-tasks-db db_worker x{self.procs}"


@dataclass
class Run:
    ok: bool
    error: str | None = None
    wall_s: float | None = None
    span_s: float | None = None
    enqueue_s: float | None = None
    enqueue_method: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    exit_codes: list[int | None] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)


def main() -> int:
    args = parse_args()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)

    scenarios: list[Scenario] = []
    for db in args.db:
        for impl in args.impl:
            for procs in [1] if impl == "fasttasks" else args.dtdb_procs:
                scenarios.append(Scenario(db, impl, procs, args.concurrency))

    pg_error = check_postgres() if "postgres" in args.db else None
    started_at = dt.datetime.now(dt.timezone.utc)
    print(f"# drain benchmark: {args.tasks:,} no-op tasks, {args.repeat} repetition(s)", flush=True)
    print(f"# {machine_line()}", flush=True)
    if pg_error:
        print(f"# PostgreSQL unavailable: {pg_error}", flush=True)

    runs: dict[str, list[Run]] = {s.key: [] for s in scenarios}
    for rep in range(1, args.repeat + 1):
        for scenario in scenarios:  # interleaved, so that machine noise hits every scenario alike
            tag = f"[{rep}/{args.repeat}] {scenario.db:8} {scenario.label}"
            print(f"{tag} ...", end="", flush=True)
            if scenario.db == "postgres" and pg_error:
                run = Run(ok=False, error=f"PostgreSQL unavailable: {pg_error}")
            else:
                run = run_scenario(scenario, args.tasks, rep, args.timeout)
            runs[scenario.key].append(run)
            if run.ok:
                assert run.wall_s is not None
                span = f", span {args.tasks / run.span_s:,.0f}/s" if run.span_s else ""
                print(f" {run.wall_s:.2f} s, {args.tasks / run.wall_s:,.0f} tasks/s{span}", flush=True)
            else:
                print(" FAILED", flush=True)
                print(indent(run.error or "unknown error"), flush=True)

    summary = summarize(scenarios, runs, args.tasks)
    print()
    print(render_table(summary, args.tasks))
    failed = [s for s in summary if s["failed_runs"]]

    report = {
        "kind": "drain",
        "date": started_at.isoformat(timespec="seconds"),
        "command": command_line(args),
        "tasks": args.tasks,
        "repeat": args.repeat,
        "machine": machine_info(),
        "versions": versions(pg_error),
        "settings": SETTINGS_NOTE,
        "scenarios": summary,
        "runs": {key: [asdict(r) for r in rs] for key, rs in runs.items()},
    }
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    out_file = OUT_DIR / f"{'quick' if args.quick else 'drain'}-{stamp}.json"
    out_file.write_text(json.dumps(report, indent=2) + "\n")
    (OUT_DIR / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults: {out_file.relative_to(REPO_DIR)}")

    if failed:
        print(f"\n{len(failed)} scenario(s) FAILED: " + ", ".join(s["key"] for s in failed), file=sys.stderr)
        if args.record:
            print("benches/RESULTS.md not updated (it only records runs where every scenario succeeded)")
        return 1
    if args.record:
        append_results_md(report, summary)
        print("appended to benches/RESULTS.md")
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tasks", type=int, default=None, help="tasks per drain (default 20,000; quick 2,000)"
    )
    parser.add_argument("--repeat", type=int, default=None, help="repetitions (default 3; quick 1)")
    parser.add_argument("--quick", action="store_true", help="smoke run: few tasks, once, not recorded")
    parser.add_argument("--db", default="sqlite,postgres", help="comma list of sqlite,postgres")
    parser.add_argument("--impl", default="fasttasks,dtdb", help="comma list of fasttasks,dtdb")
    parser.add_argument("--dtdb-procs", default="1,2", help="db_worker process counts to run (default 1,2)")
    parser.add_argument("--concurrency", type=int, default=8, help="fasttasks-worker --concurrency")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before a drain is killed")
    record = parser.add_mutually_exclusive_group()
    record.add_argument("--record", dest="record", action="store_true", default=None)
    record.add_argument("--no-record", dest="record", action="store_false", help="do not touch RESULTS.md")
    args = parser.parse_args()
    args.tasks = args.tasks or (2_000 if args.quick else 20_000)
    args.repeat = args.repeat or (1 if args.quick else 3)
    if args.record is None:
        args.record = not args.quick
    args.timeout = args.timeout or max(300.0, args.tasks / 20)
    args.db = split_choices(parser, "--db", args.db, {"sqlite", "postgres"})
    args.impl = split_choices(parser, "--impl", args.impl, {"fasttasks", "dtdb"})
    args.dtdb_procs = [int(n) for n in args.dtdb_procs.split(",") if n.strip()]
    if args.tasks < 1 or args.repeat < 1 or args.concurrency < 1 or not all(n >= 1 for n in args.dtdb_procs):
        parser.error("--tasks, --repeat, --concurrency and --dtdb-procs must be positive")
    return args


def split_choices(parser: argparse.ArgumentParser, flag: str, value: str, allowed: set[str]) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        parser.error(f"{flag}: choose from {', '.join(sorted(allowed))}")
    return items


# --- one scenario -------------------------------------------------------------------------------------


def scenario_env(scenario: Scenario) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        BENCH_DB=scenario.db,
        BENCH_IMPL=scenario.impl,
        BENCH_SQLITE_PATH=str(OUT_DIR / "bench.sqlite3"),
        BENCH_PG_NAME=PG_DB_NAME,
        DJANGO_SETTINGS_MODULE="benchproj.settings",
        PYTHONUNBUFFERED="1",
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH_DIR), env.get("PYTHONPATH")]))
    return env


def run_scenario(scenario: Scenario, tasks: int, rep: int, timeout: float) -> Run:
    env = scenario_env(scenario)
    try:
        reset_database(scenario.db)
    except Exception as exc:
        return Run(ok=False, error=f"could not recreate the {scenario.db} database: {exc!r}")

    prep = subprocess.run(
        [sys.executable, str(BENCH_DIR / "_child.py"), "prepare", str(tasks)],
        cwd=BENCH_DIR,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if prep.returncode != 0:
        return Run(ok=False, error=f"migrate/enqueue failed (exit {prep.returncode}):\n{tail(prep.stderr)}")
    prepared = json.loads(prep.stdout.strip().splitlines()[-1])

    commands = worker_commands(scenario)
    if isinstance(commands, str):
        return Run(ok=False, error=commands, enqueue_s=prepared["enqueue_s"])

    logs: list[Path] = []
    procs: list[subprocess.Popen[bytes]] = []
    started = time.perf_counter()
    for i, cmd in enumerate(commands):
        log = LOG_DIR / f"{scenario.db}-{scenario.impl}x{scenario.procs}-r{rep}-p{i + 1}.log"
        logs.append(log)
        with log.open("wb") as fh:
            fh.write(f"$ {shlex.join(cmd)}\n".encode())
            fh.flush()
            procs.append(
                subprocess.Popen(cmd, cwd=BENCH_DIR, env=env, stdin=subprocess.DEVNULL, stdout=fh, stderr=fh)
            )
    exit_codes: list[int | None] = []
    deadline = started + timeout
    for proc in procs:
        try:
            exit_codes.append(proc.wait(timeout=max(0.0, deadline - time.perf_counter())))
        except subprocess.TimeoutExpired:
            exit_codes.append(None)
    wall = time.perf_counter() - started
    for proc, code in zip(procs, exit_codes, strict=True):
        if code is None:
            proc.kill()
            proc.wait()

    inspected = inspect(env)
    run = Run(
        ok=False,
        wall_s=wall,
        enqueue_s=prepared["enqueue_s"],
        enqueue_method=prepared["enqueue_method"],
        counts=inspected.get("counts", {}),
        exit_codes=exit_codes,
        logs=[str(p.relative_to(REPO_DIR)) for p in logs],
        span_s=span_seconds(inspected.get("first_start"), inspected.get("last_finish")),
    )
    problems = []
    if None in exit_codes:
        problems.append(f"killed after the {timeout:.0f} s timeout")
    if any(code not in (0, None) for code in exit_codes):
        problems.append(f"worker exit codes {exit_codes}")
    if "error" in inspected:
        problems.append(f"could not read the results: {inspected['error']}")
    elif run.counts != {"SUCCESSFUL": tasks}:
        problems.append(f"expected {{'SUCCESSFUL': {tasks}}} in the database, found {run.counts}")
    if problems:
        log_tails = "\n".join(
            f"--- {p.relative_to(REPO_DIR)} (last lines):\n{tail(p.read_text())}" for p in logs
        )
        run.error = "; ".join(problems) + "\n" + log_tails
    else:
        run.ok = True
    return run


def worker_commands(scenario: Scenario) -> list[list[str]] | str:
    if scenario.impl == "fasttasks":
        exe = BIN_DIR / "fasttasks-worker"
        if not exe.exists():
            return f"{exe} not found: build fasttasks into this venv first (make build)"
        return [
            [
                str(exe),
                "--batch",
                "--concurrency",
                str(scenario.concurrency),
                "--settings",
                "benchproj.settings",
                "--pythonpath",
                str(BENCH_DIR),
                "--verbosity",
                "0",
            ]
        ]
    # django-tasks-db's recommended settings for throughput: no start-up jitter, no sleep between tasks.
    cmd = [sys.executable, "manage.py", "db_worker", "--batch", "--no-startup-delay", "--interval", "0"]
    return [[*cmd, "--verbosity", "0"] for _ in range(scenario.procs)]


def inspect(env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(BENCH_DIR / "_child.py"), "inspect"],
        cwd=BENCH_DIR,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return {"error": tail(proc.stderr)}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def span_seconds(first: str | None, last: str | None) -> float | None:
    if not first or not last:
        return None
    try:
        a, b = dt.datetime.fromisoformat(first), dt.datetime.fromisoformat(last)
        if (a.tzinfo is None) != (b.tzinfo is None):
            a, b = a.replace(tzinfo=None), b.replace(tzinfo=None)
        seconds = (b - a).total_seconds()
    except ValueError:
        return None
    return seconds if seconds > 0 else None


# --- databases ----------------------------------------------------------------------------------------


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


def reset_database(db: str) -> None:
    if db == "sqlite":
        for suffix in ("", "-wal", "-shm", "-journal"):
            (OUT_DIR / f"bench.sqlite3{suffix}").unlink(missing_ok=True)
        return
    from psycopg import sql

    with pg_connect("postgres") as conn:
        name = sql.Identifier(PG_DB_NAME)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))


# --- reporting ----------------------------------------------------------------------------------------

SETTINGS_NOTE = {
    "fasttasks": "fasttasks-worker --batch --concurrency C --verbosity 0",
    "django-tasks-db": "manage.py db_worker --batch --no-startup-delay --interval 0 --verbosity 0, "
    "P processes at once",
    "databases": "CONN_MAX_AGE=600 for both; SQLite: WAL, synchronous=NORMAL, timeout 20 s; "
    "ANALYZE of the task table after enqueue",
    "enqueue": "not timed in the drain; fasttasks.enqueue_many for fasttasks, task.enqueue() for "
    "django-tasks-db (it has no bulk enqueue), in one transaction",
    "wall": "worker processes start -> all exited (includes interpreter and Django start-up)",
    "span": "first started_at -> last finished_at recorded in the database",
}


def summarize(scenarios: list[Scenario], runs: dict[str, list[Run]], tasks: int) -> list[dict[str, Any]]:
    out = []
    for s in scenarios:
        rs = runs[s.key]
        good = [r for r in rs if r.ok and r.wall_s]
        wall_rates = [tasks / r.wall_s for r in good if r.wall_s]
        span_rates = [tasks / r.span_s for r in good if r.span_s]
        out.append(
            {
                "key": s.key,
                "db": s.db,
                "impl": IMPL_LABELS[s.impl],
                "processes": s.procs,
                "concurrency": s.concurrency if s.impl == "fasttasks" else 1,
                "label": s.label,
                "ok_runs": len(good),
                "failed_runs": len(rs) - len(good),
                "first_error": next((r.error for r in rs if not r.ok), None),
                "wall_tasks_per_s": stats(wall_rates),
                "span_tasks_per_s": stats(span_rates),
                "enqueue_tasks_per_s": stats([tasks / r.enqueue_s for r in good if r.enqueue_s]),
            }
        )
    by_key = {s["key"]: s for s in out}
    for s in out:
        if s["impl"] != "fasttasks":
            continue
        ratios = {}
        for other in out:
            if other["db"] == s["db"] and other["impl"] != "fasttasks":
                ratios[f"vs_dtdb_x{other['processes']}"] = {
                    kind: ratio(s[kind], other[kind]) for kind in ("wall_tasks_per_s", "span_tasks_per_s")
                }
        by_key[s["key"]]["ratios"] = ratios
    return out


def stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def ratio(a: dict[str, float] | None, b: dict[str, float] | None) -> float | None:
    if not a or not b or not b["median"]:
        return None
    return a["median"] / b["median"]


def fmt_stats(st: dict[str, float] | None) -> str:
    if not st:
        return "—"
    if st["n"] == 1:
        return f"{st['median']:,.0f}"
    return f"{st['median']:,.0f} ({st['min']:,.0f}-{st['max']:,.0f})"


def fmt_ratio(r: float | None) -> str:
    return f"{r:.1f}x" if r is not None else "n/a"


def table_rows(summary: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for s in summary:
        status = (
            "ok" if not s["failed_runs"] else f"FAILED {s['failed_runs']}/{s['ok_runs'] + s['failed_runs']}"
        )
        rows.append(
            [
                s["db"],
                s["label"],
                str(s["processes"]),
                fmt_stats(s["wall_tasks_per_s"]),
                fmt_stats(s["span_tasks_per_s"]),
                status,
            ]
        )
    return rows


TABLE_HEAD = ["database", "worker", "processes", "tasks/s wall", "tasks/s span", "runs"]


def ratio_lines(summary: list[dict[str, Any]]) -> list[str]:
    lines = []
    for s in summary:
        for name, r in s.get("ratios", {}).items():
            procs = name.rsplit("x", 1)[1]
            lines.append(
                f"{s['db']}: fasttasks / django-tasks-db x{procs} = "
                f"{fmt_ratio(r['wall_tasks_per_s'])} (wall), {fmt_ratio(r['span_tasks_per_s'])} (span)"
            )
    return lines


def render_table(summary: list[dict[str, Any]], tasks: int) -> str:
    rows = [TABLE_HEAD, *table_rows(summary)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_HEAD))]
    lines = [f"drain of {tasks:,} no-op tasks (median, min-max when repeated)"]
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.extend(ratio_lines(summary) or ["(no ratio: a fasttasks or django-tasks-db scenario is missing)"])
    return "\n".join(lines)


def append_results_md(report: dict[str, Any], summary: list[dict[str, Any]]) -> None:
    m, v = report["machine"], report["versions"]
    date = dt.datetime.fromisoformat(report["date"]).strftime("%Y-%m-%d %H:%M UTC")
    md = [
        "",
        f"## {date} — drain {report['tasks']:,} no-op tasks, {report['repeat']} run(s) each",
        "",
        f"- Command: `{report['command']}`",
        f"- Machine: {m['nproc']} CPUs (nproc), {m['cpu_model']}, {m['memory']}, {m['platform']}",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val is not None),
        f"- fasttasks: `{SETTINGS_NOTE['fasttasks']}`; django-tasks-db: `{SETTINGS_NOTE['django-tasks-db']}`",
        f"- Databases: {SETTINGS_NOTE['databases']}; enqueue: {SETTINGS_NOTE['enqueue']}",
        f"- wall = {SETTINGS_NOTE['wall']}; span = {SETTINGS_NOTE['span']}",
        "",
        "| " + " | ".join(TABLE_HEAD) + " |",
        "|" + "|".join("---" for _ in TABLE_HEAD) + "|",
        *("| " + " | ".join(row) + " |" for row in table_rows(summary)),
        "",
        *(f"- {line}" for line in ratio_lines(summary)),
        "",
    ]
    if not RESULTS_MD.exists():
        RESULTS_MD.write_text(RESULTS_HEADER)
    with RESULTS_MD.open("a") as fh:
        fh.write("\n".join(md))


RESULTS_HEADER = """# Benchmark results

Appended by `make bench` (`benches/run.py`), newest last. Each section records the date, the machine, the
versions and the exact command; the raw figures are in `benches/out/*.json` on the machine that ran them.
fasttasks and django-tasks-db always run in the same invocation, interleaved, on a fresh database each.
"""


# --- machine and versions -----------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu_model = platform.processor() or "unknown"
    memory = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB RAM"
                break
    except OSError:
        pass
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"nproc": nproc, "cpu_model": cpu_model, "memory": memory, "platform": platform.platform()}


def machine_line() -> str:
    m = machine_info()
    return f"{m['nproc']} CPUs, {m['cpu_model']}, {m['memory']}"


def versions(pg_error: str | None) -> dict[str, str | None]:
    def dist(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    pg_version = None
    if not pg_error:
        try:
            with pg_connect("postgres") as conn:
                shown = {
                    name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
                    for name in (
                        "server_version",
                        "fsync",
                        "synchronous_commit",
                        "shared_buffers",
                        "autovacuum",
                    )
                }
                pg_version = (
                    shown.pop("server_version") + " (" + ", ".join(f"{k}={v}" for k, v in shown.items()) + ")"
                )
        except Exception:
            pg_version = None
    return {
        "Python": platform.python_version(),
        "Django": dist("django"),
        "django-tasks-db": dist("django-tasks-db"),
        "fasttasks": f"{dist('fasttasks')} (git {git_revision()})",
        "PostgreSQL": pg_version,
        "SQLite (Python's)": sqlite3.sqlite_version,
    }


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_DIR,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{rev}{'+dirty' if dirty else ''}"


def command_line(args: argparse.Namespace) -> str:
    make = os.environ.get("MAKELEVEL") and os.environ.get("BENCH_MAKE_TARGET")
    argv = shlex.join([".venv/bin/python", "benches/run.py", *sys.argv[1:]])
    return f"make {make} ({argv})" if make else argv


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())


if __name__ == "__main__":
    sys.exit(main())
