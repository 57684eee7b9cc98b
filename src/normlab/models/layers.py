"""Building blocks shared by the networks: activations, initialisation and batch-norm options."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from torch import nn


class Activation(str, enum.Enum):
    sigmoid = "sigmoid"
    relu = "relu"
    tanh = "tanh"


class Norm(str, enum.Enum):
    none = "none"
    batch = "batch"


class BNPosition(str, enum.Enum):
    pre = "pre"  # affine -> BN -> nonlinearity, bias dropped (Ioffe & Szegedy 2015)
    post = "post"  # affine -> nonlinearity -> BN (the Keras tutorial's placement)


class Init(str, enum.Enum):
    default = "default"  # PyTorch's own (Kaiming-uniform with a=sqrt(5))
    normal = "normal"  # N(0, init_std), as in the paper's MNIST experiment
    xavier = "xavier"
    kaiming = "kaiming"


ACTIVATIONS = {Activation.sigmoid: nn.Sigmoid, Activation.relu: nn.ReLU, Activation.tanh: nn.Tanh}


@dataclass(frozen=True)
class BatchNormOptions:
    """Batch-norm hyperparameters, in PyTorch's convention.

    ``momentum`` weighs the newest batch in the running statistics (Keras' 0.99 is PyTorch's 0.01);
    ``None`` keeps a cumulative average, the paper's population statistics. ``gamma_init`` and
    ``beta_init`` are the initial scale and shift.
    """

    eps: float = 1e-5
    momentum: float | None = 0.1
    affine: bool = True
    gamma_init: float = 1.0
    beta_init: float = 0.0

    @classmethod
    def from_any(cls, value: BatchNormOptions | dict | None) -> BatchNormOptions:
        if value is None:
            return cls()
        return value if isinstance(value, cls) else cls(**dict(value))

    def make(self, num_features: int, spatial: bool) -> nn.Module:
        kind = nn.BatchNorm2d if spatial else nn.BatchNorm1d
        bn = kind(num_features, eps=self.eps, momentum=self.momentum, affine=self.affine)
        if self.affine:
            nn.init.constant_(bn.weight, self.gamma_init)
            nn.init.constant_(bn.bias, self.beta_init)
        return bn


def normalized_block(
    affine: nn.Module,
    width: int,
    activation: Activation,
    use_bn: bool,
    bn_position: BNPosition,
    bn: BatchNormOptions,
    spatial: bool = False,
) -> list[nn.Module]:
    """Affine map, nonlinearity and (optionally) batch norm in the requested order."""
    act = ACTIVATIONS[Activation(activation)]()
    if not use_bn:
        return [affine, act]
    if BNPosition(bn_position) is BNPosition.pre:
        return [affine, bn.make(width, spatial), act]
    return [affine, act, bn.make(width, spatial)]


def initialize(module: nn.Module, scheme: Init, std: float) -> None:
    """Re-initialise the weights of every linear and conv layer; biases start at zero."""
    scheme = Init(scheme)
    if scheme is Init.default:
        return
    for layer in module.modules():
        if not isinstance(layer, nn.Linear | nn.Conv2d):
            continue
        if scheme is Init.normal:
            nn.init.normal_(layer.weight, 0.0, std)
        elif scheme is Init.xavier:
            nn.init.xavier_normal_(layer.weight)
        else:
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
