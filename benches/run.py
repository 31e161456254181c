#!/usr/bin/env python
"""The benchmark suite: fasttasks against django-tasks-db ("dtdb"), SQLite and PostgreSQL, one run.

Scenarios (one module each in ``benches/scenarios/``; targets are issue 3's):

    S1       drain 100,000 pre-enqueued no-op tasks, one fasttasks-worker (default flags + --batch)
    S2a      task.enqueue() one call at a time, one thread, autocommit
    S2b      await task.aenqueue() from 8 concurrent coroutines
    S2c      bulk enqueue, 1,000 per fasttasks.enqueue_many() call
    S3       enqueue-commit -> task-start latency, idle worker, 50 tasks/s open loop (p50/p90/p99/max)
    S4       1 ms I/O tasks (async and sync) at --concurrency 16 / 64 / 256
    S5       worker RSS while draining 1,000,000 no-op tasks
    S6       S1 over 5,000,000 finished rows
    idle     an idle worker's PostgreSQL transactions/s and CPU %
    R1       database faults mid-drain (issue 4): PostgreSQL restart, pg_terminate_backend, SQLite locked;
             the rate before, the time back to >= 95 % of it, the rate after, tasks lost, worker alive
             (restarts the local PostgreSQL cluster: run nothing else against it meanwhile)
    ceiling  the no-Python ceiling (Rust no-op executor), for reference

Every repetition runs every selected scenario on every database for both implementations, interleaved
(so that machine noise hits them alike), each on a fresh database; the summary gives the median (min-max)
of the repetitions, the ratio to django-tasks-db, the target and whether it is met. django-tasks-db runs
fewer tasks where its full size would take too long (the table says so); its figures are rates all the
same. A full run writes ``benches/out/bench-<date>.json`` and appends a dated section to
``benches/RESULTS.md``; it exits non-zero if any scenario failed (a wrong count, a worker that failed).
Targets not met do not change the exit code.

    .venv/bin/python benches/run.py                     # make bench: everything, 3 repetitions (~35 min)
    .venv/bin/python benches/run.py --quick             # make bench-quick: tiny sizes, once, records nothing
    .venv/bin/python benches/run.py --scenarios S1,S3 --db sqlite --quick
    .venv/bin/python benches/run.py --scenarios S1 --impl fasttasks --worker-args "--concurrency 64"
    .venv/bin/python benches/run.py --scenarios S4 --size s4=5000,s4_dtdb=500 --repeat 1 --no-record
    .venv/bin/python benches/run.py --scenarios R1 --db postgres   # database faults (~6 min, 6 restarts)
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import importlib.metadata
import json
import os
import platform
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scenarios
from _common import (
    LOG_DIR,
    OUT_DIR,
    REPO_DIR,
    BenchError,
    Case,
    Config,
    Metrics,
    Row,
    Stats,
    check_postgres,
    pg_connect,
    rel,
    stat,
)

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"

# Task counts and durations; keys ending in _dtdb are django-tasks-db's (smaller where it is ~100x slower).
FULL_SIZES: dict[str, float] = {
    "s1": 100_000,
    "s1_dtdb": 10_000,
    "s2a": 5_000,
    "s2a_dtdb": 5_000,
    "s2b": 5_000,
    "s2b_dtdb": 5_000,
    "s2c": 100_000,
    "s2c_dtdb": 10_000,
    "s3": 1_000,  # 20 s at 50/s, both implementations
    "s4": 20_000,
    "s4_dtdb": 2_000,
    "s5": 1_000_000,
    "s5_dtdb": 5_000,
    "s5_reps": 1,
    "rss_period": 0.5,
    "s6_rows": 5_000_000,
    "s6": 100_000,
    "s6_dtdb": 10_000,
    "idle_settle": 3,
    "idle_window": 20,
    "r1": 150_000,
    "r1_dtdb": 5_000,
    "r1_settle": 2,  # seconds of drain (warm-up) before the window that measures the rate before
    "r1_before": 5,  # seconds of steady drain before the fault that give the rate before
    "r1_after": 10,  # seconds after the database is back: the rate after, the recovery goal
    "r1_lock": 3,  # seconds SQLite stays locked
    "r1_reps": 3,
    "ceiling_reps": 1,
}
QUICK_SIZES: dict[str, float] = {
    "s1": 2_000,
    "s1_dtdb": 300,
    "s2a": 300,
    "s2a_dtdb": 300,
    "s2b": 300,
    "s2b_dtdb": 300,
    "s2c": 5_000,
    "s2c_dtdb": 300,
    "s3": 100,
    "s4": 1_000,
    "s4_dtdb": 100,
    "s5": 20_000,
    "s5_dtdb": 300,
    "s5_reps": 1,
    "rss_period": 0.05,  # the quick drain lasts about a second
    "s6_rows": 20_000,
    "s6": 2_000,
    "s6_dtdb": 300,
    "idle_settle": 1,
    "idle_window": 3,
    "r1": 40_000,
    "r1_dtdb": 1_000,
    "r1_settle": 0.5,
    "r1_before": 1,
    "r1_after": 1,
    "r1_lock": 1,
    "r1_reps": 1,
    "ceiling_reps": 1,
}

SETTINGS_NOTES = [
    "fasttasks: `fasttasks-worker --batch --verbosity 0` with its default flags (concurrency 8) plus "
    "`--worker-args`; S4 adds `--concurrency W`; S3 and idle run it without `--batch`",
    "django-tasks-db: `manage.py db_worker --batch --no-startup-delay --interval 0 --verbosity 0` "
    "(one process; two in S4); S3: `--interval 0.05` without `--batch`; idle: the default `--interval 1`",
    "databases: one fresh database per measurement; CONN_MAX_AGE=600 for both; SQLite: WAL, "
    "synchronous=NORMAL, timeout 20 s; ANALYZE of the task table after the (untimed) enqueue of a drain",
    "drain rates (S1, S4, S5, S6) = tasks / span, span = first started_at -> last finished_at in the "
    "database (no interpreter or Django start-up); `wall_rate` in the JSON includes them",
    "enqueue for the drains: fasttasks.enqueue_many, 1,000 per call and transaction; django-tasks-db: "
    "task.enqueue(), 1,000 per transaction; not timed",
    "ratio = fasttasks / django-tasks-db for rates, django-tasks-db / fasttasks for latencies, memory "
    "and idle cost (so > 1 always means fasttasks is better)",
    "R1: `fasttasks-worker` without `--batch` (default flags, `--verbosity 1`) and `db_worker --interval 0` "
    "without `--batch`, draining a 1 ms sync task that also appends its id to a file (runs per task); "
    "rates from `finished_at` in 0.5 s buckets; SQLite lock case: busy timeout 0.2 s for both",
]


def main() -> int:
    args = parse_args()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    lock = take_lock()  # noqa: F841 - held until exit
    # SIGTERM runs the clean-up below (the S6 history is several GB) instead of dying on the spot.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sizes = dict(QUICK_SIZES if args.quick else FULL_SIZES)
    sizes.update(args.size)
    cfg = Config(
        quick=args.quick,
        repeat=args.repeat,
        dbs=args.db,
        impls=args.impl,
        sizes=sizes,
        worker_args=shlex.split(args.worker_args),
    )
    selected = set(args.scenarios)
    began, started_at = time.perf_counter(), dt.datetime.now(dt.timezone.utc)
    print(f"# benchmark suite: {', '.join(args.scenarios)}; {', '.join(cfg.dbs)}; {', '.join(cfg.impls)}")
    print(f"# {cfg.repeat} repetition(s){' (quick)' if cfg.quick else ''}; {machine_line()}", flush=True)
    if "postgres" in cfg.dbs:
        cfg.pg_error = check_postgres()
        if cfg.pg_error:
            print(f"PostgreSQL is not reachable: {cfg.pg_error}", file=sys.stderr)
            print("(start it, or run with --db sqlite)", file=sys.stderr)
            return 1

    cases: list[Case] = [c for module in scenarios.MODULES for c in module.cases(cfg, selected)]
    order = {s: i for i, s in enumerate(scenarios.ALL)}
    cases.sort(key=lambda c: order[c.scenario])  # stable: keeps each module's db/impl interleaving
    runs: list[dict[str, Any]] = []
    try:
        for rep in range(1, cfg.repeat + 1):
            for case in cases:
                if case.max_reps is not None and rep > case.max_reps:
                    continue
                runs.extend(run_case(cfg, case, rep, began))
    finally:
        for module in scenarios.MODULES:
            cleanup = getattr(module, "cleanup", None)
            if cleanup is not None:
                cleanup()

    stats = aggregate(runs)
    rows = [row for module in scenarios.MODULES for row in module.rows(cfg, stats, selected)]
    rows.sort(key=lambda r: order[r.scenario])
    failed = [r for r in runs if not r["ok"]]
    elapsed = time.perf_counter() - began
    print()
    print(render_text(rows, cfg.quick))
    print(f"\n{len(runs) - len(failed)} measurement(s) ok, {len(failed)} failed, in {elapsed / 60:.1f} min")

    report = {
        "kind": "suite",
        "date": started_at.isoformat(timespec="seconds"),
        "command": command_line(),
        "quick": cfg.quick,
        "repeat": cfg.repeat,
        "scenarios": args.scenarios,
        "databases": cfg.dbs,
        "implementations": cfg.impls,
        "worker_args": cfg.worker_args,
        "sizes": cfg.sizes,
        "elapsed_s": elapsed,
        "machine": machine_info(),
        "versions": versions(),
        "settings": SETTINGS_NOTES,
        "summary": [asdict(r) for r in rows],
        "stats": [
            {"scenario": k[0], "variant": k[1], "db": k[2], "impl": k[3], "metrics": v}
            for k, v in stats.items()
        ],
        "runs": runs,
    }
    if cfg.quick:
        out_file = OUT_DIR / "quick.json"  # the quick run records nothing: overwritten every time
    else:
        out_file = OUT_DIR / f"bench-{started_at.strftime('%Y%m%dT%H%M%SZ')}.json"
    out_file.write_text(json.dumps(report, indent=2) + "\n")
    print(f"raw results: {rel(out_file)}")

    if failed:
        print(f"\n{len(failed)} measurement(s) FAILED:", file=sys.stderr)
        for r in failed:
            print(f"  - {r['label']} (repetition {r['rep']}): {first_line(r['error'])}", file=sys.stderr)
        if args.record:
            print("benches/RESULTS.md not updated (it only records runs where everything succeeded)")
        return 1
    if args.record:
        append_results_md(report, rows)
        print("appended to benches/RESULTS.md")
    return 0


def take_lock() -> Any:
    """One benchmark at a time: runs share the databases (and two would measure each other)."""
    fh = (OUT_DIR / ".lock").open("a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        print(
            f"# waiting for another benchmark run to finish ({fh.read().strip() or 'unknown'}) ...",
            flush=True,
        )
        fcntl.flock(fh, fcntl.LOCK_EX)
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()}, started {dt.datetime.now().isoformat(timespec='seconds')}\n")
    fh.flush()
    return fh


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scenarios",
        default=None,
        help=f"comma list of {','.join(scenarios.ALL)} (default: all; --quick: all but ceiling)",
    )
    parser.add_argument("--db", default="sqlite,postgres", help="comma list of sqlite,postgres")
    parser.add_argument("--impl", default="fasttasks,dtdb", help="comma list of fasttasks,dtdb")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, once, nothing recorded")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions (default 3; --quick 1)")
    parser.add_argument(
        "--worker-args",
        default="",
        help='extra fasttasks-worker flags for every scenario, e.g. "--concurrency 64" (S4 still sets W)',
    )
    parser.add_argument(
        "--size",
        default="",
        help="override sizes, e.g. s1=50000,s1_dtdb=2000,s6_rows=1000000 (keys: "
        + ", ".join(FULL_SIZES)
        + ")",
    )
    record = parser.add_mutually_exclusive_group()
    record.add_argument("--record", dest="record", action="store_true", default=None)
    record.add_argument(
        "--no-record", dest="record", action="store_false", help="do not append to RESULTS.md"
    )
    args = parser.parse_args()
    default = scenarios.QUICK if args.quick else scenarios.ALL
    args.scenarios = split_choices(parser, "--scenarios", args.scenarios or ",".join(default), scenarios.ALL)
    args.db = split_choices(parser, "--db", args.db, ("sqlite", "postgres"))
    args.impl = split_choices(parser, "--impl", args.impl, ("fasttasks", "dtdb"))
    args.repeat = args.repeat or (1 if args.quick else 3)
    if args.repeat < 1:
        parser.error("--repeat must be positive")
    if args.record is None:
        args.record = not args.quick
    sizes = {}
    for item in filter(None, (s.strip() for s in args.size.split(","))):
        key, _, value = item.partition("=")
        if key not in FULL_SIZES or not value:
            parser.error(f"--size: unknown or empty {item!r}")
        try:
            sizes[key] = float(value)
        except ValueError:
            parser.error(f"--size: {item!r} is not a number")
    args.size = sizes
    return args


def split_choices(
    parser: argparse.ArgumentParser, flag: str, value: str, allowed: tuple[str, ...]
) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        parser.error(f"{flag}: choose from {', '.join(allowed)}")
    return [a for a in allowed if a in items]  # canonical order


# --- running ----------------------------------------------------------------------------------------


def run_case(cfg: Config, case: Case, rep: int, began: float) -> list[dict[str, Any]]:
    clock = time.perf_counter() - began
    print(f"[{clock / 60:5.1f} min] [{rep}/{cfg.repeat}] {case.label} ...", end="", flush=True)
    t0 = time.perf_counter()
    try:
        if case.run_many is not None:
            measured = case.run_many(cfg, rep)
        else:
            assert case.run is not None
            measured = {(case.db, case.impl): case.run(cfg, rep)}
    except Exception as exc:
        error = str(exc) if isinstance(exc, BenchError) else traceback.format_exc()
        print(f" FAILED ({time.perf_counter() - t0:.0f} s)\n{indent(error)}", flush=True)
        return [
            {
                "scenario": case.scenario,
                "variant": case.variant,
                "db": case.db,
                "impl": case.impl,
                "rep": rep,
                "label": case.label,
                "ok": False,
                "error": error,
                "metrics": {},
            }
        ]
    print(f" {brief(measured)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return [
        {
            "scenario": case.scenario,
            "variant": case.variant,
            "db": db,
            "impl": impl,
            "rep": rep,
            "label": case.label,
            "ok": True,
            "error": None,
            "metrics": metrics,
        }
        for (db, impl), metrics in measured.items()
    ]


def brief(measured: dict[tuple[str, str], Metrics]) -> str:
    parts = []
    for (db, impl), m in measured.items():
        bits = []
        if "rate" in m:
            bits.append(f"{m['rate']:,.0f}/s")
        if "p50" in m:
            bits.append(f"p50 {m['p50']:.2f} ms, p99 {m['p99']:.2f} ms, max {m['max']:.1f} ms")
        if "rss_max_mb" in m:
            bits.append(
                f"RSS mark {m['rss_mark_mb']:.1f} / end {m['rss_end_mb']:.1f} / max {m['rss_max_mb']:.1f} MB"
            )
        if "xacts_per_s" in m:
            bits.append(f"{m['xacts_per_s']:.2f} xact/s")
        if "cpu_pct" in m:
            bits.append(f"CPU {m['cpu_pct']:.2f} %")
        if "rate_before" in m:
            recovery = f"{m['recovery_s']:.1f} s" if "recovery_s" in m else "never"
            worker = "alive" if m["survived"] else "DIED"
            bits.append(
                f"before {m['rate_before']:,.0f}/s, database away {m['down_s']:.1f} s, >= 95 % after "
                f"{recovery}, then {m['rate_after']:,.0f}/s ({m['after_pct']:.0f} %), lost {m['lost']:.0f}"
                f" (+ {m['left_ready']:.0f} READY), ran twice {m['twice']:.0f}, worker {worker}"
            )
        text = ", ".join(bits) or "no figures"
        parts.append(f"{db}/{impl}: {text}" if len(measured) > 1 else text)
    return "; ".join(parts)


def aggregate(runs: list[dict[str, Any]]) -> Stats:
    values: dict[tuple[str, str, str, str], dict[str, list[float]]] = {}
    for r in runs:
        if not r["ok"]:
            continue
        per_metric = values.setdefault((r["scenario"], r["variant"], r["db"], r["impl"]), {})
        for name, value in r["metrics"].items():
            if isinstance(value, (int, float)):  # R1 also keeps its curve and timeline (JSON only)
                per_metric.setdefault(name, []).append(float(value))
    out: Stats = {}
    for key, per_metric in values.items():
        out[key] = {name: st for name, vs in per_metric.items() if (st := stat(vs)) is not None}
    return out


# --- reporting --------------------------------------------------------------------------------------

HEAD = ["id", "scenario", "db", "fasttasks", "django-tasks-db", "ratio", "target", "met"]


def row_cells(r: Row) -> list[str]:
    return [r.scenario, r.what, r.db, r.fasttasks, r.dtdb, r.ratio, r.target, r.met]


def grouped(rows: list[Row]) -> dict[tuple[str, str], list[Row]]:
    """Rows of the same scenario and description together (one per database), in first-seen order."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.scenario, r.what), []).append(r)
    return groups


