"""``TrainingDiagnostics``: the four diagnostics callbacks as one, with one set of arguments."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import lightning as L

from normlab.diagnostics.activations import ActivationStatistics
from normlab.diagnostics.base import DiagnosticsCallback
from normlab.diagnostics.divergence_monitor import DivergenceMonitor
from normlab.diagnostics.output import Outputs
from normlab.diagnostics.parameter_health import ParameterHealth
from normlab.diagnostics.run_summary import RunSummaryWriter

BATCH_HOOKS = ("on_train_batch_start", "on_before_backward", "on_before_optimizer_step", "on_train_batch_end")


class TrainingDiagnostics(L.Callback):
    """Activation distributions, weight and gradient health, divergence and a run summary, to every
    attached logger: ``ActivationStatistics``, ``ParameterHealth``, ``DivergenceMonitor`` and
    ``RunSummaryWriter`` in one callback (each also works alone; see their docstrings).

    Works with any LightningModule. On each logging step (counted in optimizer steps) the parts
    measure on the device and bring their numbers to the host in one copy each; on other steps
    the only work is copying the loss into a history on the device. Adds ``diag/time_ms``, the
    time the diagnostics' hooks took on each logging step.

    Args:
        log_every_n_steps, dense_every_n_steps, dense_until_step: the cadence: every
            ``log_every_n_steps`` optimizer steps (step 0 included), and every
            ``dense_every_n_steps`` below ``dense_until_step`` (0: no dense phase).
        types, include, exclude, max_modules, bins, hist_range, percentiles, saturation_threshold,
            sample_size, reduce_histograms, fast_checksums: see ``ActivationStatistics``.
        on_nonfinite: ``stop`` or ``warn``; see ``DivergenceMonitor``.
        warn_update_ratio: see ``ParameterHealth``.
        val_metric, target_acc, summary_path: see ``RunSummaryWriter``.

    Example::

        trainer = Trainer(logger=TensorBoardLogger("runs"), callbacks=[TrainingDiagnostics(log_every_n_steps=20)])
    """

    def __init__(
        self,
        log_every_n_steps: int = 50,
        dense_every_n_steps: int = 10,
        dense_until_step: int = 50,
        types: Sequence[str] | None = None,
        include: Sequence[str] = ("*",),
        exclude: Sequence[str] = (),
        max_modules: int = 64,
        bins: int = 80,
        hist_range: Sequence[float] | None = None,
        percentiles: Sequence[float] = (15, 50, 85),
        saturation_threshold: float = 0.95,
        sample_size: int = 16384,
        on_nonfinite: str = "stop",
        warn_update_ratio: float = 1.0,
        reduce_histograms: bool = True,
        val_metric: str = "val/acc",
        target_acc: float = 0.9,
        summary_path: str | None = None,
        fast_checksums: bool = True,
    ) -> None:
        cadence = (log_every_n_steps, dense_every_n_steps, dense_until_step)
        self.activations = ActivationStatistics(
            *cadence, types, include, exclude, max_modules, bins, hist_range, percentiles,
            saturation_threshold, sample_size, reduce_histograms, fast_checksums,
        )  # fmt: skip
        self.parameters = ParameterHealth(*cadence, warn_update_ratio)
        self.divergence = DivergenceMonitor(
            *cadence, on_nonfinite, activations=self.activations, parameters=self.parameters
        )
        self.run_summary = RunSummaryWriter(val_metric, target_acc, summary_path)
        self.parts: list[L.Callback] = [self.activations, self.parameters, self.divergence, self.run_summary]
        for part in (self.activations, self.parameters, self.divergence):
            part.writes_layout = False  # one layout for all, below
        self.parameters.summary = self.divergence.summary = self.run_summary.summary
        self._outputs: Outputs | None = None
        self._seconds: dict[int, float] = {}  # time in the hooks per logging step, until written
        self._implementing: dict[str, list[L.Callback]] = {}
        self._batch_step, self._batch_logs = 0, True  # the step of the batch under way, and whether it logs
        self._quiet = False  # the batch under way neither logs nor finishes a logging step
        self._unfinished = True  # a part is busy finishing a logging step, or its time is not yet written
        self._measuring = (self.activations, self.parameters, self.divergence)
        base = DiagnosticsCallback.on_every_backward
        self._every_backward = [part for part in self._measuring if type(part).on_every_backward is not base]

    @property
    def summary(self):
        return self.run_summary.summary

    @property
    def hparam_metrics(self) -> list[str]:
        return self.run_summary.hparam_metrics

    def is_logging_step(self, step: int) -> bool:
        return self.activations.cadence.is_logging_step(step)

    def _parts_with(self, hook: str) -> list[L.Callback]:
        """The parts that implement ``hook`` (Lightning's no-op is left out: most hooks of most
        parts do nothing, and the bundle runs on every step)."""
        if hook not in self._implementing:
            base = getattr(L.Callback, hook)
            self._implementing[hook] = [part for part in self.parts if getattr(type(part), hook) is not base]
        return self._implementing[hook]

    def _call(self, hook: str, trainer: L.Trainer, *args: Any) -> None:
        if hook not in BATCH_HOOKS:
            for part in self._parts_with(hook):
                if part is self.run_summary and hook == "on_train_end":
                    self._send(trainer)  # the last steps before the summary's: TensorBoard wants steps in order
                getattr(part, hook)(trainer, *args)
        elif not self._batch_logs:  # the parts finishing a logging step; the others' work of every batch
            for part in self._parts_with(hook):
                if part.busy():
                    getattr(part, hook)(trainer, *args)
                elif hook == "on_before_backward":
                    part.on_every_backward(args[1], self._batch_step)
        else:
            start = time.perf_counter()
            for part in self._parts_with(hook):
                getattr(part, hook)(trainer, *args)
            self._seconds[self._batch_step] = self._seconds.get(self._batch_step, 0.0) + time.perf_counter() - start
        if self._seconds and hook in ("on_train_batch_end", "on_validation_start"):
            self._send(trainer)

    def _send(self, trainer: L.Trainer) -> None:
        """Write each finished logging step's numbers of all parts, with their time, as one event."""
        done = {s: t for s, t in self._seconds.items() if s < trainer.global_step}
        for step, seconds in done.items():
            del self._seconds[step]
            if self.activations.writes(trainer):
                self._outputs.write(step, {"diag/time_ms": seconds * 1000})
        self._outputs.send()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._call("setup", trainer, pl_module, stage)
        if stage == "fit":
            self._outputs = Outputs(trainer, owner=type(self).__name__)
            self._outputs.gathering = True
            for part in self.parts:  # one event per step for all parts
                if hasattr(part, "outputs"):
                    part.outputs = self._outputs

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._call("on_train_start", trainer, pl_module)
        if self.activations.writes(trainer):
            self._outputs.custom_scalars({**self.activations.layout(), **self.parameters.layout()})

    def state_dict(self) -> dict[str, Any]:
        return {**self.run_summary.state_dict(), **self.activations.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.run_summary.load_state_dict(state_dict)
        self.activations.load_state_dict(state_dict)

    # each hook: every part's, in order. Most batches neither log nor finish a logging step: on
    # such a quiet batch only the parts' work of every batch runs (the loss history), unchecked.
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._batch_step = trainer.global_step  # it moves on with the optimizer step, before the batch ends
        self._batch_logs = self.is_logging_step(self._batch_step)
        self._quiet = not self._batch_logs and not self._unfinished
        if not self._quiet:
            self._call("on_train_batch_start", trainer, pl_module, batch, batch_idx)

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss) -> None:
        if not self._quiet:
            self._call("on_before_backward", trainer, pl_module, loss)
            return
        for part in self._every_backward:
            part.on_every_backward(loss, self._batch_step)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if not self._quiet:
            self._call("on_before_optimizer_step", trainer, pl_module, optimizer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if not self._quiet:
            self._call("on_train_batch_end", trainer, pl_module, outputs, batch, batch_idx)
            self._unfinished = bool(self._seconds) or any(part.busy() for part in self._measuring)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._call("on_validation_start", trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._call("on_validation_end", trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._call("on_train_end", trainer, pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._call("on_exception", trainer, pl_module, exception)
