"""Wall time of one sweep of 12 short runs, launched by the basic launcher and by joblib.

The sweep is baseline vs BN x 3 learning rates x 2 seeds on digits, each run the template's
default budget of 1500 steps (about 10 s). The basic launcher runs the jobs one after another in
one process; joblib runs ``--jobs`` at once (default: one per core), each with ``cores // jobs``
torch threads (``hydra.callbacks.torch_threads``). Each arm is timed from the command's start to
its exit, start-up included; joblib's workers pay theirs once each, so very short runs (a few
hundred steps) gain less. Goal: joblib >= 1.6x faster on 2 cores.

Then the finished basic sweep is started again with the same command: every run has ended, so
the grid sweeper skips them all (``hydra_plugins.normlab_sweepers.grid``). Goal: seconds.

    python scripts/benchmark_sweep.py [--steps 1500] [--jobs N] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from normlab.sweep_callbacks import available_cores

SWEEP = ["model=baseline_mlp,bn_mlp", "optimizer.lr=0.03,0.1,0.3", "seed=0,1"]


def sweep_seconds(launcher: list[str], steps: int, sweep_dir: Path) -> float:
    """Run the sweep with ``launcher`` overrides; its wall time in seconds."""
    train = shutil.which("normlab-train") or str(Path(sys.executable).with_name("normlab-train"))
    command = [train, "-m", *SWEEP, *launcher, f"trainer.max_steps={steps}", f"hydra.sweep.dir={sweep_dir}"]
    start = time.perf_counter()
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"sweep failed ({' '.join(launcher) or 'basic'}):\n{done.stderr[-2000:]}")
    runs = [p for p in sweep_dir.iterdir() if (p / "summary.json").is_file() or any(p.glob("events.out.*"))]
    if len(runs) != 12:
        sys.exit(f"expected 12 runs in {sweep_dir}, found {len(runs)}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500, help="training steps per run")
    parser.add_argument("--jobs", type=int, default=None, help="joblib's parallel jobs (default: the cores)")
    parser.add_argument("--json", action="store_true", help="print a JSON object as the last line")
    args = parser.parse_args()
    cores = available_cores()
    jobs = args.jobs or cores

    with tempfile.TemporaryDirectory() as tmp:
        basic = sweep_seconds([], args.steps, Path(tmp) / "basic")
        restart = sweep_seconds([], args.steps, Path(tmp) / "basic")  # all 12 have ended: skipped
        joblib = sweep_seconds(
            ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"], args.steps, Path(tmp) / "joblib"
        )
    ratio = basic / joblib
    print(f"12 runs of {args.steps} steps on {cores} cores")
    print(f"  basic launcher   {basic:6.1f} s")
    print(f"  joblib, {jobs} jobs   {joblib:6.1f} s   ({ratio:.2f}x faster; goal >= 1.6x)")
    print(f"  the finished sweep started again: {restart:.1f} s (12 runs skipped)")
    if args.json:
        print(
            json.dumps(
                {
                    "runs": 12,
                    "steps": args.steps,
                    "cores": cores,
                    "jobs": jobs,
                    "basic_s": round(basic, 2),
                    "joblib_s": round(joblib, 2),
                    "ratio": round(ratio, 3),
                    "restart_s": round(restart, 2),
                }
            )
        )


if __name__ == "__main__":
    main()
