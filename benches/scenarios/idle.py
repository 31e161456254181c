"""idle: what a worker costs when there is nothing to do.

Every target's worker runs at the same time (each on its own database, with an empty queue):
fasttasks with default flags, django-tasks-db ``db_worker --no-startup-delay`` with its default
``--interval 1``. After a settle time (3 s), for a window of ~20 s: PostgreSQL transactions caused by
each worker (``xact_commit + xact_rollback`` of its database in ``pg_stat_database``, read from a
connection to the ``postgres`` database, so the measuring queries are not counted; PostgreSQL flushes
these statistics about once a second, so the figure is accurate to about +-1 transaction per window)
and the CPU % of the worker process (utime + stime from /proc/PID/stat, every thread).
"""

from __future__ import annotations

import time

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
    cpu_seconds,
    dtdb_cmd,
    pg_connect,
    status_counts,
    worker_cmds,
)

ID = "idle"
MAX_XACTS_PER_S = 1.0
# Less is better for an idle worker: fewer transactions, less CPU.
XACTS = Measure("/s", digits=2, higher_better=False)
CPU = Measure(" %", digits=2, higher_better=False)


def pg_xacts(names: list[str]) -> dict[str, int]:
    if not names:
        return {}
    with pg_connect("postgres") as conn:
        rows = conn.execute(
            "SELECT datname, xact_commit + xact_rollback FROM pg_stat_database WHERE datname = ANY(%s)",
            [names],
        ).fetchall()
    return {name: int(n) for name, n in rows}


def measure_all(cfg: Config, rep: int) -> dict[tuple[str, str], Metrics]:
    targets = [Target(db, impl) for db in cfg.dbs for impl in cfg.impls]
    workers: dict[Target, Workers] = {}
    try:
        for t in targets:
            t.reset()
            child(t, "migrate")
        for t in targets:
            cmds = (
                worker_cmds(cfg, t, batch=False)
                if t.impl == "fasttasks"
                else [dtdb_cmd(interval=1, batch=False)]
            )
            workers[t] = Workers(t, cmds, f"idle-{t.db}-{t.impl}-r{rep}")
        time.sleep(cfg.sizes["idle_settle"])
        for t, w in workers.items():
            if w.procs[0].poll() is not None:
                w.check_exit_codes()
                raise BenchError(f"the {t.name} worker exited during the idle scenario")
        pg_names = [t.pg_name for t in targets if t.db == "postgres"]
        cpu0 = {t: cpu_seconds(w.pids[0]) for t, w in workers.items()}
        x0, t0 = pg_xacts(pg_names), time.perf_counter()
        time.sleep(cfg.sizes["idle_window"])
        x1, t1 = pg_xacts(pg_names), time.perf_counter()
        cpu1 = {t: cpu_seconds(w.pids[0]) for t, w in workers.items()}
    finally:
        errors = []
        for t, w in workers.items():
            try:
                w.stop()
            except Exception as exc:
                errors.append(f"{t.name}: {exc}")
    if errors:
        raise BenchError("; ".join(errors))
    window = t1 - t0
    out = {}
    for t in targets:
        if status_counts(t):
            raise BenchError(f"{t.name}: the queue was not empty: {status_counts(t)}")
        metrics: Metrics = {"window_s": window}
        a, b = cpu0[t], cpu1[t]
        if a is not None and b is not None:
            metrics["cpu_pct"] = 100.0 * (b - a) / window
        if t.db == "postgres":
            metrics["xacts_per_s"] = (x1[t.pg_name] - x0[t.pg_name]) / window
        out[(t.db, t.impl)] = metrics
    return out


def cases(cfg: Config, selected: set[str]) -> list[Case]:
    if ID not in selected:
        return []
    return [Case(ID, "", "*", "*", run_many=measure_all, note="every database and implementation at once")]


def rows(cfg: Config, stats: Stats, selected: set[str]) -> list[Row]:
    if ID not in selected:
        return []
    out = []
    window = f"{cfg.sizes['idle_window']:g} s after {cfg.sizes['idle_settle']:g} s"
    for db in cfg.dbs:
        if db == "postgres":  # transactions are read from pg_stat_database: PostgreSQL only
            what = f"PostgreSQL transactions/s of an idle worker, {window} (dtdb: db_worker --interval 1)"
            goal = MAX_XACTS_PER_S
            out.append(
                compare_row(stats, ID, db, "xacts_per_s", what, XACTS, target=f"<= {goal:g}/s", goal=goal)
            )
        what = f"CPU of an idle worker process, {window}"
        out.append(compare_row(stats, ID, db, "cpu_pct", what, CPU, target="(report)"))
    return out
