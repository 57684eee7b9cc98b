"""A module's training loss, evaluated off the record: nothing logged, no state left changed.

The landscape probes evaluate the loss of the current batch many times, at moved parameters. A
training step does more than compute its loss: it calls ``self.log``, updates torchmetrics, moves
batch-norm running statistics, draws random numbers (dropout) and may keep Python state (a list
of predictions for a later metric update, a counter). ``sandboxed`` mutes the logging and, on
exit, puts every buffer, metric state, submodule attribute and random generator back bit for bit,
so training goes on exactly as if no probe had run.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import Metric

from normlab.errors import ConfigError

# loss_fn(module, batch) -> scalar loss tensor, differentiable with respect to the parameters
LossFn = Callable[[nn.Module, Any], Tensor]


def training_step_loss(module: L.LightningModule, batch: Any, batch_idx: int) -> Tensor:
    """The loss ``module.training_step`` returns, bare or as the ``loss`` entry of a dict.

    Raises:
        ConfigError: the training step returned no scalar loss tensor.
    """
    out = module.training_step(batch, batch_idx)
    loss = out.get("loss") if isinstance(out, Mapping) else out
    if not isinstance(loss, Tensor) or loss.numel() != 1 or (torch.is_grad_enabled() and not loss.requires_grad):
        raise ConfigError(
            f"{type(module).__name__}.training_step returned {type(out).__name__}, but the landscape probes "
            "need the differentiable loss (a tensor, or a dict with 'loss'); return it, or give the probes "
            "a loss_fn(module, batch)"
        )
    return loss


@contextmanager
def batch_loss(
    trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int, loss_fn: LossFn | None = None
) -> Iterator[Callable[[], Tensor]]:
    """A closure for the loss of ``batch`` (``loss_fn``'s, else ``training_step``'s), with gradients
    on, in the trainer's precision and inside ``sandboxed``; each call starts from the same random
    state, so that every evaluation draws the same dropout masks."""
    with torch.enable_grad(), trainer.precision_plugin.train_step_context(), sandboxed(module) as rewind:

        def loss() -> Tensor:
            rewind()
            if loss_fn is not None:
                return loss_fn(module, batch)
            return training_step_loss(module, batch, batch_idx)

        yield loss


@dataclass
class RandomState:
    """The states of every random generator a training step may draw from."""

    torch_cpu: Tensor
    torch_cuda: list[Tensor] | None
    numpy: Any
    python: Any

    @classmethod
    def capture(cls) -> RandomState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        return cls(torch.get_rng_state(), cuda, np.random.get_state(), random.getstate())

    def restore_torch(self) -> None:
        torch.set_rng_state(self.torch_cpu)
        if self.torch_cuda is not None:
            torch.cuda.set_rng_state_all(self.torch_cuda)

    def restore(self) -> None:
        self.restore_torch()
        np.random.set_state(self.numpy)
        random.setstate(self.python)


@contextmanager
def sandboxed(module: nn.Module) -> Iterator[Callable[[], None]]:
    """Evaluate ``module`` freely inside; on exit its buffers, metric states, attributes and all RNGs
    are as before.

    Attributes are restored one level deep: a list, dict or set attribute of any submodule gets
    its old items back in place, any other attribute its old object, and attributes added inside
    are removed. Objects held inside those containers are not copied.

    Inside, a LightningModule's ``log`` and ``log_dict`` do nothing. The context yields a function
    that rewinds torch's generators to their state on entry: call it before each evaluation so that
    every evaluation draws the same dropout masks and differs only in the parameters.

    Example::

        with sandboxed(model) as rewind:
            rewind()
            loss = training_step_loss(model, batch, 0)
    """
    buffers = {name: b.detach().clone() for name, b in module.named_buffers()}
    attributes = [(vars(m), _attribute_state(m)) for m in module.modules()]
    metrics = [(m, _metric_state(m)) for m in module.modules() if isinstance(m, Metric)]
    rng = RandomState.capture()
    unmute = _muted(module)
    try:
        yield rng.restore_torch
    finally:
        unmute()
        for attrs, state in attributes:
            _restore_attributes(attrs, state)
        with torch.no_grad():
            for name, saved in buffers.items():
                module.get_buffer(name).copy_(saved)
        for metric, state in metrics:
            _restore_metric(metric, state)
        rng.restore()


def _muted(module: nn.Module) -> Callable[[], None]:
    """Shadow ``log``/``log_dict`` with no-ops on the instance; return what undoes it."""
    if not isinstance(module, L.LightningModule):
        return lambda: None
    module.log = module.log_dict = _ignore

    def unmute() -> None:
        del module.log, module.log_dict

    return unmute


def _ignore(*args: Any, **kwargs: Any) -> None:
    return None


_CONTAINERS = (list, dict, set)


def _attribute_state(module: nn.Module) -> dict[str, tuple[Any, Any]]:
    """Each attribute's object and, for a list, dict or set, a copy of its items."""
    return {k: (v, copy.copy(v) if isinstance(v, _CONTAINERS) else None) for k, v in vars(module).items()}


def _restore_attributes(attrs: dict[str, Any], state: dict[str, tuple[Any, Any]]) -> None:
    for name in [k for k in attrs if k not in state]:
        del attrs[name]
    for name, (value, items) in state.items():
        if isinstance(value, list):
            value[:] = items
        elif isinstance(value, dict | set):
            value.clear()
            value.update(items)
        attrs[name] = value


def _metric_state(metric: Metric) -> dict[str, Any]:
    # torchmetrics updates its states in place, so they are cloned; the metric's other attributes
    # (its update counter, its cached result) are plain attributes, put back with every other one.
    return {k: v.clone() if isinstance(v, Tensor) else [t.clone() for t in v] for k, v in metric.metric_state.items()}


def _restore_metric(metric: Metric, values: dict[str, Any]) -> None:
    for name, value in values.items():
        setattr(metric, name, value)
