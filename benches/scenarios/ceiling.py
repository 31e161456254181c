"""ceiling: the no-Python ceiling, for reference (``rust/fasttasks-core/examples/ceiling.rs``).

The real producer, stores and completer drain the same number of jobs as S1 with a no-op executor in
Rust: what the Python path can at best approach. Built with ``cargo build --release -p fasttasks-core
--example ceiling`` (cargo required); concurrency 8 (fasttasks-worker's default) and 256; the table is
not ANALYZEd. One repetition by default (``--size ceiling_reps=3`` for more).
"""

from __future__ import annotations

import contextlib
import json
import subprocess

from _common import (
    OUT_DIR,
    PG_PREFIX,
    REPO_DIR,
    BenchError,
    Case,
    Config,
    Metrics,
    Row,
    Stats,
    compare_row,
    pg_connect,
    remove_sqlite,
    tail,
)

ID = "ceiling"
CONCURRENCIES = (8, 256)
PG_NAME = f"{PG_PREFIX}_ceiling"
SQLITE_PATH = OUT_DIR / "ceiling.sqlite3"
_built: list[str] = []


def binary() -> str:
    if not _built:
        cmd = ["cargo", "build", "--quiet", "--release", "-p", "fasttasks-core", "--example", "ceiling"]
        try:
            proc = subprocess.run(cmd, cwd=REPO_DIR, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise BenchError(f"cannot run cargo: {exc}") from exc
        if proc.returncode != 0:
            raise BenchError(f"{' '.join(cmd)} failed:\n{tail(proc.stderr)}")
        _built.append(str(REPO_DIR / "target" / "release" / "examples" / "ceiling"))
    return _built[0]


def measure(cfg: Config, db: str, concurrency: int) -> Metrics:
    jobs = cfg.size("s1")
    where = str(SQLITE_PATH) if db == "sqlite" else PG_NAME
    cmd = [binary(), db, where, str(jobs), str(concurrency)]
    proc = subprocess.run(cmd, cwd=REPO_DIR, capture_output=True, text=True, check=False, timeout=600)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{tail(proc.stderr)}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"rate": float(result["jobs_per_second"]), "seconds": float(result["seconds"])}


def cleanup() -> None:
    remove_sqlite(SQLITE_PATH)
    if _built:
        with contextlib.suppress(Exception), pg_connect("postgres") as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{PG_NAME}" WITH (FORCE)')


def cases(cfg: Config, selected: set[str]) -> list[Case]:
    if ID not in selected or "fasttasks" not in cfg.impls:
        return []
    out = []
    for db in cfg.dbs:
        for c in CONCURRENCIES:

            def run(cfg: Config, rep: int, db: str = db, c: int = c) -> Metrics:
                return measure(cfg, db, c)

            out.append(
                Case(
                    ID,
                    f"C={c}",
                    db,
                    "fasttasks",
                    run=run,
                    max_reps=cfg.size("ceiling_reps"),
                    note="Rust no-op",
                )
            )
    return out


def rows(cfg: Config, stats: Stats, selected: set[str]) -> list[Row]:
    if ID not in selected:
        return []
    out = []
    for db in cfg.dbs:
        for c in CONCURRENCIES:
            what = f"no-Python ceiling (Rust no-op executor), {cfg.size('s1'):,} jobs, concurrency {c}"
            # No django-tasks-db counterpart: its column shows "—", and there is no ratio.
            row = compare_row(
                stats, ID, db, "rate", what, variant=f"C={c}", target="(reference)", with_ratio=False
            )
            out.append(row)
    return out
