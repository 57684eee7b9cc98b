"""Networks: an MLP and a small CNN, each with or without batch norm."""

from normlab.models.cnn import CNN
from normlab.models.layers import Activation, BatchNormOptions, BNPosition, Init, Norm
from normlab.models.mlp import MLP

__all__ = ["CNN", "MLP", "Activation", "BNPosition", "BatchNormOptions", "Init", "Norm"]
