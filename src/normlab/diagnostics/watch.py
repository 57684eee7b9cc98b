"""Which modules and parameters the diagnostics watch, their names, and the recording of their outputs.

The recording exists only while a logging step's forward pass runs: ``ActivationRecorder.attach``
before it, ``detach`` right after, so every other step runs the model untouched.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

NAN = float("nan")  # one object, so that tuples holding it compare equal (a cache key)
# Output bounds of the saturating activations: their histograms span exactly this range.
SATURATING = {"Sigmoid": (0.0, 1.0), "Tanh": (-1.0, 1.0)}
# Activations whose units die: zero output for every input.
RECTIFIERS = frozenset({"ReLU", "ReLU6"})
DEFAULT_TYPES = (
    "Linear",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "SyncBatchNorm",
    "ReLU",
    "ReLU6",
    "LeakyReLU",
    "ELU",
    "GELU",
    "SiLU",
    "Sigmoid",
    "Tanh",
)


@dataclass
class Watched:
    """A module whose output is recorded: its display name, the module and what kind of output it makes."""

    name: str
    module: nn.Module
    kind: str  # the class name that matched, e.g. "Sigmoid"

    @property
    def saturating(self) -> bool:
        return self.kind in SATURATING

    @property
    def rectifier(self) -> bool:
        return self.kind in RECTIFIERS

    @property
    def batchnorm(self) -> bool:
        return isinstance(self.module, _BatchNorm) and self.module.track_running_stats


@dataclass
class Layer:
    """A module that owns parameters directly (``layer1.fc``: its weight and bias)."""

    name: str
    params: list[nn.Parameter] = field(default_factory=list)


def display_names(names: Sequence[str]) -> list[str]:
    """Names as the tags show them: without ``torch.compile``'s ``_orig_mod`` and without a first
    component that all of them share (``net.layer1.fc`` -> ``layer1.fc``)."""
    names = [".".join(p for p in n.split(".") if p != "_orig_mod") for n in names]
    heads = {n.split(".", 1)[0] for n in names}
    if len(heads) == 1 and all("." in n for n in names):
        names = [n.split(".", 1)[1] for n in names]
    return names


def _kind(module: nn.Module, types: frozenset[str]) -> str | None:
    """The first class in the module's MRO whose name is in ``types``."""
    return next((c.__name__ for c in type(module).__mro__ if c.__name__ in types), None)


def select_modules(
    root: nn.Module, types: Iterable[str], include: Sequence[str] = ("*",), exclude: Sequence[str] = ()
) -> list[Watched]:
    """The submodules of ``root`` whose class (or a base class) is named in ``types`` and whose
    display name matches a pattern of ``include`` and none of ``exclude`` (``fnmatch`` globs).

    Returned in registration order, which is the forward order for sequential networks. Modules
    under an ``nn.DataParallel`` are left out: it copies them, their instance attributes included,
    into replicas at every forward pass, so a replica would run the recording wrapper of the
    module it was copied from (``ActivationRecorder``).
    """
    types = frozenset(types)
    replicated = {id(m) for p in root.modules() if isinstance(p, nn.DataParallel) for m in p.module.modules()}
    found = [(n, m, k) for n, m in root.named_modules() if n and id(m) not in replicated and (k := _kind(m, types))]
    names = display_names([n for n, _, _ in found])
    return [
        Watched(name, module, kind)
        for name, (_, module, kind) in zip(names, found, strict=True)
        if any(fnmatch.fnmatchcase(name, p) for p in include) and not any(fnmatch.fnmatchcase(name, p) for p in exclude)
    ]


def parameter_layers(root: nn.Module) -> list[Layer]:
    """Trainable parameters grouped by the module that registers them, in registration order.

    A parameter of ``root`` itself forms a layer named after the parameter. A parameter shared by
    several modules (tied weights) belongs to the first that registers it, and is counted once,
    with a warning naming the modules that share it.
    """
    layers: list[Layer] = []
    raw: list[str] = []
    owner: dict[int, str] = {}  # id of each parameter seen: its first full name
    shared: list[str] = []
    for module_name, module in root.named_modules():
        own = []
        for n, p in module.named_parameters(recurse=False):
            full = f"{module_name}.{n}" if module_name else n
            if not p.requires_grad:
                continue
            if id(p) in owner:
                shared.append(f"{full} is {owner[id(p)]}")
                continue
            owner[id(p)] = full
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
        rank_zero_warn(
            f"TrainingDiagnostics: tied parameters are counted once, in their first module: {'; '.join(shared)}"
        )
    return layers


