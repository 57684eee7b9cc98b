"""Which modules' outputs the diagnostics watch, chosen by role, and what they are called in the tags.

By default a module is watched for what it does, whatever its class: it owns a weight (a linear
layer, a convolution, an embedding, Hugging Face's ``Conv1D``, a layer of your own), it normalizes
(every class named ``*norm*``), it is an activation, or it is an attention or a transformer block (whose
first output tensor is taken). ``types`` replaces the roles with a list of class names.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize

# Output bounds of the saturating activations: their histograms span exactly this range.
SATURATING = {"Sigmoid": (0.0, 1.0), "Tanh": (-1.0, 1.0), "Hardtanh": (-1.0, 1.0), "Hardsigmoid": (0.0, 1.0)}
# Activations whose units die: zero output for every input.
RECTIFIERS = frozenset({"ReLU", "ReLU6"})
ACTIVATION_NAME = re.compile(r"(ReLU|GELU|SiLU|Swish|Mish|ELU|Sigmoid|Tanh|Softplus|Activation)", re.IGNORECASE)
BLOCK_NAME = re.compile(r"(Attention|EncoderLayer|DecoderLayer|Block)$")


@dataclass
class Watched:
    """A module whose output is measured: its display name, the module and its role."""

    name: str
    module: nn.Module
    role: str  # weight | norm | activation | block
    kind: str  # its class name, e.g. "Sigmoid"

    @property
    def saturating(self) -> bool:
        return self.kind in SATURATING

    @property
    def rectifier(self) -> bool:
        return self.kind in RECTIFIERS

    @property
    def norm(self) -> bool:
        return self.role == "norm"

    @property
    def batchnorm(self) -> bool:
        """A batch norm whose running statistics can drift from its batches'."""
        return isinstance(self.module, _BatchNorm) and self.module.track_running_stats


@dataclass
class Selection:
    """The watched modules in registration order, and the others by the reason they are left out."""

    watched: list[Watched]
    left_out: dict[str, list[str]] = field(default_factory=dict)
    unwatched_owners: int = 0  # modules that own a weight but are not watched

    def describe(self, widen_key: str = "max_modules") -> str:
        """One line for the start of a run: how many are watched, which are not and why."""
        total = len(self.watched) + sum(len(v) for v in self.left_out.values())
        parts = [f"watching {len(self.watched)} of {total} modules"]
        for reason, names in self.left_out.items():
            shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
            hint = f" ({widen_key}=0 watches all)" if reason == "over the limit" else ""
            parts.append(f"{len(names)} {reason}{hint}: {shown}")
        return "; ".join(parts)


def role_of(module: nn.Module) -> str | None:
    """What a module does for the diagnostics, or ``None`` for a container that only passes data on."""
    classes = [c.__name__ for c in type(module).__mro__]
    if isinstance(module, parametrize.ParametrizationList):
        return None  # computes a parametrized weight, not an output of the network
    if any("norm" in name.lower() for name in classes[:-2]):  # BatchRenorm, LlamaRMSNorm, ...
        return "norm"
    if type(module).__module__ == "torch.nn.modules.activation" and not isinstance(module, nn.MultiheadAttention):
        return "activation"
    if ACTIVATION_NAME.search(classes[0]) and not any(True for _ in module.parameters(recurse=False)):
        return "activation"
    if any(BLOCK_NAME.search(name) for name in classes[:-2]):
        return "block"
    if any(True for _ in module.parameters(recurse=False)) or parametrize.is_parametrized(module):
        return "weight"
    return None


def display_names(names: Sequence[str]) -> list[str]:
    """Names as the tags show them: without ``torch.compile``'s ``_orig_mod`` and without a first
    component that all of them share (``net.layer1.fc`` -> ``layer1.fc``)."""
    names = [".".join(p for p in n.split(".") if p != "_orig_mod") for n in names]
    heads = {n.split(".", 1)[0] for n in names}
    if len(heads) == 1 and all("." in n for n in names):
        names = [n.split(".", 1)[1] for n in names]
    return names


def select_modules(
    root: nn.Module,
    types: Iterable[str] | None = None,
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
    max_modules: int = 0,
) -> Selection:
    """The submodules of ``root`` to watch.

    Args:
        root: the model (a LightningModule or any ``nn.Module``).
        types: class names to watch (a subclass matches too) instead of the roles; ``None``: by role.
        include, exclude: ``fnmatch`` patterns of display names to keep, and to leave out.
        max_modules: at most this many, spread evenly over the model (first and last kept); 0: no limit.

    Modules under an ``nn.DataParallel`` are left out: it copies them into replicas at every
    forward pass, so a replica would run the recording of the module it was copied from.
    """
    names = frozenset(types) if types is not None else None
    replicated = {id(m) for p in root.modules() if isinstance(p, nn.DataParallel) for m in p.module.modules()}
    left_out: dict[str, list[str]] = {}
    found = []
    for full_name, module in root.named_modules():
        if not full_name:
            continue
        if names is None:
            role = role_of(module)
            kind = type(module).__name__
        else:
            kind = next((c.__name__ for c in type(module).__mro__ if c.__name__ in names), None)
            role = (role_of(module) or "weight") if kind else None
        if role is None:
            continue
        if id(module) in replicated:
            left_out.setdefault("under nn.DataParallel", []).append(full_name)
            continue
        found.append((full_name, module, role, kind))
    watched: list[Watched] = []
    owners_out: list[bool] = []
    for name, (_, module, role, kind) in zip(display_names([f[0] for f in found]), found, strict=True):
        if not any(fnmatch.fnmatchcase(name, p) for p in include) or any(fnmatch.fnmatchcase(name, p) for p in exclude):
            left_out.setdefault("by include/exclude", []).append(name)
            owners_out.append(role == "weight")
        else:
            watched.append(Watched(name, module, role, kind))
    if max_modules and len(watched) > max_modules:
        keep = evenly_spaced(len(watched), max_modules)
        left_out["over the limit"] = [w.name for i, w in enumerate(watched) if i not in keep]
        owners_out += [w.role == "weight" for i, w in enumerate(watched) if i not in keep]
        watched = [w for i, w in enumerate(watched) if i in keep]
    return Selection(watched, left_out, sum(owners_out))


def evenly_spaced(total: int, count: int) -> set[int]:
    """``count`` indices of ``range(total)`` spread evenly, the first and the last included."""
    if count <= 1:
        return {0}
    return {round(i * (total - 1) / (count - 1)) for i in range(count)}
