"""S6: S1 with millions of finished (SUCCESSFUL) rows already in the task table.

The history is inserted with one SQL statement (``generate_series`` on PostgreSQL, a recursive CTE on
SQLite) with realistic values: time-ordered ids (UUIDv7 for fasttasks, random UUIDs as django-tasks-db
makes them), enqueued/started/finished over the last weeks, a worker id, then ``ANALYZE``. It is built
once per target and run (a template database on PostgreSQL, a file on SQLite) and copied before each
repetition; then the drain runs exactly as S1 does (same task counts, same worker flags).
"""

from __future__ import annotations

import sqlite3
import time

from _common import (
    BenchError,
    Case,
    Config,
    Metrics,
    Row,
    Stats,
    Target,
    case_stat,
    child,
    compare_row,
    fmt_n,
    pg_connect,
    targets,
    worker_cmds,
)

from scenarios.s1_drain import drain, tasks_for

ID = "S6"
SHARE = 0.85
STEP_MS = 500  # one finished task every 0.5 s: 5M rows cover about four weeks
WORKER_IDS = '["history-host-4242-0a1b2c3d"]'

_built: dict[Target, float] = {}  # template -> seconds it took to build

PG_SQL = {
    "fasttasks": """
INSERT INTO fasttasks_task (id, task_path, queue_name, backend_name, priority, status, args, kwargs,
    run_after, available_at, enqueued_at, started_at, last_attempted_at, finished_at, attempts,
    max_attempts, worker_ids, errors, return_value, worker_id, lease_token)
SELECT substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-7' || substr(r, 1, 3) || '-8' || substr(r, 4, 3)
        || '-' || substr(r, 7, 12),
    'benchproj.tasks.noop', 'default', 'default', 0, 'SUCCESSFUL', '[]', '{}',
    NULL, e, e, e + interval '2 ms', e + interval '2 ms', e + interval '3 ms', 1,
    1, %(worker_ids)s, '[]', 'null', NULL, NULL
FROM (
    SELECT e, lpad(to_hex((extract(epoch FROM e) * 1000)::bigint), 12, '0') AS h, md5(g::text) AS r
    FROM (
        SELECT g, now() - interval '1 hour' - (%(n)s - g) * (%(step)s * interval '1 ms') AS e
        FROM generate_series(1, %(n)s) AS g
    ) AS s
) AS t
""",
    "dtdb": """
INSERT INTO django_tasks_database_dbtaskresult (id, status, args_kwargs, priority, task_path, queue_name,
    backend_name, run_after, enqueued_at, started_at, finished_at, return_value, exception_class_path,
    traceback, worker_ids)
SELECT gen_random_uuid(), 'SUCCESSFUL', '{"args": [], "kwargs": {}}', 0, 'benchproj.tasks.noop',
    'default', 'default', '9999-01-01 00:00:00+00', e, e + interval '2 ms', e + interval '3 ms', NULL, '',
    '', %(worker_ids)s
FROM (
    SELECT now() - interval '1 hour' - (%(n)s - g) * (%(step)s * interval '1 ms') AS e
    FROM generate_series(1, %(n)s) AS g
) AS s
""",
}

SQLITE_TIME = "strftime('%Y-%m-%d %H:%M:%f', ({ms}) / 1000.0, 'unixepoch') || '000'"
SQLITE_SQL = {
    "fasttasks": f"""
INSERT INTO fasttasks_task (id, task_path, queue_name, backend_name, priority, status, args, kwargs,
    run_after, available_at, enqueued_at, started_at, last_attempted_at, finished_at, attempts,
    max_attempts, worker_ids, errors, return_value, worker_id, lease_token)
WITH RECURSIVE c(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM c WHERE g < :n)
SELECT printf('%08x-%04x-7%03x-8%03x-%012x', ms >> 16, ms & 65535, g & 4095, (g >> 12) & 4095, g),
    'benchproj.tasks.noop', 'default', 'default', 0, 'SUCCESSFUL', '[]', '{{}}',
    NULL, {SQLITE_TIME.format(ms="ms")}, {SQLITE_TIME.format(ms="ms")}, {SQLITE_TIME.format(ms="ms + 2")},
    {SQLITE_TIME.format(ms="ms + 2")}, {SQLITE_TIME.format(ms="ms + 3")}, 1,
    1, :worker_ids, '[]', 'null', NULL, NULL
FROM (SELECT g, :end_ms - (:n - g) * :step AS ms FROM c)
""",
    "dtdb": f"""
INSERT INTO django_tasks_database_dbtaskresult (id, status, args_kwargs, priority, task_path, queue_name,
    backend_name, run_after, enqueued_at, started_at, finished_at, return_value, exception_class_path,
    traceback, worker_ids)
WITH RECURSIVE c(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM c WHERE g < :n)
SELECT lower(hex(randomblob(16))), 'SUCCESSFUL', '{{"args": [], "kwargs": {{}}}}', 0, 'benchproj.tasks.noop',
    'default', 'default', '9999-01-01 00:00:00', {SQLITE_TIME.format(ms="ms")},
    {SQLITE_TIME.format(ms="ms + 2")}, {SQLITE_TIME.format(ms="ms + 3")}, NULL, '', '', :worker_ids
FROM (SELECT g, :end_ms - (:n - g) * :step AS ms FROM c)
""",
}


