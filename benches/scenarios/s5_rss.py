"""S5: worker memory (VmRSS from /proc/PID/status, sampled every 0.5 s) while draining many no-op tasks.

One ``fasttasks-worker --batch`` (default flags) drains 1,000,000 tasks. Reported: RSS when the 100,000th
task had finished (from its ``finished_at``), at the end, the maximum, and the growth after that
point (maximum after it minus RSS at it). "No growth" is read as growth <= 5 MB. One repetition by
default (a 1M-task drain is long; ``--size s5_reps=3`` for more). django-tasks-db: a much smaller
drain with one ``db_worker``, for a comparison of the footprint only.
"""

from __future__ import annotations

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
    compare_row,
    targets,
    to_epoch,
    worker_cmds,
)

from scenarios.s1_drain import drain, tasks_for

ID = "S5"
MAX_MB = 100.0
GROWTH_MB = 5.0
MEGABYTES = Measure(" MB", digits=1, higher_better=False)
GOALS_MB = {"rss_max_mb": MAX_MB, "growth_mb": GROWTH_MB}
ROWS = {
    "rss_mark_mb": "RSS when {mark:,} tasks had finished",
    "rss_end_mb": "RSS at the end",
    "rss_max_mb": "RSS maximum",
    "growth_mb": "RSS growth after {mark:,} tasks",
}


def mark_for(count: int) -> int:
    return max(1, min(100_000, count // 10))


def measure(cfg: Config, rep: int, target: Target) -> Metrics:
    count = tasks_for(cfg, target.impl, "s5")
    samples: list[tuple[float, int]] = []
    period = cfg.sizes["rss_period"]
    metrics = drain(
        target,
        task="noop",
        count=count,
        cmds=worker_cmds(cfg, target),
        log_name=f"S5-{target.db}-{target.impl}-r{rep}",
        rss=samples,
        rss_period=period,
    )
    if len(samples) < 3:
        raise BenchError(f"only {len(samples)} RSS sample(s): the drain was too short to sample")
    mark = mark_for(count)
    rows = target.query(
        f"SELECT finished_at FROM {target.table} WHERE status IN ('SUCCESSFUL', 'FAILED') "
        "ORDER BY finished_at LIMIT 1 OFFSET %s",
        [mark - 1],
    )
    at = to_epoch(rows[0][0])
    assert at is not None
    # The sample nearest to the moment the mark-th task finished; the growth is measured after it.
    mark_t, rss_mark = min(samples, key=lambda s: abs(s[0] - at))
    if abs(mark_t - at) > 2 * period + 0.5:
        raise BenchError(f"no RSS sample near the {mark:,}th finish ({len(samples)} samples)")
    after = [kb for t, kb in samples if t >= mark_t]
    metrics.update(
        rss_mark_mb=rss_mark / 1024,
        rss_end_mb=samples[-1][1] / 1024,
        rss_max_mb=max(kb for _, kb in samples) / 1024,
        growth_mb=max(0, max(after) - rss_mark) / 1024,
        samples=len(samples),
    )
    return metrics


def cases(cfg: Config, selected: set[str]) -> list[Case]:
    if ID not in selected:
        return []
    return [
        Case(
            ID,
            "",
            t.db,
            t.impl,
            run=partial(measure, target=t),
            max_reps=cfg.size("s5_reps"),
            note=f"{tasks_for(cfg, t.impl, 's5'):,} tasks",
        )
        for t in targets(cfg)
    ]


def rows(cfg: Config, stats: Stats, selected: set[str]) -> list[Row]:
    if ID not in selected:
        return []
    out = []
    count, theirs_count = tasks_for(cfg, "fasttasks", "s5"), tasks_for(cfg, "dtdb", "s5")
    for db in cfg.dbs:
        for metric, text in ROWS.items():
            goal = GOALS_MB.get(metric)
            what = text.format(mark=mark_for(count)) + (
                f", draining {count:,} no-op (dtdb: {theirs_count:,} tasks, mark {mark_for(theirs_count):,})"
            )
            row = compare_row(
                stats,
                ID,
                db,
                metric,
                what,
                MEGABYTES,
                target=f"<= {goal:g} MB" if goal else "",
                goal=goal,
                goal_on="max",  # the memory limits must hold in every repetition, not just in the median
                # The two drains differ much in length: a ratio of their growths would mean nothing.
                with_ratio=metric != "growth_mb",
            )
            out.append(row)
    return out
