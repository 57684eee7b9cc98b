"""The trainable parameters grouped into layers, and the pure math of their health: per-layer norms
of weights, gradients and updates from per-tensor norms."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from normlab.diagnostics.selection import display_names

PER_LAYER = ("weight_norm", "grad_norm", "update_ratio", "grad_nonfinite")


@dataclass
class Layer:
    """A module that owns parameters directly (``layer1.fc``: its weight and bias)."""

    name: str
    params: list[nn.Parameter] = field(default_factory=list)


def parameter_layers(root: nn.Module, owner: str = "TrainingDiagnostics") -> list[Layer]:
    """Trainable parameters grouped by the module that registers them, in registration order.

    A parameter of ``root`` itself forms a layer named after the parameter. A parameter shared by
    several modules (tied weights) belongs to the first that registers it and is counted once,
    with a warning naming the modules that share it.
    """
    layers: list[Layer] = []
    raw: list[str] = []
    first_name: dict[int, str] = {}  # id of each parameter seen: its first full name
    shared: list[str] = []
    for module_name, module in root.named_modules():
        own = []
        for n, p in module.named_parameters(recurse=False):
            full = f"{module_name}.{n}" if module_name else n
            if not p.requires_grad:
                continue
            if id(p) in first_name:
                shared.append(f"{full} is {first_name[id(p)]}")
                continue
            first_name[id(p)] = full
            own.append((n, p))
        if not own:
            continue
        if module_name:
            raw.append(module_name)
            layers.append(Layer(module_name, [p for _, p in own]))
        else:
            for n, p in own:
                raw.append(n)
                layers.append(Layer(n, [p]))
    for layer, name in zip(layers, display_names(raw), strict=True):
        layer.name = name
    if shared:
        rank_zero_warn(f"{owner}: tied parameters are counted once, in their first module: {'; '.join(shared)}")
    return layers


@torch.no_grad()
def tensor_norms(tensors: Sequence[Tensor]) -> Tensor:
    """The L2 norm of each tensor, in float32: ``(len(tensors),)``, on their device.

    ``torch._foreach_norm`` is the one call that takes them all (what ``clip_grad_norm_`` uses);
    a norm per tensor costs a small model a tenth of a step on every logging step.
    """
    tensors = list(tensors)
    if all(t.dtype == torch.float32 for t in tensors):
        return torch.stack(torch._foreach_norm(tensors))
    return torch.stack([torch.linalg.vector_norm(t, dtype=torch.float32) for t in tensors])


def gradient_and_weight_norms(params: Sequence[Tensor], with_gradients: bool = True) -> tuple[list[int], Tensor]:
    """The indices of the parameters that have a gradient, and in one call the norms of those
    gradients followed by every parameter's weight norm (``with_gradients=False``: the weight
    norms alone). What ``ParameterHealth`` and ``DivergenceMonitor`` both read."""
    present = [i for i, p in enumerate(params) if p.grad is not None] if with_gradients else []
    tensors = [params[i].grad for i in present] + list(params)
    return present, tensor_norms(tensors) if tensors else torch.zeros(0)


@torch.no_grad()
def copies(tensors: Sequence[Tensor]) -> list[Tensor]:
    """A copy of each tensor (one call for all of them: ``torch._foreach_mul`` makes new tensors)."""
    return torch._foreach_mul(list(tensors), 1.0)


@torch.no_grad()
def subtract_from(before: list[Tensor], after: Sequence[Tensor]) -> list[Tensor]:
    """``before - after`` for each pair of tensors, in one call, written over ``before`` (a copy
    that is no longer needed: no new memory the size of the model)."""
    torch._foreach_sub_(before, list(after))
    return before


def nonfinite_counts(tensors: Sequence[Tensor]) -> list[int]:
    """Number of NaN or infinite values of each tensor (a read per tensor: for the rare bad step)."""
    return [int((~torch.isfinite(t)).sum()) for t in tensors]


def membership(layers: Sequence[Layer]) -> np.ndarray:
    """``(tensors, layers)`` 0/1: which layer each parameter tensor belongs to, so that squared
    tensor norms times it are squared layer norms."""
    owner = np.array([i for i, layer in enumerate(layers) for _ in layer.params], dtype=np.int64)
    return (owner[:, None] == np.arange(len(layers))).astype(np.float64)


def layer_norms(tensor_norms: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Per-layer L2 norms from per-tensor ones (``members``: the rows of the tensors given)."""
    return np.sqrt(np.square(np.asarray(tensor_norms, np.float64)) @ members)


def layer_values(
    grad: np.ndarray, weight: np.ndarray, update: np.ndarray, members: np.ndarray, present: Sequence[int]
) -> dict[str, np.ndarray]:
    """Per layer: weight norm, gradient norm (of the tensors in ``present``, those with a gradient),
    update-to-weight ratio; and the global gradient norm under ``"global"``."""
    grads = layer_norms(grad, members[list(present)])
    weights = layer_norms(weight, members)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(weights > 0, layer_norms(update, members) / weights, np.nan)
    return {
        "weight_norm": weights,
        "grad_norm": grads,
        "update_ratio": ratio,
        "global": np.sqrt(np.square(grads).sum()),
    }
