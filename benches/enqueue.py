"""Enqueue rate, fasttasks vs django-tasks-db in the same run (issue 3 scenarios S2a and S2c).

    .venv/bin/python benches/enqueue.py                 # 3 repeats, appends to benches/RESULTS.md
    .venv/bin/python benches/enqueue.py --quick         # smoke: small counts, once, nothing recorded

S2a: ``task.enqueue()`` one call at a time, one thread, autocommit. S2c: ``fasttasks.enqueue_many``,
1,000 per call (django-tasks-db has no bulk API). Each measurement runs in a fresh process on a fresh
database; the implementations are interleaved so a noisy machine affects both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run

COUNTS = {"single": 5_000, "bulk": 100_000}
IMPLS = ("fasttasks", "dtdb")
LABELS = {"fasttasks": "fasttasks", "dtdb": "django-tasks-db"}


def measure(db: str, impl: str, mode: str, count: int) -> dict[str, object]:
    run.reset_database(db)
    scenario = run.Scenario(db=db, impl=impl, procs=1, concurrency=1)
    proc = subprocess.run(
        [sys.executable, str(run.BENCH_DIR / "_child.py"), "enqueue", mode, str(count)],
        cwd=run.BENCH_DIR,
        env=run.scenario_env(scenario),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{db} {impl} {mode} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: small counts, once, not recorded")
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--db", default="sqlite,postgres")
    args = parser.parse_args()
    repeat = args.repeat or (1 if args.quick else 3)
    counts = {mode: (count // 50 if args.quick else count) for mode, count in COUNTS.items()}
    rates: dict[tuple[str, str, str], list[float]] = {}
    for rep in range(1, repeat + 1):
        for db in args.db.split(","):
            for mode, count in counts.items():
                for impl in IMPLS:
                    result = measure(db, impl, mode, count)
                    if "skipped" in result:
                        continue
                    rate = float(result["per_second"])  # type: ignore[arg-type]
                    rates.setdefault((db, mode, impl), []).append(rate)
                    print(f"[{rep}/{repeat}] {db:8} {mode:6} {LABELS[impl]:15} {rate:>10,.0f}/s", flush=True)

    lines = ["| database | scenario | fasttasks | django-tasks-db | ratio |", "|---|---|---|---|---|"]
    for db in args.db.split(","):
        for mode in counts:
            ours = rates.get((db, mode, "fasttasks"), [])
            theirs = rates.get((db, mode, "dtdb"), [])
            cell = lambda values: (  # noqa: E731
                f"{statistics.median(values):,.0f}/s ({min(values):,.0f}-{max(values):,.0f})"
                if values
                else "n/a"
            )
            ratio = (
                f"{statistics.median(ours) / statistics.median(theirs):.1f}x" if ours and theirs else "n/a"
            )
            name = {
                "single": f"S2a enqueue() x{counts['single']:,}",
                "bulk": f"S2c bulk x{counts['bulk']:,}",
            }[mode]
            lines.append(f"| {db} | {name} | {cell(ours)} | {cell(theirs)} | {ratio} |")
    table = "\n".join(lines)
    print("\n" + table)
    if args.quick:
        return
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"\n## {stamp} — enqueue rate (S2a single, S2c bulk), median of {repeat}\n\n"
        f"- Command: `.venv/bin/python benches/enqueue.py`\n- Machine: {run.machine_line()}\n"
        "- One thread, autocommit, fresh database per measurement, same settings as the drain benchmark\n\n"
        f"{table}\n"
    )
    with (run.BENCH_DIR / "RESULTS.md").open("a") as results:
        results.write(section)
    print("appended to benches/RESULTS.md")


if __name__ == "__main__":
    main()
