"""``DivergenceMonitor``: the first non-finite loss or gradient, its step and its origin; stop or warn."""

from __future__ import annotations

import math

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from normlab.diagnostics.activations import ActivationStatistics
from normlab.diagnostics.base import DiagnosticsCallback
from normlab.diagnostics.divergence import (
    UNSEEN,
    Evidence,
    batch_sums,
    first_nonfinite,
    locate_gradient,
    locate_loss,
)
from normlab.diagnostics.parameter_health import ParameterHealth
from normlab.diagnostics.parameters import gradient_and_weight_norms, parameter_layers
from normlab.diagnostics.summary import RunSummary

ON_NONFINITE = ("stop", "warn")


class DivergenceMonitor(DiagnosticsCallback):
    """Finds the first non-finite loss at its exact step, names where it came from, and stops the
    run cleanly (``on_nonfinite="stop"``) or warns and goes on (``"warn"``).

    Every micro-batch's loss is kept, detached, on the device: no copy, no read. They are read
    together at the end of each logging step, which also checks the batch, the weights
    (before the update), the gradients and, when an ``ActivationStatistics`` runs on the same
    Trainer, every watched module's output (``divergence.locate_loss``). A non-finite gradient under
    a finite loss is found on logging steps (under a GradScaler, where such steps are routine and
    skipped, it is not a divergence). Logs ``diag/loss`` on logging steps: the optimizer step's
    loss, the mean over its micro-batches.

    Args:
        log_every_n_steps, dense_every_n_steps, dense_until_step: the cadence (``Cadence``).
        on_nonfinite: ``stop`` or ``warn``.
        activations: the activation callback whose outputs tell the origin; default: the one
            among the Trainer's callbacks, if any.
        parameters: a ``ParameterHealth`` on the same cadence whose weight and gradient norms
            serve as this callback's evidence, so that they are computed once; default: the one
            among the Trainer's callbacks, if any.
    """

    def __init__(
        self,
        log_every_n_steps: int = 50,
        dense_every_n_steps: int = 10,
        dense_until_step: int = 50,
        on_nonfinite: str = "stop",
        activations: ActivationStatistics | None = None,
        parameters: ParameterHealth | None = None,
    ) -> None:
        super().__init__(log_every_n_steps, dense_every_n_steps, dense_until_step)
        on_nonfinite = str(getattr(on_nonfinite, "value", on_nonfinite))  # a config enum arrives as such
        if on_nonfinite not in ON_NONFINITE:
            raise ValueError(f"on_nonfinite can be {ON_NONFINITE}, got {on_nonfinite!r}")
        self.on_nonfinite = on_nonfinite
        self.activations = activations
        self.parameters = parameters
        self.summary: RunSummary | None = None  # the run summary to report to, if any
        self.diverged = False
        self._losses: list[Tensor] = []  # the loss of each micro-batch since the last read, on the device
        self._steps: list[int] = []  # the optimizer step of each of them
        self._batch = None
        self._evidence: dict | None = None  # a logging step's device tensors, until read
        self._scale = 1.0  # a GradScaler's factor on the logging step's loss

    def busy(self) -> bool:
        return self._evidence is not None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        if self.activations is None:
            self.activations = next((c for c in trainer.callbacks if isinstance(c, ActivationStatistics)), None)
        if self.parameters is None:
            self.parameters = next((c for c in trainer.callbacks if isinstance(c, ParameterHealth)), None)
        self.layers = parameter_layers(pl_module, owner=type(self).__name__)
        self._params = [p for layer in self.layers for p in layer.params]
        self._losses, self._steps, self._evidence, self.diverged = [], [], None, False

    def _scaler(self, trainer: L.Trainer):
        return getattr(trainer.precision_plugin, "scaler", None)

    # ------------------------------------------------------------------------- per step
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        # kept for the batch check of a logging step only: holding every batch would keep it alive
        # while the loader makes the next
        self._batch = batch if self.is_logging_step(trainer.global_step) else None

    def on_every_backward(self, loss: Tensor, step: int) -> None:
        self._losses.append(loss.detach())  # kept on the device: no read, no copy
        self._steps.append(step)

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        step = trainer.global_step
        self.on_every_backward(loss, step)
        if self.is_logging_step(step) and (self._evidence is None or self._evidence["step"] != step):
            # a logging step: the evidence of its origin, on the device until the step ends
            scaler = self._scaler(trainer)
            self._scale = scaler.get_scale() if scaler is not None else 1.0
            self._evidence = {"step": step, "batch": batch_sums(self._batch, loss.device)}
            self._batch = None

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        evidence = self._evidence
        if evidence is not None and evidence["step"] == trainer.global_step and "norms" not in evidence:
            shared = self.parameters.norms_at(trainer.global_step) if self.parameters is not None else None
            evidence["present"], evidence["norms"] = shared or gradient_and_weight_norms(self._params)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if self._evidence is not None and trainer.global_step > self._evidence["step"]:  # its update is made
            self._read(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._read(trainer)  # before the checkpoint that follows validation

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._read(trainer)

    # ------------------------------------------------------------------------- reading
    def _read(self, trainer: L.Trainer) -> None:
        """Bring the loss history and a logging step's evidence to the host in one copy, and judge."""
        if not self._steps:
            return
        evidence, self._evidence = self._evidence, None
        parts = [torch.stack(self._losses).double().reshape(-1)]
        self._losses = []
        if evidence is not None:
            if "norms" not in evidence:  # no optimizer step: the weights are still those it began with
                evidence["present"], evidence["norms"] = gradient_and_weight_norms(self._params, with_gradients=False)
            parts += [evidence["batch"], evidence["norms"].to(parts[0].device)]
        host = torch.cat(parts).cpu().tolist()  # the one copy of this step
        losses, steps = host[: len(self._steps)], self._steps
        self._steps = []
        if evidence is not None:
            self._log_loss(
                trainer, evidence["step"], [v for v, s in zip(losses, steps, strict=True) if s == evidence["step"]]
            )
        bad = first_nonfinite(losses)
        if self.diverged:
            return
        found = self._evidence_at(evidence, host[len(steps) :]) if evidence is not None else None
        if bad is not None:
            self._judge_loss(trainer, steps[bad], evidence, found)
        elif found is not None and self._scaler(trainer) is None:
            self._judge_gradients(trainer, evidence["step"], found)

    def _log_loss(self, trainer: L.Trainer, step: int, losses: list[float]) -> None:
        if losses and self.writes(trainer):
            self.outputs.write(step, {"diag/loss": sum(losses) / self._scale})

    def _evidence_at(self, evidence: dict, values: list[float]) -> Evidence:
        """The evidence of a logging step from its host values: the batch's sums, then the gradient
        norm of each tensor that had one and the weight norm of each tensor (a layer is finite when
        all its tensors are; a tensor without a gradient has a finite one)."""
        batch, norms = values[: len(evidence["batch"])], values[len(evidence["batch"]) :]
        present = evidence["present"]
        gradients = [True] * len(self._params)
        for i, norm in zip(present, norms, strict=False):
            gradients[i] = math.isfinite(norm)
        outputs, unwatched = [], 0
        if self.activations is not None and self.activations.last is not None:
            outputs = self.activations.last.finite
            unwatched = self.activations.selection.unwatched_owners
        return Evidence(
            batch=all(math.isfinite(v) for v in batch),
            weights=self._per_layer([math.isfinite(v) for v in norms[len(present) :]]),
            outputs=outputs,
            gradients=self._per_layer(gradients),
            unwatched=unwatched,
        )

    def _per_layer(self, per_tensor: list[bool]) -> list[tuple[str, bool]]:
        flags = iter(per_tensor)
        return [(layer.name, all([next(flags) for _ in layer.params])) for layer in self.layers]

    def _judge_loss(self, trainer: L.Trainer, step: int, evidence: dict | None, found: Evidence | None) -> None:
        if evidence is not None and found is not None and evidence["step"] == step:
            ran = (
                self.activations is not None
                and self.activations.last is not None
                and self.activations.last.step == step
            )
            if not ran:
                found.outputs = []
            layer, source, note = locate_loss(found)
        else:
            layer, source = UNSEEN, "loss"
            note = (
                f"step {step} did not log, so its origin was not recorded; to name the layer, train again from "
                "a checkpoint before it with log_every_n_steps=1"
            )
        self._diverged(trainer, step, layer, source, note)

    def _judge_gradients(self, trainer: L.Trainer, step: int, found: Evidence) -> None:
        if not all(ok for _, ok in found.gradients):
            self._diverged(trainer, step, locate_gradient(found.gradients), "gradient", "")

    def _diverged(self, trainer: L.Trainer, step: int, layer: str, source: str, note: str) -> None:
        self.diverged = True
        if self.summary is not None:
            self.summary.mark_diverged(step, layer, source)
        action = "stopping" if self.on_nonfinite == "stop" else "going on"
        if self.on_nonfinite == "stop":
            trainer.should_stop = True
        where = f"in layer {layer}" if layer != UNSEEN else "(layer not seen)"
        rank_zero_warn(
            f"non-finite {source} at step {step} {where}: {action} (on_nonfinite={self.on_nonfinite})"
            + (f"; {note}" if note else "")
        )
