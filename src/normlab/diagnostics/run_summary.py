"""``RunSummaryWriter``: a few numbers that compare runs, written to ``summary.json`` and the HParams tab."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only

from normlab.diagnostics.divergence import UNSEEN
from normlab.diagnostics.divergence_monitor import DivergenceMonitor
from normlab.diagnostics.output import Outputs
from normlab.diagnostics.parameter_health import ParameterHealth
from normlab.diagnostics.summary import HPARAM_METRICS, RunSummary, merge_json


class RunSummaryWriter(L.Callback):
    """Keeps the run's summary (``RunSummary``) and writes it at the end of training.

    Validation accuracy comes from ``val_metric`` after each validation; divergence and gradient
    norms come from a ``DivergenceMonitor`` and a ``ParameterHealth`` on the same Trainer, which
    are handed this summary at setup. The summary survives a resume (it is in the checkpoint).
    Another writer's keys in the same file (the landscape probes, the entry points) are kept.

    Args:
        val_metric: the validation accuracy metric. Default ``val/acc``.
        target_acc: accuracy whose first reaching gives ``steps_to_target``.
        summary_path: the JSON file; default ``summary.json`` in the run's own directory
            (``run_directory``), whatever the logger.
    """

    def __init__(self, val_metric: str = "val/acc", target_acc: float = 0.9, summary_path: str | None = None) -> None:
        if not 0 <= target_acc <= 1:
            raise ValueError(f"target_acc must lie in [0, 1], got {target_acc}")
        self.val_metric, self.summary_path = val_metric, summary_path
        self.summary = RunSummary(target_acc=target_acc)
        self.hparam_metrics = list(HPARAM_METRICS)
        self._file: Path | None = None
        self._outputs: Outputs | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._file = Path(self.summary_path or run_directory(trainer) / "summary.json")
        self._outputs = Outputs(trainer, owner=type(self).__name__)
        for callback in trainer.callbacks:  # the parts that report to a summary, when used on their own
            if isinstance(callback, DivergenceMonitor | ParameterHealth) and callback.summary is None:
                callback.summary = self.summary

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        value = trainer.callback_metrics.get(self.val_metric)
        if value is not None:
            self.summary.observe_validation(float(value), trainer.global_step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.summary.global_step = trainer.global_step
        if not trainer.fast_dev_run and self._file is not None:
            self._write(trainer)

    @rank_zero_only
    def _write(self, trainer: L.Trainer) -> None:
        merge_json(self._file, self.summary.as_dict())
        if trainer.loggers:
            self._outputs.write(trainer.global_step, self.summary.hparam_scalars())
            self._outputs.flush()
        if self.summary.diverged:
            where = "" if self.summary.divergence_layer == UNSEEN else f" in layer {self.summary.divergence_layer}"
            print(f"diverged at step {self.summary.divergence_step}{where}", flush=True)

    def state_dict(self) -> dict[str, Any]:
        return {"summary": self.summary.as_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.summary.load(state_dict.get("summary", {}))


def run_directory(trainer: L.Trainer) -> Path:
    """The run's own directory: a TensorBoard or CSV logger's version directory, else the Trainer's
    ``default_root_dir`` (W&B and MLflow keep their files in folders that many runs share)."""
    log_dir = trainer.log_dir  # a collective under DDP: resolved on every rank
    if trainer.loggers and isinstance(trainer.loggers[0], (TensorBoardLogger, CSVLogger)) and log_dir:
        return Path(log_dir)
    return Path(trainer.default_root_dir)
