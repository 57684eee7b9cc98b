"""An Optuna search as a Hydra sweeper, on Optuna 4+ through its ask-and-tell API.

It keeps the official hydra-optuna-sweeper's config surface (``params`` with ``interval``,
``tag(log, interval)`` and ``choice``; ``n_trials``, ``n_jobs``, ``direction``, ``sampler``,
``study_name``, ``storage``) and adds what a study left running overnight needs: it lives in a
database (SQLite in ``SWEEP_DIR/optuna.db`` unless ``storage`` says otherwise), ``n_trials`` is the
total the study should reach, so the same command after a kill runs only the remaining trials,
and a ``pruner`` that trials consult through the same storage (``normlab.optuna_pruning``).
Optuna is imported when a search starts, not when Hydra scans its plugins.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from normlab.runs import optuna_storage
from normlab.sweep_resume import run_status

log = logging.getLogger(__name__)


class OptunaSweeper(Sweeper):
    """Configured in ``conf/hydra/sweeper/optuna.yaml``; see ``conf/hparams_search/lr_optuna.yaml``.

    Args:
        sampler: an Optuna sampler (``hydra/sweeper/sampler=tpe|random``).
        pruner: an Optuna pruner (``hydra/sweeper/pruner=median|hyperband``) or ``None``.
        direction: ``maximize`` or ``minimize`` the value the task returns.
        storage: a SQLAlchemy URL or a journal file's path; ``None``: ``sqlite:///SWEEP_DIR/optuna.db``.
        study_name: the study's name in the storage.
        n_trials: the number of finished trials (complete, pruned or failed by their run) the study should reach.
        n_jobs: trials asked for and launched at once.
        max_failure_rate: the share of failed trials of this start above which the search stops.
        params: the search space, ``{key: "interval(0.1, 1)"}``; the command line's overrides come after.
    """

    def __init__(
        self,
        sampler: Any = None,
        pruner: Any = None,
        direction: str = "maximize",
        storage: str | None = None,
        study_name: str | None = None,
        n_trials: int = 20,
        n_jobs: int = 1,
        max_failure_rate: float = 0.0,
        params: dict[str, str] | None = None,
    ) -> None:
        if n_trials < 0 or n_jobs < 1:
            raise HydraException(f"hydra.sweeper: n_trials={n_trials} must be >= 0 and n_jobs={n_jobs} >= 1")
        self.sampler, self.pruner, self.direction = sampler, pruner, str(direction)
        self.storage, self.study_name = storage, study_name
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.params = dict(params or {})
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Launcher | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        import optuna

        from normlab import optuna_study as studies

        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        fixed, space = studies.search_space(
            parser.parse_overrides([*(f"{k}={v}" for k, v in self.params.items()), *arguments])
        )
        if not space:
            raise HydraException(
                "hydra.sweeper.params is empty: nothing to search (e.g. optimizer.lr: interval(0.01, 1))"
            )
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        url = optuna_storage(self.storage, str(sweep_dir))
        study = optuna.create_study(
            study_name=self.study_name,
            storage=studies.open_storage(url),
            sampler=self.sampler,
            pruner=self.pruner,
            direction=self.direction,
            load_if_exists=True,
        )
        stale = studies.fail_stale_trials(study)
        done = sum(studies.judged(t) for t in study.get_trials(deepcopy=False))
        remaining = max(0, self.n_trials - done)
        log.info(
            "normlab: study %s in %s: %d of %d trials done%s, %d to run",
            study.study_name, url, done, self.n_trials,
            f", trials {stale} left running by a dead sweep marked failed" if stale else "", remaining,
        )  # fmt: skip
        results = sweep_dir / studies.RESULTS_FILE
        returns: list[Any] = []
        launched = failures = 0
        while remaining > 0:
            trials = [self._ask(study, space, url) for _ in range(min(self.n_jobs, remaining))]
            batch = [[*fixed, *(f"{k}={v}" for k, v in t.params.items())] for t in trials]
            job_returns = self._launch([t.number for t in trials], batch)
            for trial, job in zip(trials, job_returns, strict=True):
                failures += tell(study, trial, job) not in ("completed", "pruned")
            launched += len(trials)
            remaining -= len(trials)
            returns.append(job_returns)
            studies.write_results(study, results)  # after every batch: a kill loses nothing told
            if failures / launched > self.max_failure_rate:
                raise HydraException(
                    f"{failures} of {launched} trials failed, above hydra.sweeper.max_failure_rate="
                    f"{self.max_failure_rate}; see the failed runs in {sweep_dir}"
                )
        studies.write_results(study, results)
        return returns

    @staticmethod
    def _ask(study: Any, space: dict[str, Any], url: str) -> Any:
        try:
            return study.ask(space)
        except ValueError as e:  # a choice() whose values differ from the study's
            raise HydraException(
                f"study {study.study_name} in {url} was searched over other values ({e}); "
                "keep its search space, or start another study (hydra.sweeper.study_name, hydra.sweep.dir)"
            ) from None

    def _launch(self, numbers: list[int], batch: list[list[str]]) -> list[JobReturn]:
        """Launch trials as jobs numbered by their trial numbers (consecutive unless another
        process asked for trials of the same study in between)."""
        assert self.launcher is not None
        out: list[JobReturn] = []
        start = 0
        for end in range(1, len(numbers) + 1):
            if end == len(numbers) or numbers[end] != numbers[end - 1] + 1:
                self.validate_batch_is_legal(batch[start:end])
                out += self.launcher.launch(batch[start:end], initial_job_idx=numbers[start])
                start = end
        return out


def tell(study: Any, trial: Any, job: JobReturn) -> str:
    """Tell the study how a trial's run ended; returns the run's status.

    A finite number returned is the trial's value; a run whose summary.json says ``pruned`` is
    pruned; anything else (an exception, ``None`` from a diverged or failed run, NaN) fails it.
    """
    from optuna.trial import TrialState

    from normlab.optuna_study import STATUS_ATTR

    run_dir = Path(str(job.hydra_cfg.hydra.runtime.output_dir)) if job.hydra_cfg is not None else None
    status = (run_status(run_dir) if run_dir else None) or "completed"
    value = job.return_value if job.status == JobStatus.COMPLETED else None
    if job.status != JobStatus.COMPLETED:
        status = "failed"
    if isinstance(value, dict):
        raise HydraException(
            f"trial {trial.number} returned {len(value)} metrics, not one number to optimize: "
            "set optimized_metric=<metric name>, e.g. optimized_metric=val/acc_best"
        )
    if run_dir is not None:
        trial.set_user_attr("run_dir", str(run_dir))
    if status == "pruned":
        trial.set_user_attr(STATUS_ATTR, status)
        study.tell(trial, state=TrialState.PRUNED)
    elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        trial.set_user_attr(STATUS_ATTR, status)
        study.tell(trial, float(value))
    else:
        status = status if status != "completed" else "failed"
        trial.set_user_attr(STATUS_ATTR, status)
        study.tell(trial, state=TrialState.FAIL)
    return status