class ActivationRecorder:
    """Keeps a reference to each watched module's first output of a step.

    While attached, each watched module's ``forward`` is a ``RecordingForward`` set on the module
    instance. A forward hook would see the same (the positional inputs, and the output before any
    hook changes it), but a module with a hook, or every module under a global one, takes
    ``Module.__call__``'s slow path, which on the MLP costs more than the recording itself.

    For the batch norms it also keeps their input, and hands over their state after the forward
    pass (``bn_state``): running statistics, weights and biases (gamma and beta), and the momentum
    with which this batch moved the running statistics, from which the host recovers them as they
    were before the batch (the train/eval drift). Where that momentum is unknown (``momentum=None``
    or 1, ``SyncBatchNorm``) the running statistics are copied before the forward pass instead.
    """

    def __init__(self, watched: Sequence[Watched]) -> None:
        self.watched = list(watched)
        self.outputs: dict[int, Tensor] = {}  # index in `watched` -> output, in firing order
        self.bn_inputs: dict[int, Tensor] = {}
        self.snapshot: Tensor | None = None  # running means, then variances, when taken before the forward pass
        self.fired: list[int] = []
        self._index = {id(w.module): i for i, w in enumerate(self.watched)}
        self._batchnorm = [w.batchnorm for w in self.watched]
        self._norms = [w.module for w in self.watched if w.batchnorm]
        self._affine = [m for m in self._norms if m.affine]
        self._norm_buffers = [m._buffers for m in self._norms]  # the same dicts for a module's life
        self._affine_params = [m._parameters for m in self._affine]
        self._repeated: set[int] = set()  # batch norms that ran more than once this step
        # whether to copy the running statistics before the forward pass (decided once: a
        # momentum that becomes unknown later costs that step its drift, then they are copied)
        self._copy_before = any(_momentum_unknown(m) for m in self._norms)
        self._momenta: dict[tuple, Tensor] = {}  # per-channel momenta, by device and each batch norm's momentum
        # made once, so that a compiled model that guards on them keeps its compiled code
        self._forwards = [RecordingForward(self, i, w.module) for i, w in enumerate(self.watched)]
        self.attached = False

    @property
    def batchnorms(self) -> list[int]:
        return [i for i, w in enumerate(self.watched) if w.batchnorm]

    def state_offsets(self) -> dict[int, tuple[int, int, int | None, int | None, int]]:
        """Where each watched batch norm's numbers start in a row of ``bn_state``: its running
        mean, running variance, weight and bias (``None`` for a batch norm without them), and momentum."""
        sizes = [self.watched[i].module.num_features for i in self.batchnorms]
        means = np.cumsum([0, *sizes])[:-1]
        total, affine = sum(sizes), sum(m.num_features for m in self._affine)
        weights = iter(np.cumsum([0, *(m.num_features for m in self._affine)])[:-1].tolist())
        offsets = {}
        for i, mean in zip(self.batchnorms, means.tolist(), strict=True):
            weight = 2 * total + next(weights) if self.watched[i].module.affine else None
            bias = None if weight is None else weight + affine
            offsets[i] = (mean, total + mean, weight, bias, 2 * total + 2 * affine + mean)
        return offsets

    @torch.no_grad()
    def attach(self) -> None:
        self.outputs, self.bn_inputs, self.fired, self._repeated = {}, {}, [], set()
        self.snapshot = None
        if self._copy_before:  # before the forward pass updates them
            self.snapshot = torch.cat(self._running_statistics())
        for forward in self._forwards:
            forward.install()
        self.attached = True

    def bn_state(self) -> list[Tensor]:
        """After the forward pass, the watched batch norms' running means, running variances,
        weights and biases, and a tensor of each channel's momentum (the laid-out row of
        ``state_offsets``). The running statistics are as the batch left them: ``(1 - momentum)
        * before + momentum * batch`` (unbiased batch variance), unless the momentum is 0: they
        were copied before (``snapshot``), or the batch norm did not update them (eval mode). A
        batch norm that ran twice gets a NaN momentum: its statistics before cannot be recovered."""
        norms = self._norms
        if not norms:
            return []
        if self.snapshot is not None:
            running = list(self.snapshot.split([m.num_features for m in norms] * 2))
            momenta = tuple([0.0] * len(norms))
        else:
            running = self._running_statistics()
            momenta = tuple([self._momentum(m) for m in norms])
        params = self._affine_params
        weights = [p["weight"] for p in params] + [p["bias"] for p in params]
        return running + weights + [self._momentum_tensor(momenta, running[0].device)]

    def _running_statistics(self) -> list[Tensor]:
        """The watched batch norms' running means, then their running variances, read from the
        modules' own dicts: ``Module.__getattr__`` costs more than the copy."""
        buffers = self._norm_buffers
        return [b["running_mean"] for b in buffers] + [b["running_var"] for b in buffers]

    def _momentum(self, norm: _BatchNorm) -> float:
        """How far this step moved the running statistics of ``norm``: NaN where unknown."""
        if not norm.training:
            return 0.0
        if _momentum_unknown(norm):
            self._copy_before = True
            return NAN
        if self._repeated and self._index[id(norm)] in self._repeated:
            return NAN
        return float(norm.momentum)

    def _momentum_tensor(self, momenta: tuple[float, ...], device: torch.device) -> Tensor:
        tensor = self._momenta.get((device, momenta))
        if tensor is None:
            per_channel = np.repeat(momenta, [m.num_features for m in self._norms])
            tensor = self._momenta[device, momenta] = torch.tensor(per_channel, dtype=torch.float32, device=device)
        return tensor

    def detach(self) -> None:
        """Stop recording and give each watched module back the forward it had."""
        self.attached = False
        for forward in self._forwards:
            forward.remove()

    def release(self) -> None:
        """Drop the references to the step's tensors; ``fired`` keeps the order in which the modules ran."""
        self.fired = list(self.outputs)
        self.outputs, self.bn_inputs, self.snapshot = {}, {}, None

    def _record(self, i: int, args: tuple, output: Any) -> None:
        if not isinstance(output, Tensor):
            return
        if i in self.outputs:
            if self._batchnorm[i]:
                self._repeated.add(i)
            return
        self.outputs[i] = output  # read under no_grad only: no detach needed
        if self._batchnorm[i] and args and isinstance(args[0], Tensor):
            self.bn_inputs[i] = args[0]


