"""Weight and gradient health per layer: norms, update-to-weight ratios and non-finite gradients.

Gradients are read in ``on_before_optimizer_step``, where Lightning hands over gradients that are
accumulated, unscaled (mixed precision) and reduced across ranks, and before clipping.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from normlab.diagnostics import stats
from normlab.diagnostics.divergence import all_finite
from normlab.diagnostics.watch import Layer

PER_LAYER = ("weight_norm", "grad_norm", "update_ratio", "grad_nonfinite")


class ParameterLayout:
    """The trainable parameters grouped into layers, and the tags of their statistics.

    Args:
        layers: parameter layers in registration order (``parameter_layers``).
    """

    def __init__(self, layers: Sequence[Layer]) -> None:
        self.layers = list(layers)
        self.params = [p for layer in self.layers for p in layer.params]
        self.tags = [f"{stat}/{layer.name}" for layer in self.layers for stat in PER_LAYER] + ["grad_norm/global"]
        layer_of = np.array([i for i, layer in enumerate(self.layers) for _ in layer.params])
        # (tensors, layers) 0/1: squared tensor norms @ it = squared layer norms
        self._members = (layer_of[:, None] == np.arange(len(self.layers))).astype(np.float64)
        self._before: list[Tensor] | None = None  # the weights of the logging step under way
        self._waiting: dict[str, Any] | None = None  # a logging step whose update waits (``after_step``)

    def with_grad(self) -> tuple[int, ...]:
        """Indices of the parameters that have a gradient this step."""
        return tuple([i for i, p in enumerate(self.params) if p.grad is not None])

    @torch.no_grad()
    def before_step(self, present: tuple[int, ...]) -> dict[str, Any]:
        """A logging step's tensors before the optimizer updates the weights: the norms of the
        gradients (of ``present``), then of the weights, per tensor (``norms``), and a copy of the
        weights in a buffer kept for the update. The update of the logging step before, when it
        waits (``after_step``), is taken in the same pass: the weights are as it left them."""
        if self._before is None:
            self._before = [torch.empty_like(p) for p in self.params]
        grads = [self.params[i].grad for i in present]
        if self._waiting is None:
            torch._foreach_copy_(self._before, self.params)
            return {"present": present, "norms": stats.tensor_norms(grads + self.params)}
        torch._foreach_sub_(self._before, self.params)
        norms = stats.tensor_norms(grads + self.params + self._before)
        torch._foreach_copy_(self._before, self.params)
        norms, self._waiting["update_norms"] = norms.split([len(grads) + len(self.params), len(self._before)])
        self._waiting = None
        return {"present": present, "norms": norms}

    def grad_norm(self, state: dict[str, Any]) -> float:
        """The global norm of the gradients (a sync): what the divergence check reads."""
        return math.hypot(*state["norms"].tolist()[: len(state["present"])])

    def finite_layers(self, present: Sequence[int]) -> list[bool]:
        """Per layer, whether all its gradients are finite (a sync per tensor: for the rare step whose norm is not)."""
        grads = {id(self.params[i]): self.params[i].grad for i in present}
        return [all_finite([grads[id(p)] for p in layer.params if id(p) in grads]) for layer in self.layers]

    @torch.no_grad()
    def count_nonfinite(self, state: dict[str, Any]) -> None:
        """Add the number of NaN and Inf values of each gradient (only worth it when the norms are not finite)."""
        state["grad_nonfinite"] = stats.nonfinite_counts([self.params[i].grad for i in state["present"]]).float()

    @torch.no_grad()
    def after_step(self, state: dict[str, Any], wait: bool = False) -> None:
        """Add the norm of each tensor's update, now that the optimizer has made it; with ``wait``
        (the next step is a logging step too), at the next ``before_step`` or ``close``."""
        self.close()
        if wait:
            self._waiting = state
            return
        torch._foreach_sub_(self._before, self.params)
        state["update_norms"] = stats.tensor_norms(self._before)

    def close(self) -> None:
        """Take the update that waits, if any."""
        if self._waiting is not None:
            state, self._waiting = self._waiting, None
            self.after_step(state)

    def values(self, host: dict[str, np.ndarray], present: Sequence[int]) -> np.ndarray:
        """Scalars ``(steps, len(tags))`` of several steps at once, from ``(steps, size)`` arrays:
        per layer weight norm, gradient norm, update ratio and non-finite gradients, then the
        global gradient norm."""
        present = list(present)
        norms = np.asarray(host["norms"], np.float64)
        members = self._members
        grad = np.sqrt(np.square(norms[:, : len(present)]) @ members[present])
        weight = np.sqrt(np.square(norms[:, len(present) :]) @ members)
        update = np.sqrt(np.square(np.asarray(host["update_norms"], np.float64)) @ members)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(weight > 0, update / weight, np.nan)
        bad = host["grad_nonfinite"] @ members[present] if "grad_nonfinite" in host else np.zeros_like(weight)
        per_layer = np.stack([weight, grad, ratio, bad], axis=2).reshape(len(weight), -1)
        return np.column_stack([per_layer, np.sqrt(np.square(grad).sum(1))])
