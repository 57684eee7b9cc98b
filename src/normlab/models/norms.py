"""The normalization families, their options, and where each may sit in a block.

Every family is one value of ``model.norm`` and reads its options from one key of the model
config (``bn``, ``renorm``, ``ln``, ``gn``, ``rms``, ``wn``). All but weight norm are a layer
placed before (``pre``) or after (``post``) the nonlinearity; weight norm reparametrizes the
affine map's weight, so it has no ``post``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from normlab.models.batch_renorm import BatchRenorm


class Norm(str, enum.Enum):
    none = "none"
    batch = "batch"  # Ioffe & Szegedy 2015: per feature, over the batch (and space)
    batch_renorm = "batch_renorm"  # Ioffe 2017: batch norm corrected towards the running statistics
    layer = "layer"  # Ba et al. 2016: per example, over the features (and space)
    group = "group"  # Wu & He 2018: per example, over groups of channels (and space)
    rms = "rms"  # Zhang & Sennrich 2019: per example, divided by the root mean square, no centring
    weight = "weight"  # Salimans & Kingma 2016: w = g v / ||v||, no statistics at all


class NormPosition(str, enum.Enum):
    pre = "pre"  # affine -> norm -> nonlinearity (Ioffe & Szegedy 2015)
    post = "post"  # affine -> nonlinearity -> norm (the Keras tutorial's placement)


BNPosition = NormPosition  # the old name, kept for code that imports it

#: the name a family's layer takes in a block (``layer1.bn``, ``conv2.gn``)
LAYER_NAMES = {Norm.batch: "bn", Norm.batch_renorm: "brn", Norm.layer: "ln", Norm.group: "gn", Norm.rms: "rms"}
#: the model-config key that holds a family's options
OPTION_KEYS = {
    Norm.batch: "bn",
    Norm.batch_renorm: "renorm",
    Norm.layer: "ln",
    Norm.group: "gn",
    Norm.rms: "rms",
    Norm.weight: "wn",
}


class _Options:
    @classmethod
    def from_any(cls, value):
        if value is None:
            return cls()
        return value if isinstance(value, cls) else cls(**dict(value))

    def _init_affine(self, layer: nn.Module) -> nn.Module:
        if getattr(layer, "weight", None) is not None:
            nn.init.constant_(layer.weight, self.gamma_init)
        if getattr(layer, "bias", None) is not None:
            nn.init.constant_(layer.bias, self.beta_init)
        return layer


@dataclass(frozen=True)
class BatchNormOptions(_Options):
    """``momentum`` weighs the newest batch (Keras' 0.99 is PyTorch's 0.01); ``None``: cumulative average."""

    eps: float = 1e-5
    momentum: float | None = 0.1
    affine: bool = True
    gamma_init: float = 1.0
    beta_init: float = 0.0

    def make(self, num_features: int, spatial: bool) -> nn.Module:
        kind = nn.BatchNorm2d if spatial else nn.BatchNorm1d
        return self._init_affine(kind(num_features, eps=self.eps, momentum=self.momentum, affine=self.affine))


@dataclass(frozen=True)
class BatchRenormOptions(_Options):
    eps: float = 1e-5
    momentum: float = 0.01
    r_max: float = 3.0
    d_max: float = 5.0
    warmup_steps: int = 100
    affine: bool = True
    gamma_init: float = 1.0
    beta_init: float = 0.0

    def make(self, num_features: int, spatial: bool) -> nn.Module:
        layer = BatchRenorm(
            num_features, self.eps, self.momentum, self.r_max, self.d_max, self.warmup_steps, self.affine
        )
        return self._init_affine(layer)


@dataclass(frozen=True)
class LayerNormOptions(_Options):
    eps: float = 1e-5
    affine: bool = True
    gamma_init: float = 1.0
    beta_init: float = 0.0

    def make(self, num_features: int, spatial: bool) -> nn.Module:
        if spatial:  # over channels and space, with a per-channel scale: one group of all channels
            return self._init_affine(nn.GroupNorm(1, num_features, eps=self.eps, affine=self.affine))
        return self._init_affine(nn.LayerNorm(num_features, eps=self.eps, elementwise_affine=self.affine))


@dataclass(frozen=True)
class GroupNormOptions(_Options):
    groups: int = 4
    eps: float = 1e-5
    affine: bool = True
    gamma_init: float = 1.0
    beta_init: float = 0.0

    def make(self, num_features: int, spatial: bool) -> nn.Module:
        if num_features % self.groups:
            raise ValueError(
                f"model.gn.groups={self.groups} does not divide a layer of {num_features} features; "
                "pick a number of groups that divides every width"
            )
        return self._init_affine(nn.GroupNorm(self.groups, num_features, eps=self.eps, affine=self.affine))


@dataclass(frozen=True)
class RMSNormOptions(_Options):
    eps: float = 1e-6
    affine: bool = True
    gamma_init: float = 1.0

    def make(self, num_features: int, spatial: bool) -> nn.Module:
        layer = RMSNorm2d(num_features, self.eps, self.affine) if spatial else None
        layer = layer or nn.RMSNorm(num_features, eps=self.eps, elementwise_affine=self.affine)
        if self.affine:
            nn.init.constant_(layer.weight, self.gamma_init)
        return layer


@dataclass(frozen=True)
class WeightNormOptions(_Options):
    """``dim``: the weight's dimension kept separate (0: one norm per output unit or channel)."""

    dim: int = 0


