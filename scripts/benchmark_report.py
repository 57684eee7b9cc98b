"""Seconds ``normlab-report`` takes on a sweep of 50 runs of 2000 steps each (goal: under 10 s).

The sweep is synthetic (``synthetic_sweep``): 2 models x 5 learning rates x 5 seeds, with
``train/loss`` every step, the diagnostics' activation statistics, gradient norms and histograms
every 10 steps, and two diverged runs. The report is built ``--repeats`` times; the median counts.

    python scripts/benchmark_report.py [--runs-per-group 5] [--steps 2000] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from normlab.report import build_report
from synthetic_sweep import write_sweep

LRS = (0.01, 0.1, 1.0, 3.0, 10.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-per-group", type=int, default=5, help="seeds per (model, lr)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print a JSON object as the last line")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        sweep = Path(tmp) / "sweep"
        start = time.perf_counter()
        runs = write_sweep(
            sweep,
            lrs=LRS,
            seeds=range(args.runs_per_group),
            steps=args.steps,
            diverge=[("baseline_mlp", 10.0, 0), ("baseline_mlp", 10.0, 1)],
        )
        generated = time.perf_counter() - start
        size_mb = sum(f.stat().st_size for r in runs for f in r.glob("events.out.tfevents.*")) / 1e6
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            report = build_report(sweep)
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    print(
        f"sweep: {len(runs)} runs x {args.steps} steps, {size_mb:.0f} MB of event files (written in {generated:.1f} s)"
    )
    print(
        f"report: {seconds:.2f} s median of {args.repeats} (runs {[round(t, 2) for t in times]}), "
        f"{len(report.figures)} figures, {len(report.groups)} groups; goal < 10 s"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "runs": len(runs),
                    "steps": args.steps,
                    "seconds": round(seconds, 3),
                    "event_mb": round(size_mb, 1),
                    "figures": len(report.figures),
                }
            )
        )


if __name__ == "__main__":
    main()
