"""Recording the watched modules' outputs on a logging step, measured as they leave the module.

While a logging step's forward pass runs, each watched module's ``forward`` is wrapped
(``RecordingForward``). The wrapper reduces the output at once to a small ``Measurement`` on the
same device: a sample of its values (all of them up to ``sample_size``), its sum (finite only when
every value is), and what its role adds (which units of a ReLU fired; the input, gamma and beta of
a normalization layer; a batch norm's running statistics from before and after the batch, which
give its batch statistics without another pass over its input). Nothing else
keeps the output, so an in-place activation that runs next (``ReLU(inplace=True)``) cannot change
what was measured, and the memory held is bounded by ``sample_size`` per module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from normlab.diagnostics.selection import Watched

SAMPLE_SEED = 1234  # the same positions are sampled at every step and in every run


@dataclass
class Measurement:
    """What one module's output looked like on one step, as device tensors (0-d unless said)."""

    sample: Tensor  # float32 values of the output, 1-d: all of them, or a fixed random subset
    total: Tensor | None  # float64 sum of an output larger than the sample: not finite when a value is not
    numel: int  # values in the whole output
    extras: dict[str, Tensor] = field(default_factory=dict)  # by role: alive units, a norm's input, gamma, ...
    constants: dict[str, Any] = field(default_factory=dict)  # a norm's eps, momentum, values per channel


def first_tensor(output: Any) -> Tensor | None:
    """The output itself, or the first tensor of a tuple or list (attention returns ``(out, weights)``)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, tuple | list):
        return next((o for o in output if isinstance(o, Tensor)), None)
    return None


class Sampler:
    """Fixed random positions of outputs larger than ``size`` values, one set per size and device."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._positions: dict[tuple[int, torch.device], Tensor] = {}

    def __call__(self, values: Tensor) -> Tensor:
        flat = values.reshape(-1)
        if flat.numel() <= self.size:  # a copy: the module's next user may change it in place
            return flat.clone() if flat.dtype == torch.float32 else flat.float()
        key = (flat.numel(), flat.device)
        if key not in self._positions:
            generator = torch.Generator().manual_seed(SAMPLE_SEED)
            picked = torch.randperm(flat.numel(), generator=generator)[: self.size].sort().values
            self._positions[key] = picked.to(flat.device)
        return flat[self._positions[key]].float()


def measure(watched: Watched, output: Tensor, inputs: tuple, sampler: Sampler, before: Tensor | None) -> Measurement:
    """A module's output reduced to what the statistics need (see the module docstring). The role's
    raw numbers (``extras``) are taken as they are; ``activation_math.role_scalars`` reduces them
    on the host."""
    sample = sampler(output)
    whole = sample.numel() == output.numel()  # then the sample's own sum says whether it is finite
    found = Measurement(sample, None if whole else output.sum(dtype=torch.float64), output.numel())
    if watched.rectifier and output.dim() > 1:  # a unit is dead when no example of the batch activates it
        found.extras["alive"] = (output.reshape(output.shape[0], -1) > 0).any(0)
    if watched.norm:
        module = watched.module
        frozen = watched.batchnorm and module.training and before is None  # momentum 0: no trace in them
        found.extras.update(norm_extras(module, inputs, before, frozen))
        found.constants = {"eps": getattr(module, "eps", 0.0), "momentum": getattr(module, "momentum", None)}
        if before is not None:
            found.constants["per_channel"] = output.numel() // output.shape[1]
    return found


def norm_extras(module: nn.Module, inputs: tuple, before: Tensor | None, frozen: bool = False) -> dict[str, Tensor]:
    """A normalization layer's gamma and beta, and what it normalizes: for a batch norm whose
    running statistics this batch updated, those statistics from before and after the batch
    (``before``: its running mean and variance, concatenated); for one whose running statistics
    do not move (``frozen``: momentum 0), its input's per-channel moments beside them; else the
    moments of its whole input."""
    extras: dict[str, Tensor] = {}
    x = inputs[0] if inputs and isinstance(inputs[0], Tensor) else None
    if before is not None:
        extras.update(running_before=before, running_after=running_statistics(module))
    elif x is not None and x.is_floating_point() and frozen and x.dim() >= 2:
        around = module.running_mean.view(1, -1, *[1] * (x.dim() - 2))  # broadcast per channel
        mean, var = mean_and_var(x, [d for d in range(x.dim()) if d != 1], around)
        extras.update(batch_mean=mean, batch_var=var, running=running_statistics(module))
    elif x is not None and x.is_floating_point():
        mean, var = mean_and_var(x, list(range(x.dim())), torch.zeros((), device=x.device))
        extras.update(input_mean=mean, input_std=var.sqrt())
    for key in ("weight", "bias"):
        param = getattr(module, key, None)
        if isinstance(param, Tensor) and param.is_floating_point():
            extras[key] = param.detach()
    return extras


