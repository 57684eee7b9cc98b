"""Networks: an MLP, a small CNN and a residual CNN, each with any normalization family."""

from normlab.models.batch_renorm import BatchRenorm
from normlab.models.cnn import CNN
from normlab.models.layers import Activation, Init
from normlab.models.mlp import MLP
from normlab.models.norms import BatchNormOptions, BNPosition, Norm, NormPosition, NormSpec
from normlab.models.resnet import ResNet

__all__ = [
    "CNN",
    "MLP",
    "Activation",
    "BNPosition",
    "BatchNormOptions",
    "BatchRenorm",
    "Init",
    "Norm",
    "NormPosition",
    "NormSpec",
    "ResNet",
]
