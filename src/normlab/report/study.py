"""The Optuna study behind a sweep, for the report: its best trials and the parameter importances.

A sweep run by normlab's Optuna sweeper names the study in ``multirun.yaml`` (``hydra.sweeper``:
``storage``, ``study_name``; no storage means ``SWEEP_DIR/optuna.db``). Optuna is imported only
for such a sweep.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import yaml

from normlab.runs import optuna_storage

TOP_TRIALS = 5


def study_lines(sweep_dir: Path) -> list[str]:
    """The report's ``## Optuna study`` section; ``[]`` for a sweep that is no Optuna study."""
    study = load_study(sweep_dir)
    if study is None:
        return []
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    states = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    counts = ", ".join(f"{n} {s}" for s, n in states.items() if n)
    lines = ["## Optuna study", "", f"- study `{study.study_name}`: {len(trials)} trials ({counts or 'none'})"]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        return [*lines, "- no complete trial yet: no best trial, no importances", ""]
    reverse = study.direction.name == "MAXIMIZE"
    best = sorted(complete, key=lambda t: t.value, reverse=reverse)[:TOP_TRIALS]
    lines += [f"- direction: {study.direction.name.lower()}", "", "Best trials:", ""]
    lines += ["| trial (job) | value | parameters |", "| --- | --- | --- |"]
    for t in best:
        params = ", ".join(f"{k}={_short(v)}" for k, v in t.params.items())
        lines.append(f"| {t.number:03d} | {t.value:.4f} | {params} |")
    lines += ["", *importance_lines(study), ""]
    return lines


def importance_lines(study: Any) -> list[str]:
    """Optuna's fANOVA parameter importances (seeded), or why there are none."""
    import optuna

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
            importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (RuntimeError, ValueError) as e:  # too few complete trials, or one parameter value only
        return [f"Parameter importances: not available ({' '.join(str(e).split())})."]
    rows = [f"| {name} | {value:.3f} |" for name, value in importances.items()]
    return ["Parameter importances (Optuna's fANOVA: share of the value's variance):", "",
            "| parameter | importance |", "| --- | --- |", *rows]  # fmt: skip


def load_study(sweep_dir: Path) -> Any:
    """The sweep's study, or ``None`` when the sweep was not an Optuna study or its storage is gone."""
    try:
        config = yaml.safe_load((sweep_dir / "multirun.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    sweeper = (config.get("hydra") or {}).get("sweeper") or {}
    if not str(sweeper.get("_target_", "")).endswith("OptunaSweeper"):
        return None
    url = optuna_storage(sweeper.get("storage"), str(sweep_dir))
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return None
    import optuna

    from normlab.optuna_study import open_storage

    optuna.logging.set_verbosity(logging.WARNING)
    try:
        return optuna.load_study(study_name=sweeper.get("study_name"), storage=open_storage(url))
    except (KeyError, ValueError, RuntimeError):  # no such study in that storage
        return None


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
