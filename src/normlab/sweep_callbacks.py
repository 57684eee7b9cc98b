"""Hydra callbacks for sweeps: a fair share of the cores per parallel job, and a status table at the end.

Both are listed under ``hydra.callbacks`` in ``conf/train.yaml``; Hydra calls them in every
launcher (basic, joblib, submitit), in single runs too, where they do nothing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from normlab.errors import ConfigError


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
    """Print one line per run when a multirun ends: status, accuracy, steps and overrides.

    Statuses come from each run's ``summary.json`` or, without one, its event files (see
    ``normlab.report.outcome``), so jobs that ran in other processes (joblib, SLURM) are included.
    Only runs this multirun started are listed, even in a reused sweep directory.
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
        print(status_table(sweep_dir, since, time.time() - (self.started or time.time())), flush=True)


def status_table(sweep_dir: Path, since: float | None = None, seconds: float | None = None) -> str:
    """The end-of-sweep table as text: a header line, then one line per run."""
    # imported here: the report package loads matplotlib, which a training job never needs
    from normlab.report.outcome import outcome, summary_target
    from normlab.report.sweep import load_runs

    runs = load_runs(sweep_dir, since=since)
    target = summary_target(runs)
    results = [outcome(r, target) for r in runs]
    counts = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    took = f" in {seconds:.0f} s" if seconds is not None else ""
    lines = [
        f"normlab: sweep of {len(runs)} runs finished{took}: "
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
        f"  {'job':<4} {'status':<10} {'val/acc':>8} {'best':>7} {'steps':>6}  overrides",
    ]
    for run, r in zip(runs, results, strict=True):
        job = f"{run.job:03d}" if run.job is not None else "-"
        note = f"  ({r.error})" if r.error else ""
        lines.append(
            f"  {job:<4} {r.status:<10} {_acc(r.final_val_acc):>8} {_acc(r.best_val_acc):>7} "
            f"{r.global_step if r.global_step is not None else '':>6}  {','.join(run.overrides)}{note}"
        )
    lines.append(f"  report: normlab-report {sweep_dir.resolve()}")
    return "\n".join(lines)


def _acc(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"
