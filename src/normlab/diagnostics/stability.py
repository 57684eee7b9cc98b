"""The sharpness an optimizer is stable under, and the threshold beyond which it diverges.

On a quadratic with Hessian ``H``, an optimizer that steps along ``P^-1`` times (a running mean
of) the gradient diverges once the top eigenvalue of ``P^-1 H`` exceeds a threshold set by its
learning rate and momentum (Cohen et al. 2021; Cohen et al. 2022, "Adaptive Gradient Methods at
the Edge of Stability"):

- gradient descent: ``2 / lr`` on the plain sharpness;
- heavy-ball momentum ``beta`` (torch's SGD): ``(2 + 2 beta) / lr``, divided by ``1 - dampening``;
- Nesterov momentum: ``(2 + 2 beta) / ((1 + 2 beta) lr)``;
- Adam and AdamW, whose step is ``lr P^-1 m`` with ``m`` the running mean of the gradients and
  ``P = (1 - beta1^t) diag(sqrt(v_hat) + eps)`` (``v_hat`` the bias-corrected second moments):
  ``(2 + 2 beta1) / ((1 - beta1) lr)``, 38 / lr at ``beta1 = 0.9``, on the preconditioned sharpness.

Parameter groups with other learning rates than the first fold ``lr_g / lr`` into ``P^-1``.
Weight decay is left out: it adds its coefficient (typically 1e-4 to 1e-2) to the curvature.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from normlab.diagnostics.update import Preview


@dataclass(frozen=True)
class Stability:
    """The threshold that fits an optimizer and the quantity it applies to.

    ``preconditioner`` is the diagonal of ``P^-1`` per parameter (zeros for parameters that do not
    move), or ``None`` when the threshold applies to the plain Hessian; ``rule`` says which rule
    gave ``threshold``, or why there is none (``threshold`` is then ``None``).
    """

    threshold: float | None
    preconditioner: list[Tensor] | None
    rule: str


def gd_threshold(lr: float) -> float:
    return 2 / lr


def heavy_ball_threshold(lr: float, momentum: float, dampening: float = 0.0) -> float:
    """torch's SGD momentum, ``b = beta b + (1 - dampening) g; w -= lr b``, on a quadratic."""
    return (2 + 2 * momentum) / (lr * (1 - dampening))


def nesterov_threshold(lr: float, momentum: float) -> float:
    """torch's Nesterov SGD, ``w -= lr (g + beta b)``: the characteristic root -1 of its linear map."""
    return (2 + 2 * momentum) / ((1 + 2 * momentum) * lr)


def adam_threshold(lr: float, beta1: float) -> float:
    """Adam with a frozen preconditioner is heavy-ball with dampening ``beta1`` (Cohen et al. 2022)."""
    return (2 + 2 * beta1) / ((1 - beta1) * lr)


def adam_inverse_preconditioner(exp_avg_sq: Tensor, step: float, beta1: float, beta2: float, eps: float) -> Tensor:
    """The diagonal of ``P^-1``, ``1 / ((1 - beta1^t) (sqrt(v / (1 - beta2^t)) + eps))``: Adam's step is
    ``lr P^-1 m`` with ``m`` its raw running mean of the gradients (torch's ``exp_avg``)."""
    v_hat = exp_avg_sq / (1 - beta2**step)
    return 1 / ((1 - beta1**step) * (v_hat.sqrt() + eps))


def stability(preview: Preview) -> Stability:
    """The threshold for the optimizer ``preview`` stepped, from the state its step used."""
    optimizer = preview.shadow
    lr = float(optimizer.param_groups[0]["lr"])
    name = type(optimizer).__name__
    if lr <= 0:
        return Stability(None, None, f"{name} has lr {lr}: no threshold")
    if isinstance(optimizer, torch.optim.SGD):
        return _sgd(preview, lr)
    if isinstance(optimizer, torch.optim.Adam):  # AdamW included
        return _adam(preview, lr)
    return Stability(None, None, f"no stability threshold is known for {name}: the sharpness is logged alone")


def _sgd(preview: Preview, lr: float) -> Stability:
    groups = preview.shadow.param_groups
    kinds = {(float(g["momentum"]), float(g["dampening"]), bool(g["nesterov"])) for g in groups}
    if len(kinds) > 1:
        return Stability(
            None, None, f"SGD groups differ in momentum, dampening or nesterov {sorted(kinds)}: no threshold"
        )
    ((momentum, dampening, nesterov),) = kinds
    if momentum == 0:
        threshold, rule = gd_threshold(lr), "SGD: 2 / lr"
    elif nesterov:
        threshold, rule = nesterov_threshold(lr, momentum), "SGD Nesterov: (2 + 2*momentum) / ((1 + 2*momentum) * lr)"
    else:
        threshold = heavy_ball_threshold(lr, momentum, dampening)
        rule = "SGD momentum: (2 + 2*momentum) / ((1 - dampening) * lr)"
    scales = [_relative_lr(preview, i, lr) for i in range(len(preview.delta))]
    if all(s == 1 for s in scales):
        return Stability(threshold, None, rule)
    ones = [torch.full_like(d, s) for d, s in zip(preview.delta, scales, strict=True)]
    return Stability(threshold, ones, rule + ", on the sharpness scaled by each group's lr / the first group's")


def _adam(preview: Preview, lr: float) -> Stability:
    groups = preview.shadow.param_groups
    beta1s = {float(g["betas"][0]) for g in groups}
    if len(beta1s) > 1:
        return Stability(None, None, f"Adam groups differ in beta1 {sorted(beta1s)}: no threshold")
    (beta1,) = beta1s
    inverse = []
    for i, delta in enumerate(preview.delta):
        state, group = preview.shadow_state(i), preview.group_of(i)
        second = state.get("max_exp_avg_sq") if group and group["amsgrad"] else state.get("exp_avg_sq")
        if second is None:  # not held by the optimizer, or no gradient yet: it does not move
            inverse.append(torch.zeros_like(delta))
            continue
        _, beta2 = (float(b) for b in group["betas"])
        p_inv = adam_inverse_preconditioner(second, float(state["step"]), beta1, beta2, float(group["eps"]))
        inverse.append(p_inv * (float(group["lr"]) / lr))
    rule = "Adam: preconditioned sharpness against (2 + 2*beta1) / ((1 - beta1) * lr)"
    return Stability(adam_threshold(lr, beta1), inverse, rule)


def _relative_lr(preview: Preview, i: int, lr: float) -> float:
    group = preview.group_of(i)
    return 0.0 if group is None else float(group["lr"]) / lr
