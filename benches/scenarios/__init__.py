"""The scenarios of ``benches/run.py``, one module each (S2a/S2b/S2c share one).

Every module has ``cases(cfg, selected)`` (what to measure, per repetition) and ``rows(cfg, stats,
selected)`` (the summary table rows, with the target and whether it is met); some have ``cleanup()``.
"""

from scenarios import (
    ceiling,
    idle,
    r1_recovery,
    s1_drain,
    s2_enqueue,
    s3_latency,
    s4_io,
    s5_rss,
    s6_history,
)

MODULES = (s1_drain, s2_enqueue, s3_latency, s4_io, s5_rss, s6_history, idle, r1_recovery, ceiling)
ALL = ("S1", "S2a", "S2b", "S2c", "S3", "S4", "S5", "S6", "idle", "R1", "ceiling")
# The quick run (CI smoke) leaves out the ceiling: it needs a cargo build of the Rust example.
QUICK = tuple(s for s in ALL if s != "ceiling")
