"""``ParameterHealth``: per-layer weight and gradient norms and update-to-weight ratios, on logging steps."""

from __future__ import annotations

import re
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from normlab.diagnostics.base import DiagnosticsCallback
from normlab.diagnostics.parameters import (
    PER_LAYER,
    Layer,
    copies,
    gradient_and_weight_norms,
    layer_values,
    membership,
    nonfinite_counts,
    parameter_layers,
    subtract_from,
    tensor_norms,
)
from normlab.diagnostics.summary import RunSummary


@dataclass
class _Pending:
    """A logging step between its gradients and its update, on the device."""

    step: int
    present: list[int]  # the parameters that have a gradient
    norms: Tensor  # gradient norms of ``present``, then weight norms
    before: list[Tensor]  # the weights before the update: freed once the update is measured


class ParameterHealth(DiagnosticsCallback):
    """How each layer's weights, gradients and updates evolve.

    Gradients are read in ``on_before_optimizer_step``, where Lightning hands them over
    accumulated, unscaled (mixed precision), reduced across ranks and before clipping. The weights
    of a logging step are copied there and compared after the optimizer's update, then freed.
    A parameter shared by several modules (tied weights) is counted once, in its first module.

    Args:
        log_every_n_steps, dense_every_n_steps, dense_until_step: the cadence (``Cadence``).
        warn_update_ratio: warn once when a layer's update is larger than this fraction of its
            weights in one step (healthy training moves them by about 1e-3 of their norm); 0: never.

    Logged (``L`` a layer owning parameters): ``weight_norm/L``, ``grad_norm/L``,
    ``update_ratio/L``, ``grad_nonfinite/L`` and ``grad_norm/global``.
    """

    def __init__(
        self,
        log_every_n_steps: int = 50,
        dense_every_n_steps: int = 10,
        dense_until_step: int = 50,
        warn_update_ratio: float = 1.0,
    ) -> None:
        super().__init__(log_every_n_steps, dense_every_n_steps, dense_until_step)
        if warn_update_ratio < 0:
            raise ValueError(f"warn_update_ratio must be >= 0, got {warn_update_ratio}")
        self.warn_update_ratio = warn_update_ratio
        self.summary: RunSummary | None = None  # the run summary to report gradient norms to, if any
        self.layers: list[Layer] = []
        self._params: list[Tensor] = []
        self._members = np.zeros((0, 0))
        self._pending: _Pending | None = None
        self._warned = False
        self._tags: list[str] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            self.layers = parameter_layers(pl_module, owner=type(self).__name__)
            self._params = [p for layer in self.layers for p in layer.params]
            self._members = membership(self.layers)
            self._pending, self._warned, self._tags = None, False, []

    def busy(self) -> bool:
        return self._pending is not None

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        step = trainer.global_step
        if not self.is_logging_step(step) or (self._pending and self._pending.step == step):
            return
        if not (self.writes(trainer) or self.summary is not None):
            return
        present, norms = gradient_and_weight_norms(self._params)
        if not present:
            return
        self._pending = _Pending(step, present, norms, copies(self._params))

    def norms_at(self, step: int) -> tuple[list[int], Tensor] | None:
        """The norms measured at ``step`` before the update, if this is a logging step that has
        reached the optimizer: the indices (into ``layers``' parameters) of the tensors with a
        gradient, and on the device their gradient norms, then every tensor's weight norm."""
        pending = self._pending
        if pending is None or pending.step != step:
            return None
        return pending.present, pending.norms

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        pending = self._pending
        if pending is None or trainer.global_step <= pending.step:  # the optimizer has not stepped yet
            return
        self._pending = None
        update = tensor_norms(subtract_from(pending.before, self._params))  # the update's norm, sign aside
        host = torch.cat([pending.norms, update]).cpu().numpy()  # the one copy of this step
        grad, rest = np.split(host, [len(pending.present)])
        weight, update = np.split(rest, 2)
        values = layer_values(grad, weight, update, self._members, pending.present)
        bad = self._nonfinite(pending.present, values["grad_norm"])
        self._report(trainer, pending.step, values, bad)

    def _nonfinite(self, present: list[int], grad_norms: np.ndarray) -> np.ndarray:
        """Non-finite gradient values per layer, counted only for a layer whose norm is not finite."""
        counts = np.zeros(len(self.layers))
        bad = np.flatnonzero(~np.isfinite(grad_norms))
        if len(bad):  # rare: a read per tensor of such layers
            with_grad = {id(self._params[i]) for i in present}
            for i in bad:
                grads = [p.grad for p in self.layers[i].params if id(p) in with_grad]
                counts[i] = sum(nonfinite_counts(grads))
        return counts

    def _report(self, trainer: L.Trainer, step: int, values: dict[str, np.ndarray], bad: np.ndarray) -> None:
        if self.summary is not None:
            self.summary.observe_grad_norm(float(values["global"]))
        self._warn_on_large_updates(step, values["update_ratio"])
        if not self.writes(trainer):
            return
        if not self._tags:  # made once: a step writes four per layer
            self._tags = [f"{stat}/{layer.name}" for stat in PER_LAYER for layer in self.layers]
        per_layer = [values["weight_norm"], values["grad_norm"], values["update_ratio"], bad]
        scalars = dict(zip(self._tags, np.concatenate(per_layer).tolist(), strict=True))
        scalars["grad_norm/global"] = float(values["global"])
        self.outputs.write(step, scalars)

    def _warn_on_large_updates(self, step: int, ratios: np.ndarray) -> None:
        if self._warned or not self.warn_update_ratio or not len(ratios):
            return
        worst = int(np.where(np.isfinite(ratios), ratios, -1.0).argmax())  # NaN: a layer whose weights are all zero
        if ratios[worst] > self.warn_update_ratio:
            self._warned = True
            rank_zero_warn(
                f"{type(self).__name__}: at step {step} the update of layer {self.layers[worst].name} is "
                f"{ratios[worst]:.3g} times its weights (healthy training reads about 1e-3): the learning "
                "rate is likely far too high; this run may diverge"
            )

    def layout(self) -> dict:
        """The per-layer gradient norms, update ratios and weight norms, each in one chart."""
        charts = {
            f"{what} per layer": ["Multiline", [f"^{re.escape(f'{what}/{layer.name}')}$" for layer in self.layers]]
            for what in ("grad_norm", "update_ratio", "weight_norm")
        }
        charts["global grad_norm"] = ["Multiline", ["^grad_norm/global$"]]
        return {"layers": charts}
