"""Optuna pruning for a Lightning run that is one trial of a study kept in a database.

The trial runs in its own process (a joblib worker, a SLURM task), so it reports through the
study's storage, not through an in-memory ``optuna.Trial``: after every validation it stores the
monitored metric as an intermediate value at the optimizer step, asks the study's pruner, and
stops the run cleanly when told to. The run's ``summary.json`` then says ``pruned``, which the
sweeper passes on to the study.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from normlab.diagnostics.summary import merge_json


class OptunaPruning(L.Callback):
    """Report ``monitor`` to trial ``trial_number`` of a stored study and stop the run when the pruner says so.

    Args:
        storage: the study's storage URL or journal file (``normlab.optuna_study.storage_url``).
        study_name: the study's name.
        trial_number: the trial this run is (normlab's Optuna sweeper numbers jobs by trial).
        pruner: an ``optuna.pruners.BasePruner``; ``None``: report nothing, prune nothing.
        monitor: the metric reported after each validation; ``None``: ``val/acc``.
        summary_path: ``summary.json`` of the run, which gets ``status: pruned``.

    Example (``conf/callbacks/optuna_pruning.yaml`` wires it to the sweeper's config)::

        normlab-train hparams_search=lr_optuna hydra/sweeper/pruner=median
    """

    def __init__(
        self,
        storage: str,
        study_name: str | None,
        trial_number: int,
        pruner: Any = None,
        monitor: str | None = None,
        summary_path: str | None = None,
    ) -> None:
        self.storage, self.study_name, self.trial_number = storage, study_name, int(trial_number)
        self.pruner = pruner
        self.monitor = monitor or "val/acc"
        self.summary_path = summary_path
        self.pruned_at: int | None = None
        self._study: Any = None
        self._storage: Any = None
        self._trial_id: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.pruner is None or stage != "fit" or not trainer.is_global_zero:
            return
        import optuna

        from normlab.optuna_study import open_storage

        self._storage = open_storage(self.storage)
        # study_name None: the storage's only study
        self._study = optuna.load_study(study_name=self.study_name, storage=self._storage, pruner=self.pruner)
        study_id = self._storage.get_study_id_from_name(self._study.study_name)
        self._trial_id = self._storage.get_trial_id_from_study_id_trial_number(study_id, self.trial_number)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._trial_id is None or trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        step = trainer.global_step
        self._storage.set_trial_intermediate_value(self._trial_id, step, float(value))
        if self.pruner.prune(self._study, self._storage.get_trial(self._trial_id)):
            self.pruned_at = step
            trainer.should_stop = True
            rank_zero_info(
                f"normlab: trial {self.trial_number} pruned at step {step} ({self.monitor}={float(value):.4f})"
            )

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # after every callback's on_train_end, so that the diagnostics' summary does not overwrite it
        if stage == "fit" and self.pruned_at is not None and self.summary_path and trainer.is_global_zero:
            merge_json(Path(self.summary_path), {"status": "pruned", "pruned_step": self.pruned_at})
