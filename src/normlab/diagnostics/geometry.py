"""The loss landscape around the current parameters, on one batch (Santurkar et al. 2018).

Santurkar et al. walk along the gradient, the step of plain gradient descent; ``walk_along``
takes any step, so that the probes follow the update the optimizer actually makes.

Every function takes the loss as a closure, ``loss() -> scalar tensor``, evaluated at whatever
values ``params`` hold when it is called, and moves the parameters only inside
``parameters_at``, which puts the original values back bit for bit. ``.grad`` is never touched:
gradients come from ``torch.autograd.grad``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

Loss = Callable[[], Tensor]


@contextmanager
def parameters_at(params: Sequence[Tensor], values: Sequence[Tensor]) -> Iterator[None]:
    """Copy ``values`` into ``params`` in place; restore the old values on exit."""
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, v in zip(params, values, strict=True):
            p.copy_(v)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)


def value_and_gradient(loss: Loss, params: Sequence[Tensor], create_graph: bool = False) -> tuple[Tensor, list[Tensor]]:
    """The loss and d loss / d params at their current values (zeros for parameters it does not use)."""
    value = loss()
    grads = torch.autograd.grad(value, params, create_graph=create_graph, allow_unused=True)
    return value, [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def gradient(loss: Loss, params: Sequence[Tensor], create_graph: bool = False) -> list[Tensor]:
    return value_and_gradient(loss, params, create_graph)[1]


def norm(tensors: Sequence[Tensor]) -> Tensor:
    """The l2 norm of all entries of ``tensors`` taken as one vector."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


def dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b, strict=True))


@dataclass(frozen=True)
class Walk:
    """What happens to the loss and its gradient ``g`` at ``w + m * step``, for each multiple ``m``.

    ``losses[k]`` is the loss at the k-th multiple; ``grad_changes[k]`` is
    ``||grad L(w + m_k step) - g||`` (``None`` when the walk skipped gradients); ``step_norm`` is
    ``||step||``.
    """

    multiples: list[float]
    losses: list[float]
    grad_changes: list[float] | None
    step_norm: float

    def loss_variation(self) -> dict[str, float]:
        lo, hi = min(self.losses), max(self.losses)
        return {"min": lo, "max": hi, "range": hi - lo}

    def grad_predictiveness(self) -> dict[str, float]:
        return {"min": min(self.grad_changes), "max": max(self.grad_changes)}

    def beta_smoothness(self) -> float:
        """The largest gradient change per unit of distance moved: an effective Lipschitz constant of the gradient."""
        if self.step_norm == 0:
            return math.nan  # no direction to move in
        return max(d / (m * self.step_norm) for d, m in zip(self.grad_changes, self.multiples, strict=True))


def walk_along(
    loss: Loss,
    params: Sequence[Tensor],
    step: Sequence[Tensor] | None,
    multiples: Sequence[float],
    with_gradients: bool = True,
) -> Walk:
    """Evaluate the loss (and, ``with_gradients``, its gradient) at ``w + m * step`` for each multiple ``m``.

    ``step`` is the update the optimizer is about to make (``None``: ``-g``, so that the multiples
    are step sizes of gradient descent). Costs one forward and backward pass for ``g``, then one
    forward (and backward) per multiple.
    """
    g = gradient(loss, params)
    step = [-d for d in g] if step is None else list(step)
    losses, changes = [], []
    for m in multiples:
        with parameters_at(params, [p.detach() + m * s for p, s in zip(params, step, strict=True)]):
            if with_gradients:
                value, moved = value_and_gradient(loss, params)
                changes.append(norm([a - b for a, b in zip(moved, g, strict=True)]).item())
            else:
                with torch.no_grad():
                    value = loss()
            losses.append(value.item())
    return Walk(list(multiples), losses, changes if with_gradients else None, norm(step).item())


def walk_along_gradient(
    loss: Loss, params: Sequence[Tensor], step_sizes: Sequence[float], with_gradients: bool = True
) -> Walk:
    """``walk_along`` plain gradient descent's steps ``-eta * g`` for each step size ``eta``."""
    return walk_along(loss, params, None, step_sizes, with_gradients)


@dataclass(frozen=True)
class Shift:
    """How a layer's gradient changes when the layers before it take their update."""

    l2: float  # ||G' - G||
    cos: float  # cosine of the angle between G' and G


def covariate_shift(
    loss: Loss, params: Sequence[Tensor], before: Sequence[Tensor], layers: Mapping[str, Sequence[int]]
) -> dict[str, Shift]:
    """Internal covariate shift of each layer, in the sense of Santurkar et al. (2018).

    For layer i, ``G`` is its gradient at the parameters before the update and ``G'`` its gradient
    when every parameter before it holds its updated value and it and the later ones their old
    values. A layer with nothing before it has no shift and is left out.

    Args:
        loss: the loss of the batch the update was computed on.
        params: all parameters in forward order, holding their values after the update.
        before: their values before the update.
        layers: layer name -> indices into ``params`` of that layer's parameters.
    """
    with parameters_at(params, before):
        g_before = gradient(loss, params)
    out = {}
    for name, idx in layers.items():
        first = min(idx)
        if first == 0:
            continue
        later = range(first, len(params))
        with parameters_at([params[j] for j in later], [before[j] for j in later]):
            g_after = gradient(loss, [params[j] for j in idx])
        g_ref = [g_before[j] for j in idx]
        diff = norm([a - b for a, b in zip(g_after, g_ref, strict=True)]).item()
        cos = (dot(g_after, g_ref) / (norm(g_after) * norm(g_ref))).item()
        out[name] = Shift(diff, cos)
    return out
