"""What every diagnostics callback shares: its cadence and the run's loggers."""

from __future__ import annotations

import lightning as L
from torch import Tensor

from normlab.diagnostics.cadence import Cadence
from normlab.diagnostics.output import Outputs


class DiagnosticsCallback(L.Callback):
    """A callback that measures on logging steps and writes to every attached logger (rank zero).

    ``writes_layout`` is switched off by ``TrainingDiagnostics``, which writes one TensorBoard
    Custom Scalars layout for all its parts (TensorBoard shows only the last layout of a run).

    On a batch that does not log, ``TrainingDiagnostics`` calls a part's per-batch hooks only while
    the part is ``busy()`` finishing a logging step; otherwise it calls only ``on_every_backward``,
    the work a part has on every batch (the divergence monitor's loss history).
    """

    def __init__(self, log_every_n_steps: int, dense_every_n_steps: int, dense_until_step: int) -> None:
        self.cadence = Cadence(log_every_n_steps, dense_every_n_steps, dense_until_step)
        self.log_every_n_steps = log_every_n_steps
        self.dense_every_n_steps = dense_every_n_steps
        self.dense_until_step = dense_until_step
        self.outputs: Outputs | None = None
        self.writes_layout = True
        self._logging = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._logging = bool(trainer.loggers) and not trainer.fast_dev_run
            self.outputs = Outputs(trainer, owner=type(self).__name__)

    def is_logging_step(self, step: int) -> bool:
        return self.cadence.is_logging_step(step)

    def on_every_backward(self, loss: Tensor, step: int) -> None:
        """Work of every batch, logging or not: ``loss`` before its backward pass, at optimizer step
        ``step``. A part that has such work calls it from its own ``on_before_backward`` too."""

    def busy(self) -> bool:
        """Whether a logging step's measurement is still under way (it finishes in a later hook)."""
        return False

    def writes(self, trainer: L.Trainer) -> bool:
        """Whether this rank writes to the loggers."""
        return self._logging and trainer.is_global_zero

    def layout(self) -> dict:
        """This callback's charts for TensorBoard's Custom Scalars tab, by category."""
        return {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.writes_layout and self.writes(trainer) and self.layout():
            self.outputs.custom_scalars(self.layout())