def template_of(target: Target) -> Target:
    return Target(target.db, target.impl, suffix="_s6tmpl")


def ensure_template(cfg: Config, target: Target) -> Target:
    """Build the template with ``s6_rows`` finished rows (once per run), return it."""
    tmpl = template_of(target)
    if tmpl in _built:
        return tmpl
    rows = cfg.size("s6_rows")
    print(f"    (building the S6 history: {rows:,} finished rows in {tmpl.name} ...", end="", flush=True)
    began = time.perf_counter()
    tmpl.reset()
    child(tmpl, "migrate")
    if target.db == "postgres":
        with pg_connect(tmpl.pg_name) as conn:
            conn.execute("SET maintenance_work_mem = '256MB'")
            conn.execute("SET work_mem = '64MB'")
            conn.execute(PG_SQL[target.impl], {"n": rows, "step": STEP_MS, "worker_ids": WORKER_IDS})
            conn.execute(f"ANALYZE {tmpl.table}")
            conn.execute("CHECKPOINT")
    else:
        conn = sqlite3.connect(tmpl.sqlite_path)
        try:
            conn.execute("PRAGMA journal_mode=DELETE")
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute("PRAGMA cache_size=-262144")
            end_ms = int((time.time() - 3600) * 1000)
            params = {"n": rows, "step": STEP_MS, "end_ms": end_ms, "worker_ids": WORKER_IDS}
            with conn:
                conn.execute(SQLITE_SQL[target.impl], params)
            conn.execute("ANALYZE")
        finally:
            conn.close()
    count = tmpl.query(f"SELECT COUNT(*) FROM {tmpl.table} WHERE status = 'SUCCESSFUL'")[0][0]
    if count != rows:
        raise BenchError(f"the S6 history has {count} rows, expected {rows}")
    _built[tmpl] = time.perf_counter() - began
    print(f" {_built[tmpl]:.0f} s)", end="", flush=True)
    return tmpl


def cleanup() -> None:
    for tmpl in list(_built):
        tmpl.drop()
        del _built[tmpl]


def cases(cfg: Config, selected: set[str]) -> list[Case]:
    if ID not in selected:
        return []
    out = []
    rows_n = cfg.size("s6_rows")
    for target in targets(cfg):
        count = tasks_for(cfg, target.impl, "s6")

        def run(cfg: Config, rep: int, target: Target = target, count: int = count) -> Metrics:
            tmpl = ensure_template(cfg, target)
            metrics = drain(
                target,
                task="noop",
                count=count,
                cmds=worker_cmds(cfg, target),
                log_name=f"S6-{target.db}-{target.impl}-r{rep}",
                setup=lambda: target.clone_from(tmpl),
                finished_before=cfg.size("s6_rows"),
            )
            target.drop()  # several GB: do not keep the copy around
            return metrics

        note = f"{count:,} tasks over {rows_n:,} finished rows"
        out.append(Case(ID, "", target.db, target.impl, run=run, note=note))
    return out


def rows(cfg: Config, stats: Stats, selected: set[str]) -> list[Row]:
    if ID not in selected:
        return []
    what = (
        f"S1 drain of {tasks_for(cfg, 'fasttasks', 's6'):,} no-op over {cfg.size('s6_rows'):,} finished "
        f"rows (dtdb: {tasks_for(cfg, 'dtdb', 's6'):,} tasks, db_worker x1)"
    )
    out = []
    for db in cfg.dbs:
        ours = case_stat(stats, ID, "", db, "fasttasks", "rate")
        s1 = case_stat(stats, "S1", "", db, "fasttasks", "rate")
        if s1:
            goal = SHARE * s1["median"]
            target = f">= {fmt_n(goal)}/s ({SHARE:.0%} of S1 {fmt_n(s1['median'])})"
            if ours:
                target += f"; S6/S1 = {ours['median'] / s1['median']:.0%}"
        else:
            goal, target = None, f"{SHARE:.0%} of S1 (S1 not run)"
        out.append(compare_row(stats, ID, db, "rate", what, target=target, goal=goal))
    return out
