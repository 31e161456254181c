"""S1: drain pre-enqueued no-op tasks with one worker process.

fasttasks: one ``fasttasks-worker --batch`` with default flags (plus ``--worker-args``). django-tasks-db:
one ``manage.py db_worker --batch --no-startup-delay --interval 0``, on fewer tasks (it is ~100x slower);
its figure is a rate all the same. The rate is tasks / span, span = first ``started_at`` -> last
``finished_at`` in the database (the drain itself, without interpreter and Django start-up); the wall
rate (worker start -> exit) is in the JSON as ``wall_rate``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from _common import (
    Case,
    Config,
    Metrics,
    Row,
    Stats,
    Target,
    Workers,
    child,
    compare_row,
    expect_counts,
    fmt_n,
    rss_kb,
    span_seconds,
    targets,
    worker_cmds,
)

ID = "S1"
TARGET = {"postgres": 25_000, "sqlite": 40_000}


def drain(
    target: Target,
    *,
    task: str,
    count: int,
    cmds: list[list[str]],
    log_name: str,
    setup: Callable[[], None] | None = None,
    finished_before: int = 0,
    rss: list[tuple[float, int]] | None = None,
    rss_period: float = 0.5,
) -> Metrics:
    """Fresh database (or ``setup()``), enqueue ``count`` ``task`` (not timed), run ``cmds`` to the end.

    Checks that every task, and nothing else, ended SUCCESSFUL. When ``rss`` is a list, the first
    worker's (time.time(), VmRSS kB) is appended to it about every ``rss_period`` seconds.
    """
    if setup is None:
        target.reset()
    else:
        setup()
    prepared = child(target, "prepare", task, count)
    since = time.time()
    workers = Workers(target, cmds, log_name)
    sample = None
    if rss is not None:
        pid = workers.pids[0]

        def sample() -> None:
            kb = rss_kb(pid)
            if kb is not None:
                rss.append((time.time(), kb))

    wall = workers.wait(timeout=120 + count / 50, every=sample, period=rss_period if rss is not None else 0.5)
    expect_counts(target, {"SUCCESSFUL": finished_before + count})
    span = span_seconds(target, since=since)
    return {
        "rate": count / span,
        "wall_rate": count / wall,
        "span_s": span,
        "wall_s": wall,
        "enqueue_rate": count / prepared["enqueue_s"],
    }


def tasks_for(cfg: Config, impl: str, key: str) -> int:
    return cfg.size(key if impl == "fasttasks" else f"{key}_dtdb")


def cases(cfg: Config, selected: set[str]) -> list[Case]:
    if ID not in selected:
        return []
    out = []
    for target in targets(cfg):
        count = tasks_for(cfg, target.impl, "s1")

        def run(cfg: Config, rep: int, target: Target = target, count: int = count) -> Metrics:
            return drain(
                target,
                task="noop",
                count=count,
                cmds=worker_cmds(cfg, target),
                log_name=f"S1-{target.db}-{target.impl}-r{rep}",
            )

        out.append(Case(ID, "", target.db, target.impl, run=run, note=f"{count:,} tasks"))
    return out


def rows(cfg: Config, stats: Stats, selected: set[str]) -> list[Row]:
    if ID not in selected:
        return []
    what = (
        f"drain {tasks_for(cfg, 'fasttasks', 's1'):,} no-op, 1 worker process, default flags + --batch "
        f"(dtdb: {tasks_for(cfg, 'dtdb', 's1'):,} tasks, db_worker x1)"
    )
    return [
        compare_row(stats, ID, db, "rate", what, target=f">= {fmt_n(TARGET[db])}/s", goal=TARGET[db])
        for db in cfg.dbs
    ]