class RMSNorm2d(nn.Module):
    """RMS norm of ``(N, C, H, W)`` over channels and space, with a per-channel gain."""

    def __init__(self, num_features: int, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * torch.rsqrt(x.pow(2).mean(dim=(1, 2, 3), keepdim=True) + self.eps)
        return y if self.weight is None else y * self.weight.view(1, -1, 1, 1)


OPTIONS = {
    Norm.batch: BatchNormOptions,
    Norm.batch_renorm: BatchRenormOptions,
    Norm.layer: LayerNormOptions,
    Norm.group: GroupNormOptions,
    Norm.rms: RMSNormOptions,
    Norm.weight: WeightNormOptions,
}


@dataclass(frozen=True)
class NormSpec:
    """One family, its placement and its options: what a network needs to normalize its blocks."""

    norm: Norm
    position: NormPosition
    options: object | None

    @classmethod
    def build(cls, norm, position, options: dict | None = None) -> NormSpec:
        """``options`` maps option keys (``bn``, ``gn``, ...) to dicts; only this family's is read."""
        norm, position = Norm(norm), NormPosition(position)
        unknown = set(options or {}) - set(OPTION_KEYS.values())
        if unknown:
            raise TypeError(f"unknown normalization options {sorted(unknown)}; known: {sorted(OPTION_KEYS.values())}")
        if norm is Norm.weight and position is NormPosition.post:
            raise ValueError(
                "model.norm=weight reparametrizes the affine layer's weight and cannot sit after the "
                "nonlinearity; use model.norm_position=pre"
            )
        if norm is Norm.none:
            return cls(norm, position, None)
        given = (options or {}).get(OPTION_KEYS[norm])
        return cls(norm, position, OPTIONS[norm].from_any(given))

    @property
    def drops_bias(self) -> bool:
        """Batch statistics taken right after the affine map cancel its bias."""
        return self.norm in (Norm.batch, Norm.batch_renorm) and self.position is NormPosition.pre

    def block(self, affine: nn.Module, width: int, act: nn.Module, spatial: bool = False) -> dict[str, nn.Module]:
        """Named parts of one block: the affine map, the nonlinearity and the norm in its place."""
        name = "conv" if isinstance(affine, nn.Conv2d) else "fc"
        if self.norm is Norm.none:
            return {name: affine, "act": act}
        if self.norm is Norm.weight:
            return {name: weight_norm(affine, dim=self.options.dim), "act": act}
        norm = (LAYER_NAMES[self.norm], self.options.make(width, spatial))
        if self.position is NormPosition.pre:
            return dict([(name, affine), norm, ("act", act)])
        return dict([(name, affine), ("act", act), norm])

    def without(self) -> NormSpec:
        """The same placement without normalization (for layers left out by ``norm_layers``)."""
        return NormSpec(Norm.none, self.position, None)
