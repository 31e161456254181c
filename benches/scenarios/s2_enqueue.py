"""S2a/S2b/S2c: enqueue rate from one process in autocommit mode, each on a fresh database.

- S2a: ``task.enqueue()`` one call at a time, one thread (each call its own transaction);
- S2b: ``await task.aenqueue()`` from 8 coroutines at once (``asyncio.gather`` of 8 loops);
- S2c: ``fasttasks.enqueue_many(task, [((), {})] * 1000)`` per call. django-tasks-db has no bulk API:
  its S2c figure is ``task.enqueue()`` per task inside one transaction per 1,000 (labelled so).
"""

from __future__ import annotations

from _common import (
    Case,
    Config,
    Metrics,
    Row,
    Stats,
    Target,
    child,
    compare_row,
    fmt_n,
    targets,
)

SCENARIOS = {
    "S2a": ("single", "task.enqueue() x{n}, one at a time, 1 thread, autocommit"),
    "S2b": ("async8", "await task.aenqueue() x{n} from 8 concurrent coroutines"),
    "S2c": (
        "bulk",
        "bulk enqueue x{n}, fasttasks.enqueue_many 1,000 per call "
        "(dtdb has none: enqueue() per task, 1 transaction per 1,000)",
    ),
}
TARGET: dict[str, dict[str, float | None]] = {
    "S2a": {"postgres": 2_500, "sqlite": 15_000},
    "S2b": {"postgres": 10_000, "sqlite": None},
    "S2c": {"postgres": 100_000, "sqlite": 150_000},
}


def count_for(cfg: Config, sid: str, impl: str) -> int:
    key = sid.lower()
    return cfg.size(key if impl == "fasttasks" else f"{key}_dtdb")


def cases(cfg: Config, selected: set[str]) -> list[Case]:
    out = []
    for sid, (mode, _) in SCENARIOS.items():
        if sid not in selected:
            continue
        for target in targets(cfg):
            count = count_for(cfg, sid, target.impl)

            def run(
                cfg: Config, rep: int, target: Target = target, mode: str = mode, n: int = count
            ) -> Metrics:
                target.reset()
                result = child(target, "enqueue", mode, n)
                return {"rate": result["rate"], "seconds": result["seconds"]}

            out.append(Case(sid, "", target.db, target.impl, run=run, note=f"{count:,} enqueues"))
    return out


def rows(cfg: Config, stats: Stats, selected: set[str]) -> list[Row]:
    out = []
    for sid, (_, what) in SCENARIOS.items():
        if sid not in selected:
            continue
        n_ours, n_theirs = count_for(cfg, sid, "fasttasks"), count_for(cfg, sid, "dtdb")
        text = what.format(n=f"{n_ours:,}") + ("" if n_ours == n_theirs else f"; dtdb: x{n_theirs:,}")
        for db in cfg.dbs:
            goal = TARGET[sid][db]
            target = f">= {fmt_n(goal)}/s" if goal else "(report only)"
            out.append(compare_row(stats, sid, db, "rate", text, target=target, goal=goal))
    return out
