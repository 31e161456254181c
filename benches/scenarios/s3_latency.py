"""S3: latency from the commit of an enqueue to the start of the task, idle worker in another process.

An enqueuer process sends ``stamp`` tasks open-loop at 50/s (``task.enqueue()`` in autocommit, so it has
committed when it returns) and records ``time.time()`` right after each ``enqueue()`` returns; the task
returns ``time.time()`` taken at its first line; the two are matched by result id. A probe task first
makes sure the worker is up and the first 10 tasks are not counted. fasttasks: ``fasttasks-worker``
with default flags (wake-ups: LISTEN/NOTIFY on PostgreSQL, ``PRAGMA data_version`` on SQLite).
django-tasks-db: ``db_worker --interval 0.05`` (it polls; every 50 ms here, 1 s by default).
"""

from __future__ import annotations

import math
from functools import partial

from _common import (
    BenchError,
    Case,
    Config,
    Measure,
    Metrics,
    Row,
    Stats,
    Target,
    Workers,
    child,
    compare_row,
    dtdb_cmd,
    expect_counts,
    targets,
    worker_cmds,
)

ID = "S3"
RATE = 50.0
WARMUP = 10
DTDB_INTERVAL = 0.05
TARGET = {"postgres": {"p50": 2.0, "p99": 10.0}, "sqlite": {"p50": 5.0, "p99": 20.0}}
PERCENTILES = ("p50", "p90", "p99", "max")
MILLISECONDS = Measure(" ms", digits=2, higher_better=False)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def measure(cfg: Config, rep: int, target: Target) -> Metrics:
    count = cfg.size("s3")
    target.reset()
    child(target, "migrate")
    if target.impl == "fasttasks":
        cmds = worker_cmds(cfg, target, batch=False)
    else:
        cmds = [dtdb_cmd(interval=DTDB_INTERVAL, batch=False)]
    workers = Workers(target, cmds, f"S3-{target.db}-{target.impl}-r{rep}")
    try:
        result = child(target, "latency", count, RATE, WARMUP, timeout=120 + 2 * count / RATE)
    finally:
        workers.stop()
    expect_counts(target, {"SUCCESSFUL": count + WARMUP + 1})
    latencies = result["latencies_ms"]
    if len(latencies) != count:
        raise BenchError(f"expected {count} latencies, got {len(latencies)}")
    return {
        "p50": percentile(latencies, 50),
        "p90": percentile(latencies, 90),
        "p99": percentile(latencies, 99),
        "max": max(latencies),
        "min": min(latencies),
        "rate_sent": result["rate_sent"],
        "max_behind_ms": result["max_behind_ms"],
    }


def cases(cfg: Config, selected: set[str]) -> list[Case]:
    if ID not in selected:
        return []
    note = f"{cfg.size('s3'):,} tasks at {RATE:g}/s"
    return [Case(ID, "", t.db, t.impl, run=partial(measure, target=t), note=note) for t in targets(cfg)]


def rows(cfg: Config, stats: Stats, selected: set[str]) -> list[Row]:
    if ID not in selected:
        return []
    out = []
    for db in cfg.dbs:
        for name in PERCENTILES:
            goal = TARGET[db].get(name)
            what = (
                f"enqueue commit -> task start, {name}, {cfg.size('s3'):,} tasks open-loop at {RATE:g}/s "
                f"(dtdb: db_worker --interval {DTDB_INTERVAL:g})"
            )
            target = f"<= {goal:g} ms" if goal else ""
            out.append(compare_row(stats, ID, db, name, what, MILLISECONDS, target=target, goal=goal))
    return out