def running_statistics(module: nn.Module) -> Tensor:
    """A batch norm's running mean and variance in one new tensor, and the batches it has seen
    when its running statistics are a cumulative average (``momentum=None``)."""
    parts = [module.running_mean, module.running_var]
    if module.momentum is None:  # the newest batch weighs 1 / batches seen
        parts.append(module.num_batches_tracked.to(module.running_mean.dtype).view(1))
    return torch.cat(parts)


def mean_and_var(x: Tensor, dims: list[int], around: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and biased variance of ``x`` over ``dims``, summed in float64 as offsets from
    ``around`` (a guess of the mean, so that the variance does not cancel out). On CPU,
    ``torch.var_mean`` over the leading dimensions is many times slower (a millisecond for a
    small convolution's output)."""
    count = math.prod(x.shape[d] for d in dims)
    offsets = x.float() - around
    mean = offsets.sum(dims, dtype=torch.float64) / count
    var = (offsets.square().sum(dims, dtype=torch.float64) / count - mean.square()).clamp_(min=0)
    return (mean + around.reshape(mean.shape if around.dim() else ())).float(), var.float()


class ActivationRecorder:
    """Measures each watched module's first output of a logging step (``attach`` ... ``detach``).

    The wrapper is set on the module instance rather than registered as a forward hook: a module
    with a hook (or all of them, under a global hook) takes ``Module.__call__``'s slower path.
    """

    def __init__(self, watched: list[Watched], sample_size: int) -> None:
        self.watched = watched
        self.sampler = Sampler(sample_size)
        self.measured: dict[int, Measurement] = {}  # index in `watched` -> its measurement, in firing order
        self.attached = False
        self._forwards = [RecordingForward(self, i, w.module) for i, w in enumerate(watched)]

    def attach(self) -> None:
        self.measured = {}
        for forward in self._forwards:
            forward.install()
        self.attached = True

    def detach(self) -> None:
        """Stop recording and give each watched module back the forward it had."""
        self.attached = False
        for forward in self._forwards:
            forward.remove()

    def before(self, index: int) -> Tensor | None:
        """A batch norm's running statistics before its first forward of the step, copied, when
        that forward updates them by its momentum (``batch_statistics`` then recovers the batch's)."""
        module = self.watched[index].module
        if index in self.measured or not self.watched[index].batchnorm or not module.training:
            return None
        if module.momentum == 0 or module.running_mean is None:  # then the batch leaves no trace in them
            return None
        return running_statistics(module)

    @torch.no_grad()
    def record(self, index: int, inputs: tuple, output: Any, before: Tensor | None) -> None:
        tensor = first_tensor(output)
        if index in self.measured or tensor is None or not tensor.is_floating_point():
            return
        self.measured[index] = measure(self.watched[index], tensor, inputs, self.sampler, before)


class RecordingForward:
    """A watched module's ``forward`` while a recorder is attached: the forward the module had
    (its class's, or one set on the instance before), then the recorder's ``record``.

    ``install`` puts it in the module's instance ``__dict__``; ``remove`` takes it out again, also
    from under another recorder's that was installed after it (two callbacks watching one model).
    """

    __slots__ = ("recorder", "index", "module", "forward", "inner", "installed")

    def __init__(self, recorder: ActivationRecorder, index: int, module: nn.Module) -> None:
        self.recorder, self.index, self.module = recorder, index, module
        self.forward = type(module).forward  # taken again at install: a module's class can change (FSDP)
        self.inner: Any = None  # the forward set on the instance before this one, if any
        self.installed = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        recorder, inner = self.recorder, self.inner
        before = recorder.before(self.index) if recorder.attached else None
        output = self.forward(self.module, *args, **kwargs) if inner is None else inner(*args, **kwargs)
        if recorder.attached:
            recorder.record(self.index, args, output, before)
        return output

    def install(self) -> None:
        if not self.installed:
            self.forward = type(self.module).forward
            self.inner = self.module.__dict__.get("forward")
            self.module.__dict__["forward"] = self
            self.installed = True

    def remove(self) -> None:
        if not self.installed:
            return
        attributes = self.module.__dict__
        top = attributes.get("forward")
        if top is self:
            if self.inner is None:
                del attributes["forward"]
            else:
                attributes["forward"] = self.inner
            self.installed = False
            return
        while isinstance(top, RecordingForward):  # another recorder's, installed after this one
            if top.inner is self:
                top.inner, self.installed = self.inner, False
                return
            top = top.inner
