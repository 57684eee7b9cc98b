"""Where the first non-finite value of a run came from: pure functions of what a step left behind.

A step produces its values in this order: the input batch; the weights it starts from; the
outputs of the modules, in the order they ran; the loss; the gradients, last layer first. The
origin of a non-finite loss is the first of these that is not finite. The evidence is gathered on
logging steps only (nothing is read from the device on other steps); a non-finite loss on another
step is found at its exact step, through the loss history, but its origin can no longer be seen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import apply_to_collection
from torch import Tensor

UNSEEN = "not seen"  # the layer of a divergence whose step did not log


@dataclass
class Evidence:
    """What a logging step saw, on the host: is each thing finite, in the order the step made it."""

    batch: bool
    weights: Sequence[tuple[str, bool]]  # per layer, forward (registration) order, before the update
    outputs: Sequence[tuple[str, bool]]  # per watched module that ran, in the order it ran
    gradients: Sequence[tuple[str, bool]]  # per layer, forward order
    unwatched: int = 0  # weight-owning modules whose outputs were not watched


def batch_sums(batch: Any, device: torch.device) -> Tensor:
    """The float64 sum of each floating-point tensor in a (nested) batch, on ``device``: every sum
    is finite exactly when every value is (float32 or narrower values cannot overflow it)."""
    tensors: list[Tensor] = []
    apply_to_collection(batch, Tensor, lambda t: tensors.append(t) if t.is_floating_point() else None)
    if not tensors:
        return torch.zeros(0, dtype=torch.float64, device=device)
    return torch.stack([t.sum(dtype=torch.float64).to(device) for t in tensors])


def first_nonfinite(values: Sequence[float]) -> int | None:
    """The index of the first value that is NaN or infinite."""
    return next((i for i, v in enumerate(values) if not math.isfinite(v)), None)


def locate_loss(evidence: Evidence) -> tuple[str, str, str]:
    """The origin of a non-finite loss on a step that logged: ``(layer, source, note)``.

    ``source`` is ``input``, ``weights`` (a layer's weights were already non-finite when the step
    began: an earlier update, or code outside the optimizer, corrupted them), ``activation`` (the
    first watched module whose output was non-finite) or ``loss`` (everything watched was finite).
    ``note`` says when modules left unwatched could hide the origin.
    """
    if not evidence.batch:
        return "input", "input", ""
    bad = [name for name, ok in evidence.weights if not ok]
    if bad:
        return bad[0], "weights", ""
    unwatched = (
        f"{evidence.unwatched} weight-owning modules are not watched and may be the origin"
        if evidence.unwatched
        else ""
    )
    bad = [name for name, ok in evidence.outputs if not ok]
    if bad:
        return bad[0], "activation", unwatched
    if not evidence.outputs:
        return "loss", "loss", "no module output was recorded on this step"
    return "loss", "loss", unwatched or "every watched output was finite: the loss itself overflowed"


def locate_gradient(gradients: Sequence[tuple[str, bool]]) -> str:
    """Where non-finite gradients under a finite loss arose: the backward pass reaches the last
    layer first, so the last non-finite one in forward order."""
    return [name for name, ok in gradients if not ok][-1]