class RecordingForward:
    """A watched module's ``forward`` while a recorder is attached: the forward the module had
    (its class's, or one set on the instance before), then the recorder's ``_record``.

    ``install`` puts it in the module's instance ``__dict__``; ``remove`` takes it out again, also
    from under another recorder's that was installed after it (two callbacks watching one model).
    Under a forward that someone else set on the module meanwhile it stays, passing the calls
    through while its recorder is detached, until it can be removed.
    """

    __slots__ = ("recorder", "index", "module", "forward", "inner", "installed")

    def __init__(self, recorder: ActivationRecorder, index: int, module: nn.Module) -> None:
        self.recorder, self.index, self.module = recorder, index, module
        self.forward = type(module).forward  # taken again at install: a module's class can change (FSDP)
        self.inner: Any = None  # the forward set on the instance before this one, if any
        self.installed = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        inner = self.inner
        output = self.forward(self.module, *args, **kwargs) if inner is None else inner(*args, **kwargs)
        if self.recorder.attached:
            self.recorder._record(self.index, args, output)
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


def _momentum_unknown(norm: _BatchNorm) -> bool:
    """Whether a training batch moves the running statistics by an amount not known from the
    batch alone: a cumulative average, a momentum of 1, or statistics synchronised across ranks."""
    momentum = norm.momentum
    return momentum is None or momentum >= 1 or isinstance(norm, nn.SyncBatchNorm)
