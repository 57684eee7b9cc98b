"""An Optuna study that lives in a database: where it is stored, its search space from Hydra's
override syntax, stale trials, and the results file. Used by normlab's Optuna sweeper
(``hydra_plugins.normlab_sweepers.optuna_sweeper``) and by the pruning callback inside each trial.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import yaml
from hydra.core.override_parser.types import Override
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from normlab.errors import ConfigError

RESULTS_FILE = "optimization_results.yaml"
# A trial the sweeper has judged carries its run's status; one left RUNNING by a dead process,
# then marked FAIL, does not, and does not count towards n_trials.
STATUS_ATTR = "status"


def open_storage(url: str) -> BaseStorage:
    """A database for a URL with ``://`` (sqlite, postgresql, mysql), else an append-only journal
    file, which suits a shared file system where SQLite's locks do not work (NFS under SLURM)."""
    if "://" in url:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # SQLite waits up to 60 s for a lock held by another process instead of failing at once
        kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
        return RDBStorage(url, engine_kwargs=kwargs)
    path = Path(url).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def search_space(overrides: Sequence[Override]) -> tuple[list[str], dict[str, BaseDistribution]]:
    """Split parsed overrides into the fixed ones (passed to every trial) and the searched ones.

    ``interval(a, b)`` is a float range, ``tag(int, interval(a, b))`` an int range, and
    ``tag(log, ...)`` samples either on a log scale; ``choice(a, b)``, ``a,b``
    and ``range(...)`` are categorical.
    """
    chosen: dict[str, str | BaseDistribution] = {}  # a key given twice keeps its last value
    for override in overrides:
        key = override.get_key_element()
        if not override.is_sweep_override():
            chosen[key] = f"{key}={override.get_value_element_as_str()}"
        elif override.is_interval_sweep():
            chosen[key] = _interval(key, override.value())
        else:
            chosen[key] = CategoricalDistribution(list(override.sweep_string_iterator()))
    fixed = [v for v in chosen.values() if isinstance(v, str)]
    return fixed, {k: v for k, v in chosen.items() if not isinstance(v, str)}


def _interval(key: str, sweep: Any) -> BaseDistribution:
    log = "log" in sweep.tags
    low, high = sweep.start, sweep.end
    if log and low <= 0:
        raise ConfigError(f"hydra.sweeper.params.{key}: a log interval must start above 0, not {low}")
    if "int" in sweep.tags:
        return IntDistribution(int(low), int(high), log=log)
    return FloatDistribution(float(low), float(high), log=log)


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Mark FAIL the trials left RUNNING by a sweep that died; their numbers.

    One sweep process drives a study at a time, so at its start every RUNNING trial is stale.
    """
    stale = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    for number in stale:
        study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    return stale


def judged(trial: FrozenTrial) -> bool:
    """A trial that counts towards ``n_trials``: complete, pruned, or failed by its own run."""
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and STATUS_ATTR in trial.user_attrs
    )


def write_results(study: optuna.Study, path: Path) -> None:
    """``optimization_results.yaml`` (the official plugin's keys, plus counts), replaced atomically."""
    trials = study.get_trials(deepcopy=False)
    result: dict[str, Any] = {"name": "optuna", "study_name": study.study_name}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        result.update(best_params=dict(best.params), best_value=float(best.value), best_trial=best.number)
    result["trials"] = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(yaml.safe_dump(result, sort_keys=False))
    os.replace(tmp, path)
