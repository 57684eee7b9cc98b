"""Sharpness: the top eigenvalue of the loss's Hessian, by power iteration on Hessian-vector products.

Cohen et al. (2021) found that full-batch gradient descent drives this eigenvalue up to ``2 / lr``
and keeps it there (the edge of stability); beyond it, a quadratic model of the loss diverges.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from normlab.diagnostics.geometry import Loss, dot, gradient, norm


def hessian_vector_product(grads: Sequence[Tensor], params: Sequence[Tensor], vector: Sequence[Tensor]) -> list[Tensor]:
    """H v, by differentiating ``grads . v`` once more; ``grads`` must carry a graph (``create_graph=True``)."""
    pairs = [(g, v) for g, v in zip(grads, vector, strict=True) if g.requires_grad]
    hv = torch.autograd.grad(
        [g for g, _ in pairs], params, grad_outputs=[v for _, v in pairs], retain_graph=True, allow_unused=True
    )
    return [torch.zeros_like(p) if h is None else h for p, h in zip(params, hv, strict=True)]


@dataclass(frozen=True)
class Eigen:
    value: float  # the eigenvalue of largest magnitude, with its sign
    iterations: int  # Hessian-vector products it took


def top_hessian_eigenvalue(
    loss: Loss,
    params: Sequence[Tensor],
    iterations: int = 20,
    tolerance: float = 1e-3,
    generator: torch.Generator | None = None,
) -> Eigen:
    """Power iteration: ``v <- H v / ||H v||`` until the Rayleigh quotient ``v . H v`` settles.

    The gradient graph is built once; each iteration then costs one double-backward pass.

    Args:
        loss: closure returning the loss at the current parameters.
        params: the parameters the Hessian is taken over.
        iterations: at most this many Hessian-vector products.
        tolerance: stop once the estimate changes by less than ``tolerance`` times its size.
        generator: draws the random start vector (on the CPU), so that the global RNG is left alone.
    """
    grads = gradient(loss, params, create_graph=True)
    v = [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in params]
    size = norm(v)
    v = [x / size for x in v]
    estimate = None
    for i in range(1, iterations + 1):
        hv = hessian_vector_product(grads, params, v)
        value = dot(v, hv).item()
        size = norm(hv)
        if size == 0:
            return Eigen(0.0, i)  # v lies in the null space, and so, for a zero Hessian, does everything
        v = [h / size for h in hv]
        if estimate is not None and abs(value - estimate) <= tolerance * abs(value):
            return Eigen(value, i)
        estimate = value
    return Eigen(estimate, iterations)
