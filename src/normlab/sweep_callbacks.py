"""Hydra callbacks for sweeps: a fair share of the cores per parallel job, and a status table at the end.

Both are listed under ``hydra.callbacks`` in ``conf/train.yaml``; Hydra calls them in every
launcher (basic, joblib, submitit), in single runs too, where they do nothing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from normlab.errors import ConfigError
from normlab.sweep_resume import NEW, PLAN_FILE


def available_cores() -> int:
    """Cores this process may run on (a SLURM allocation or a container's limit, not the whole machine)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def threads_per_job(launcher: DictConfig | dict, cores: int) -> int | None:
    """Torch threads for one job so that parallel jobs do not oversubscribe the cores.

    joblib runs ``n_jobs`` jobs at once (-1: one per core, -2: all but one, ...), so each gets
    ``cores // n_jobs``; submitit gives each job ``cpus_per_task``. ``None`` for a launcher that
    runs one job at a time (basic), which may use every core.
    """
    n_jobs = launcher.get("n_jobs")
    if n_jobs is not None:
        jobs = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)
        return max(1, cores // jobs)
    cpus = launcher.get("cpus_per_task")
    return int(cpus) if cpus else None


class TorchThreads(Callback):
    """Set ``torch.set_num_threads`` at the start of each job of a multirun.

    Args:
        threads: threads per job; ``None``: derived from the launcher (see ``threads_per_job``).

    Raises:
        ConfigError: ``threads`` is below 1.

    Example::

        normlab-train -m hydra/launcher=joblib hydra.launcher.n_jobs=2 model=baseline_mlp,bn_mlp
        # each of the 2 parallel jobs trains with cores // 2 threads
    """

    def __init__(self, threads: int | None = None) -> None:
        if threads is not None and threads < 1:
            raise ConfigError(f"hydra.callbacks.torch_threads.threads={threads}: must be >= 1, or null to derive it")
        self.threads = threads

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return  # a single run has the machine to itself
        threads = self.threads or threads_per_job(config.hydra.launcher, available_cores())
        if threads is not None:
            import torch  # already imported by the task; kept out of the sweep's main process

            torch.set_num_threads(threads)


class SweepStatus(Callback):
    """Print one line per run when a multirun ends: status, accuracy, steps, overrides, and what this
    start of the sweep did with the run (skipped, resumed, rerun, new) when it was started again.

    Statuses come from each run's ``summary.json`` or, without one, its event files (see
    ``normlab.report.outcome``), so jobs that ran in other processes (joblib, SLURM) are included.
    Only runs of this multirun are listed: those the grid sweeper planned (its ``sweep_plan.json``),
    else those set up since it started.
    """

    def __init__(self) -> None:
        self.started: float | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        since = self.started - 1.0 if self.started is not None else None  # coarse file-system clocks
        seconds = time.time() - (self.started or time.time())
        print(status_table(sweep_dir, since, seconds, read_plan(sweep_dir, since)), flush=True)


def read_plan(sweep_dir: Path, since: float | None = None) -> dict[str, str] | None:
    """Job number (``"003"``) -> action, from the grid sweeper's plan if it was written since ``since``."""
    try:
        data = json.loads((sweep_dir / PLAN_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or (since is not None and float(data.get("started", 0)) < since):
        return None
    jobs = data.get("jobs")
    return {str(k): str(v) for k, v in jobs.items()} if isinstance(jobs, dict) else None


def status_table(
    sweep_dir: Path, since: float | None = None, seconds: float | None = None, plan: dict[str, str] | None = None
) -> str:
    """The end-of-sweep table as text: a header line, then one line per run."""
    # imported here: the report package loads matplotlib, which a training job never needs
    from normlab.report.outcome import outcome, summary_target
    from normlab.report.sweep import load_runs

    if plan is None:
        runs = load_runs(sweep_dir, since=since)
    else:
        runs = [r for r in load_runs(sweep_dir, since=0.0) if r.job is not None and f"{r.job:03d}" in plan]
    target = summary_target(runs)
    results = [outcome(r, target) for r in runs]
    actions = [plan.get(f"{r.job:03d}", "") for r in runs] if plan else [""] * len(runs)
    restarted = any(a and a != NEW for a in actions)  # the column only when the sweep was started again
    took = f" in {seconds:.0f} s" if seconds is not None else ""
    header = f"normlab: sweep of {len(runs)} runs finished{took}: " + _counts(r.status for r in results)
    if restarted:
        header += f" ({_counts(actions)})"
    start = "  this start" if restarted else ""
    lines = [header, f"  {'job':<4} {'status':<10} {'val/acc':>8} {'best':>7} {'steps':>6}{start}  overrides"]
    for run, r, action in zip(runs, results, actions, strict=True):
        job = f"{run.job:03d}" if run.job is not None else "-"
        note = f"  ({r.error})" if r.error else ""
        step = r.global_step if r.global_step is not None else ""
        did = f"  {action:<10}" if restarted else ""
        lines.append(
            f"  {job:<4} {r.status:<10} {_acc(r.final_val_acc):>8} {_acc(r.best_val_acc):>7} {step:>6}"
            f"{did}  {','.join(run.overrides)}{note}"
        )
    lines.append(f"  report: normlab-report {sweep_dir.resolve()}")
    return "\n".join(lines)


def _counts(values: Any) -> str:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))


def _acc(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"
