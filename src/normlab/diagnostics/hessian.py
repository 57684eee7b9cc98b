"""Sharpness: the top eigenvalue of the loss's Hessian, by power iteration on Hessian-vector products.

Cohen et al. (2021) found that full-batch gradient descent drives this eigenvalue up to ``2 / lr``
and keeps it there (the edge of stability); beyond it, a quadratic model of the loss diverges.
Adaptive methods step along ``P^-1 g`` and their stability is set by the top eigenvalue of
``P^-1 H`` instead (Cohen et al. 2022): with a diagonal ``P`` it is that of the symmetric
``P^-1/2 H P^-1/2``, which power iteration handles like ``H``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    value: float  # the largest eigenvalue (the most positive one)
    iterations: int  # Hessian-vector products it took


Operator = Callable[[list[Tensor]], list[Tensor]]


def top_hessian_eigenvalue(
    loss: Loss,
    params: Sequence[Tensor],
    iterations: int = 20,
    tolerance: float = 1e-3,
    generator: torch.Generator | None = None,
    preconditioner: Sequence[Tensor] | None = None,
) -> Eigen:
    """The largest eigenvalue of the Hessian of ``loss`` with respect to ``params``, or of ``P^-1 H``.

    Power iteration finds the eigenvalue of largest magnitude. When that one is negative (a
    saddle, early in training), a second run on ``H - lambda I`` finds the top one: shifted by
    the negative ``lambda``, it has become the largest in magnitude. The gradient graph is built
    once; each iteration then costs one double-backward pass.

    Args:
        loss: closure returning the loss at the current parameters.
        params: the parameters the Hessian is taken over.
        iterations: at most this many Hessian-vector products per power iteration.
        tolerance: stop once the estimate changes by less than ``tolerance`` times its size.
        generator: draws the random start vectors (on the CPU), so that the global RNG is left alone.
        preconditioner: the diagonal of ``P^-1``, one tensor per parameter (zeros for parameters
            that do not move); ``None`` for the plain Hessian.
    """
    grads = gradient(loss, params, create_graph=True)
    return top_eigenvalue(hessian_operator(grads, params, preconditioner), params, iterations, tolerance, generator)


def hessian_operator(
    grads: Sequence[Tensor], params: Sequence[Tensor], preconditioner: Sequence[Tensor] | None = None
) -> Operator:
    """``v -> H v``, or ``v -> P^-1/2 H P^-1/2 v`` (same eigenvalues as ``P^-1 H``) with ``preconditioner``."""
    if preconditioner is None:
        return lambda v: hessian_vector_product(grads, params, v)
    root = [p.sqrt() for p in preconditioner]

    def preconditioned(v: list[Tensor]) -> list[Tensor]:
        hv = hessian_vector_product(grads, params, [r * x for r, x in zip(root, v, strict=True)])
        return [r * h for r, h in zip(root, hv, strict=True)]

    return preconditioned


def top_eigenvalue(
    hessian: Operator, params: Sequence[Tensor], iterations: int, tolerance: float, generator: torch.Generator | None
) -> Eigen:
    """The most positive eigenvalue of the symmetric ``hessian``: power iteration, shifted when a
    negative eigenvalue dominates."""
    dominant = power_iteration(hessian, params, iterations, tolerance, generator)
    if dominant.value >= 0:
        return dominant
    low = dominant.value

    def shifted(v: list[Tensor]) -> list[Tensor]:
        return [h - low * x for h, x in zip(hessian(v), v, strict=True)]

    top = power_iteration(shifted, params, iterations, tolerance, generator)
    return Eigen(top.value + low, dominant.iterations + top.iterations)


def power_iteration(
    operator: Operator, params: Sequence[Tensor], iterations: int, tolerance: float, generator: torch.Generator | None
) -> Eigen:
    """The eigenvalue of largest magnitude of a symmetric ``operator``: ``v <- A v / ||A v||`` until
    the Rayleigh quotient ``v . A v`` changes by less than ``tolerance`` times its size."""
    v = [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in params]
    size = norm(v)
    v = [x / size for x in v]
    estimate = None
    for i in range(1, iterations + 1):
        av = operator(v)
        value = dot(v, av).item()
        size = norm(av)
        if size == 0:
            return Eigen(0.0, i)  # A v = 0 for a random v: almost surely A = 0
        v = [a / size for a in av]
        if estimate is not None and abs(value - estimate) <= tolerance * abs(value):
            return Eigen(value, i)
        estimate = value
    return Eigen(estimate, iterations)
