"""S4: 1 ms I/O tasks at several concurrencies.

``async def sleep_async(): await asyncio.sleep(0.001)`` (coroutines on the worker's event loop) and,
separately, ``def sleep_sync(): time.sleep(0.001)`` (task threads), each drained by one
``fasttasks-worker --batch --concurrency W`` for W = 16, 64, 256. The target is 70% of what W slots of
1 ms allow, capped by the no-op drain rate (S1) measured in the same run on the same database.
django-tasks-db runs one task at a time per process: it gets two ``db_worker`` processes (one per core
here) and fewer tasks, the same figure for every W.
"""

from __future__ import annotations

from _common import (
    Case,
    Config,
    Metrics,
    Row,
    Stats,
    Target,
    case_stat,
    compare_row,
    fmt_n,
    worker_cmds,
)

from scenarios.s1_drain import drain

ID = "S4"
KINDS = {"async": "sleep_async", "sync": "sleep_sync"}
CONCURRENCIES = (16, 64, 256)
DTDB_PROCS = 2
SHARE = 0.70


def cases(cfg: Config, selected: set[str]) -> list[Case]:
    if ID not in selected:
        return []
    out = []
    for db in cfg.dbs:
        for kind, task in KINDS.items():
            for impl in cfg.impls:
                target = Target(db, impl)
                if impl == "fasttasks":
                    count = cfg.size("s4")
                    for w in CONCURRENCIES:

                        def run(
                            cfg: Config, rep: int, t: Target = target, w: int = w, task: str = task
                        ) -> Metrics:
                            return drain(
                                t,
                                task=task,
                                count=cfg.size("s4"),
                                cmds=worker_cmds(cfg, t, ft_extra=["--concurrency", str(w)]),
                                log_name=f"S4-{t.db}-{t.impl}-{task}-w{w}-r{rep}",
                            )

                        out.append(Case(ID, f"{kind} W={w}", db, impl, run=run, note=f"{count:,} tasks"))
                else:
                    count = cfg.size("s4_dtdb")

                    def run_dtdb(cfg: Config, rep: int, t: Target = target, task: str = task) -> Metrics:
                        return drain(
                            t,
                            task=task,
                            count=cfg.size("s4_dtdb"),
                            cmds=worker_cmds(cfg, t, dtdb_procs=DTDB_PROCS),
                            log_name=f"S4-{t.db}-{t.impl}-{task}-r{rep}",
                        )

                    out.append(
                        Case(
                            ID, kind, db, impl, run=run_dtdb, note=f"{count:,} tasks, x{DTDB_PROCS} processes"
                        )
                    )
    return out


def rows(cfg: Config, stats: Stats, selected: set[str]) -> list[Row]:
    if ID not in selected:
        return []
    out = []
    for db in cfg.dbs:
        s1 = case_stat(stats, "S1", "", db, "fasttasks", "rate")
        for kind, task in KINDS.items():
            for w in CONCURRENCIES:
                cap = float(w * 1000)
                if s1:
                    cap = min(cap, s1["median"])
                    why = f"{SHARE:.0%} of min({fmt_n(w * 1000)}, S1 {fmt_n(s1['median'])})"
                else:
                    why = f"{SHARE:.0%} of {fmt_n(w * 1000)}; S1 not run"
                goal = SHARE * cap
                what = (
                    f"1 ms {kind} I/O task ({task}), --concurrency {w}, {cfg.size('s4'):,} tasks "
                    f"(dtdb: db_worker x{DTDB_PROCS}, {cfg.size('s4_dtdb'):,} tasks)"
                )
                target = f">= {fmt_n(goal)}/s ({why})"
                # Without S1 the cap is only W slots of 1 ms: shown, but not judged. django-tasks-db has
                # no --concurrency: its one figure per kind stands against every W.
                row = compare_row(
                    stats,
                    ID,
                    db,
                    "rate",
                    what,
                    variant=f"{kind} W={w}",
                    their_variant=kind,
                    target=target,
                    goal=goal if s1 else None,
                )
                out.append(row)
    return out
