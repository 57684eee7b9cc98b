"""A grid sweep that can be started again: Hydra's basic sweep that skips the runs that ended.

Why a sweeper and not a Hydra callback or a check in the task function: a callback's
``on_job_start`` cannot stop a job, and a check in the task still pays a launch per finished run
(a joblib worker or a SLURM task importing torch). Above all, only the sweeper numbers the jobs:
extending a sweep (``seed=0,1`` -> ``seed=0,1,2``) moves the old runs in the product, and keeping
each run's number and directory means matching the jobs to the runs on disk before launching.
The sweep itself is the basic sweeper's: the cartesian product of the overrides, in its order.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.plugins import Plugins
from hydra.errors import HydraException
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from normlab.sweep_resume import NEW, PLAN_FILE, SKIPPED, contiguous, existing_runs, plan

log = logging.getLogger(__name__)


def grid_jobs(overrides: list[Override]) -> list[list[str]]:
    """Every job of a grid: one override list per combination, in Hydra's basic sweeper's order
    (the first key varies slowest; a key given twice keeps its last value)."""
    choices: dict[str, list[str]] = {}
    for override in overrides:
        key = override.get_key_element()
        if not override.is_sweep_override():
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            raise HydraException(f"{key}: a grid sweep takes lists, choice() and range(), not interval()")
    return [list(job) for job in itertools.product(*choices.values())]


class GridSweeper(Sweeper):
    """Hydra's grid sweep, resumable. Configured in ``conf/hydra/sweeper/grid.yaml``.

    Args:
        max_batch_size: jobs handed to the launcher at once (``None``: all).
        params: sweeps from the config, e.g. ``{"optimizer.lr": "0.1,1"}``; the command line's come after.
        resume: skip the runs of ``hydra.sweep.dir`` that ended and continue the others; ``False``
            runs every job again (into the same directories).
    """

    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None, resume: bool = True):
        self.max_batch_size = max_batch_size
        self.params = dict(params or {})
        self.resume = resume
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Launcher | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        jobs = grid_jobs(parser.parse_overrides([*(f"{k}={v}" for k, v in self.params.items()), *arguments]))
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        planned = plan(jobs, existing_runs(sweep_dir) if self.resume else {})
        if not self.resume:
            planned = [(num, job, NEW) for num, job, _ in planned]
        write_plan(sweep_dir, planned)
        counts = {a: sum(p[2] == a for p in planned) for a in dict.fromkeys(p[2] for p in planned)}
        if any(a != NEW for a in counts):
            log.info("normlab: sweep %s: %s", sweep_dir, ", ".join(f"{n} {a}" for a, n in counts.items()))
        returns = []
        for batch in contiguous([p for p in planned if p[2] != SKIPPED], self.max_batch_size):
            overrides: Sequence[Sequence[str]] = [job for _, job, _ in batch]
            self.validate_batch_is_legal(overrides)
            returns.append(self.launcher.launch(overrides, initial_job_idx=batch[0][0]))
        return returns


def write_plan(sweep_dir: Path, planned: list[tuple[int, list[str], str]]) -> None:
    """``SWEEP_DIR/sweep_plan.json``: what this start of the sweep does with each job, for the
    end-of-sweep table. Written atomically."""
    data = {"started": time.time(), "jobs": {f"{num:03d}": action for num, _, action in planned}}
    tmp = sweep_dir / f".{PLAN_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, sweep_dir / PLAN_FILE)
