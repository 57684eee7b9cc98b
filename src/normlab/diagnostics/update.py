"""The update the optimizer is about to make, computed on a copy so that training is untouched.

Momentum and adaptive optimizers do not step along ``-lr * g``: SGD with momentum adds its
velocity, Adam's first step is about ``lr * sign(g)`` whatever the size of ``g``. Probes that
stand for "the step training takes" must take that step. ``preview_step`` runs the optimizer's
own ``step`` on a shadow: a new instance of its class over clones of its parameters and their
gradients, loaded with a deep copy of its ``state_dict`` (public API throughout). The real
parameters, gradients, optimizer state and step hooks are never touched.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.optim import Optimizer


class PreviewError(RuntimeError):
    """The optimizer could not be rebuilt or stepped on a copy (say, it needs a closure)."""


@dataclass
class Preview:
    """What one step of the optimizer would do, computed on a shadow copy.

    ``delta[i]`` is ``w_next - w`` for ``params[i]`` (zeros for a parameter the optimizer does not
    hold); ``shadow`` is the copied optimizer after its step and ``shadow_params[i]`` the copy of
    ``params[i]`` it stepped (``None`` where not held): its ``state`` has what the step used (Adam's
    second moments and step count).
    """

    delta: list[Tensor]
    shadow: Optimizer
    shadow_params: list[Tensor | None]

    def __post_init__(self) -> None:
        self._groups = {id(p): g for g in self.shadow.param_groups for p in g["params"]}

    def shadow_state(self, i: int) -> dict:
        param = self.shadow_params[i]
        return {} if param is None else self.shadow.state.get(param, {})

    def group_of(self, i: int) -> dict | None:
        """The shadow's parameter group that holds ``params[i]``; ``None`` where none does."""
        param = self.shadow_params[i]
        return None if param is None else self._groups.get(id(param))


def preview_step(
    optimizer: Optimizer, params: Sequence[Tensor], before_step: Callable[[Optimizer], None] | None = None
) -> Preview:
    """Run ``optimizer.step()`` on a copy of it and of its parameters; return the update per parameter.

    Args:
        optimizer: the real optimizer, with the gradients of this step in its parameters' ``.grad``.
        params: the parameters to report the update of, e.g. a module's trainable parameters.
        before_step: called with the shadow before it steps, e.g. to clip its gradients as the
            trainer is about to clip the real ones.

    Raises:
        PreviewError: the optimizer cannot be rebuilt from its class and ``state_dict``, or its
            ``step`` fails without a closure (L-BFGS).
    """
    clones = {id(p): _clone(p) for group in optimizer.param_groups for p in group["params"]}
    groups = [
        {**{k: v for k, v in group.items() if k != "params"}, "params": [clones[id(p)] for p in group["params"]]}
        for group in optimizer.param_groups
    ]
    shadow = _rebuild(optimizer, groups)
    try:
        # A deep copy: load_state_dict keeps tensors that already have the right dtype and device,
        # and the shadow's step would then update the real state in place.
        shadow.load_state_dict(copy.deepcopy(optimizer.state_dict()))
        if before_step is not None:
            before_step(shadow)
        shadow.step()
    except (TypeError, ValueError, RuntimeError, KeyError) as error:
        raise PreviewError(f"{type(optimizer).__name__}.step() failed on a copy: {error}") from error
    shadow_params = [clones.get(id(p)) for p in params]
    delta = [
        torch.zeros_like(p) if c is None else c.detach() - p.detach()
        for p, c in zip(params, shadow_params, strict=True)
    ]
    return Preview(delta, shadow, shadow_params)


def _clone(param: Tensor) -> Tensor:
    clone = param.detach().clone().requires_grad_(param.requires_grad)
    if param.grad is not None:
        clone.grad = param.grad.detach().clone()
    return clone


def _rebuild(optimizer: Optimizer, groups: list[dict]) -> Optimizer:
    """A new optimizer of the same class over ``groups``: the groups carry every option, and the
    class's defaults fill required constructor arguments for optimizers that have some."""
    cls = type(optimizer)
    try:
        return cls(groups)
    except TypeError:
        pass
    try:
        return cls(groups, **optimizer.defaults)
    except (TypeError, ValueError) as error:
        raise PreviewError(f"cannot rebuild {cls.__name__} from its param_groups and defaults: {error}") from error
