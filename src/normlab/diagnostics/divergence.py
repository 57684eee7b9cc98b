"""Where the first non-finite value of a run came from, read from what the step left behind.

Every step checks its loss on the device; the step of the first non-finite one is read on the next
logging step, so that no step waits for the device. Between logging steps only the batch's
finiteness is kept with it, and the layer is named from the weights the next logging step finds. A non-finite loss is traced back in the
order in which a step produces its values: the input batch; the watched modules' outputs, in the
order they ran (recorded on logging steps only); the weights, which a finite loss before this step
means the previous optimizer update corrupted; otherwise the forward pass overflowed somewhere
unrecorded. On logging steps the gradients are checked too, and a non-finite gradient under a
finite loss arose in the backward pass, which reaches the last layer first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import apply_to_collection
from torch import Tensor

from normlab.diagnostics.watch import Layer


def all_finite(tensors: Sequence[Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def batch_finite(batch: Any, device: torch.device) -> Tensor:
    """Whether every floating-point tensor in a (nested) batch is finite: a 0/1 integer on the
    device, so that nobody waits for it."""
    tensors: list[Tensor] = []
    apply_to_collection(batch, Tensor, lambda t: tensors.append(t) if t.is_floating_point() else None)
    if not tensors:
        return torch.ones((), dtype=torch.int64, device=device)
    flags = [torch.isfinite(t).all() for t in tensors]
    return (torch.stack(flags).all() if len(flags) > 1 else flags[0]).long()


def locate_loss(
    batch_finite: bool, activations: Sequence[tuple[str, bool]], layers: Sequence[Layer]
) -> tuple[str, str, int]:
    """The origin of a non-finite loss whose predecessors were finite.

    Args:
        batch_finite: whether the training batch was finite.
        activations: ``(name, finite)`` of the watched modules' outputs in the order they ran,
            empty when the step recorded none.
        layers: parameter layers in registration (forward) order, with their current weights.

    Returns:
        ``(layer, source, steps_back)``: the layer (``input`` or ``loss`` when no layer can be
        named), the evidence (``input``, ``activation``, ``update`` or ``loss``), and 1 when the
        previous step's update is to blame, else 0.
    """
    if not batch_finite:
        return "input", "input", 0
    for name, finite in activations:
        if not finite:
            return name, "activation", 0
    corrupted = [layer.name for layer in layers if not all_finite(layer.params)]
    if corrupted:  # the backward pass of the update reached the last of them first
        return corrupted[-1], "update", 1
    return "loss", "loss", 0


def locate_gradient(layers: Sequence[Layer], finite: Sequence[bool]) -> str:
    """The layer where non-finite gradients under a finite loss arose: the last one in forward order."""
    return [layer.name for layer, ok in zip(layers, finite, strict=True) if not ok][-1]