def render_text(rows: list[Row], quick: bool) -> str:
    """The summary for the terminal: one block per scenario row (the descriptions are long)."""
    lines = ["summary: median (min-max) over the repetitions; ratio > 1 = fasttasks better"]
    if quick:
        lines.append(
            "(quick run: tiny sizes, so the figures and the targets say little; nothing is recorded)"
        )
    for (scenario, what), members in grouped(rows).items():
        lines.append(f"\n{scenario}: {what}")
        for r in members:
            if r.met:
                goal = f"  [{'met' if r.met == 'yes' else 'NOT met'}: {r.target}]"
            else:
                goal = f"  [{r.target}]" if r.target else ""
            lines.append(
                f"  {r.db:8}  fasttasks {r.fasttasks}  |  dtdb {r.dtdb}  |  ratio {r.ratio or '-'}{goal}"
            )
    return "\n".join(lines)


def append_results_md(report: dict[str, Any], rows: list[Row]) -> None:
    m, v = report["machine"], report["versions"]
    date = dt.datetime.fromisoformat(report["date"]).strftime("%Y-%m-%d %H:%M UTC")
    met = [r for r in rows if r.met]
    md = [
        "",
        f"## {date} — benchmark suite ({', '.join(report['scenarios'])}), median (min-max) of "
        f"{report['repeat']} repetitions",
        "",
        f"- Command: `{report['command']}` ({report['elapsed_s'] / 60:.0f} min)",
        f"- Machine: {m['nproc']} CPUs (nproc), {m['cpu_model']}, {m['memory']}, {m['platform']}",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val is not None),
        *(f"- {note}" for note in SETTINGS_NOTES),
        f"- fasttasks-worker extra flags (`--worker-args`): `{shlex.join(report['worker_args']) or 'none'}`",
        f"- S5 and the ceiling: {report['sizes']['s5_reps']:g} and {report['sizes']['ceiling_reps']:g} "
        "repetition(s) (long drains); the other scenarios every repetition",
        f"- Targets met: {sum(r.met == 'yes' for r in met)} of {len(met)}",
        "",
        "| " + " | ".join(HEAD) + " |",
        "|" + "|".join("---" for _ in HEAD) + "|",
        *(
            "| " + " | ".join(cell.replace("|", "\\|") for cell in row_cells(r)) + " |"
            for members in grouped(rows).values()
            for r in members
        ),
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


# --- machine and versions ---------------------------------------------------------------------------


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


def versions() -> dict[str, str | None]:
    def dist(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    pg_version = None
    try:
        with pg_connect("postgres") as conn:
            shown = {
                name: conn.execute(f"SHOW {name}").fetchone()[0]
                for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers", "autovacuum")
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


def command_line() -> str:
    make = os.environ.get("MAKELEVEL") and os.environ.get("BENCH_MAKE_TARGET")
    argv = shlex.join([".venv/bin/python", "benches/run.py", *sys.argv[1:]])
    return f"make {make} ({argv})" if make else argv


def first_line(text: str | None) -> str:
    return (text or "unknown error").strip().splitlines()[0] if text and text.strip() else "unknown error"


def indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())


if __name__ == "__main__":
    sys.exit(main())
