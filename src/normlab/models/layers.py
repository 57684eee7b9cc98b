"""Building blocks shared by the networks: activations and initialisation."""

from __future__ import annotations

import enum

import torch
from torch import nn
from torch.nn.utils import parametrize


class Activation(str, enum.Enum):
    sigmoid = "sigmoid"
    relu = "relu"
    tanh = "tanh"


class Init(str, enum.Enum):
    default = "default"  # PyTorch's own (Kaiming-uniform with a=sqrt(5))
    normal = "normal"  # N(0, init_std), as in the paper's MNIST experiment
    xavier = "xavier"
    kaiming = "kaiming"


ACTIVATIONS = {Activation.sigmoid: nn.Sigmoid, Activation.relu: nn.ReLU, Activation.tanh: nn.Tanh}


def make_activation(name: Activation | str) -> nn.Module:
    return ACTIVATIONS[Activation(name)]()


def initialize(module: nn.Module, scheme: Init, std: float) -> None:
    """Re-initialise the weights of every linear and conv layer; biases start at zero.

    A weight-normalized layer is given the new weight through its parametrization, so that its
    direction and norm (v and g) are both derived from it.
    """
    scheme = Init(scheme)
    if scheme is Init.default:
        return
    for layer in module.modules():
        if not isinstance(layer, nn.Linear | nn.Conv2d):
            continue
        weight = torch.empty_like(layer.weight)
        if scheme is Init.normal:
            nn.init.normal_(weight, 0.0, std)
        elif scheme is Init.xavier:
            nn.init.xavier_normal_(weight)
        else:
            nn.init.kaiming_normal_(weight, nonlinearity="relu")
        with torch.no_grad():
            if parametrize.is_parametrized(layer, "weight"):
                layer.weight = weight  # through the parametrization's right_inverse
            else:
                layer.weight.copy_(weight)
            if layer.bias is not None:
                layer.bias.zero_()
