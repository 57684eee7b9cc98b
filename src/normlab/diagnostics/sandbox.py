"""A module's training loss, evaluated off the record: nothing logged, no state left changed.

The landscape probes evaluate the loss of the current batch many times, at moved parameters. A
training step does more than compute its loss: it calls ``self.log``, updates torchmetrics, moves
batch-norm running statistics and draws random numbers (dropout). ``sandboxed`` mutes the logging
and, on exit, puts every buffer, metric state and random generator back bit for bit, so training
goes on exactly as if no probe had run.
"""

from __future__ import annotations

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
    """Evaluate ``module`` freely inside; on exit its buffers, metric states and all RNGs are as before.

    Inside, a LightningModule's ``log`` and ``log_dict`` do nothing. The context yields a function
    that rewinds torch's generators to their state on entry: call it before each evaluation so that
    every evaluation draws the same dropout masks and differs only in the parameters.

    Example::

        with sandboxed(model) as rewind:
            rewind()
            loss = training_step_loss(model, batch, 0)
    """
    buffers = {name: b.detach().clone() for name, b in module.named_buffers()}
    metrics = [(m, _metric_state(m)) for m in module.modules() if isinstance(m, Metric)]
    rng = RandomState.capture()
    unmute = _muted(module)
    try:
        yield rng.restore_torch
    finally:
        unmute()
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


def _metric_state(metric: Metric) -> tuple[dict[str, Any], int, Any]:
    # torchmetrics updates its states in place and has no public way to set its update counter
    # back, hence the private attributes.
    values = {k: v.clone() if isinstance(v, Tensor) else [t.clone() for t in v] for k, v in metric.metric_state.items()}
    return values, metric._update_count, metric._computed


def _restore_metric(metric: Metric, state: tuple[dict[str, Any], int, Any]) -> None:
    values, metric._update_count, metric._computed = state
    for name, value in values.items():
        setattr(metric, name, value)
