"""Small convolutional network: conv blocks, then a one-hidden-layer classifier head."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from normlab.models.layers import (
    Activation,
    BatchNormOptions,
    BNPosition,
    Init,
    Norm,
    initialize,
    normalized_block,
)
from normlab.models.mlp import _block_names


class CNN(nn.Sequential):
    """Conv blocks (3x3 conv, activation, optional BN, 2x2 max-pool) and a classifier head.

    Modules are named ``conv{i}.conv|bn|act|pool``, ``fc.fc|bn|act`` and ``head``.

    Args:
        input_shape: (channels, height, width) of one example.
        num_classes: output logits.
        channels: output channels of each conv block.
        head_width: units of the hidden layer in the head.
        activation, norm, bn_position, bn, init, init_std: as for ``MLP``; BN goes into every
            conv block and the head's hidden layer when ``norm=batch``.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (16, 32),
        head_width: int = 64,
        activation: Activation | str = Activation.relu,
        norm: Norm | str = Norm.none,
        bn_position: BNPosition | str = BNPosition.pre,
        bn: BatchNormOptions | dict | None = None,
        init: Init | str = Init.default,
        init_std: float = 0.01,
    ) -> None:
        if len(input_shape) != 3:
            raise ValueError(f"CNN needs input_shape (channels, height, width), got {list(input_shape)}")
        bn_options = BatchNormOptions.from_any(bn)
        use_bn = Norm(norm) is Norm.batch
        bias = not (use_bn and BNPosition(bn_position) is BNPosition.pre)
        in_ch, height, width = input_shape
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i, out_ch in enumerate(channels, start=1):
            conv = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=bias)
            parts = normalized_block(conv, out_ch, activation, use_bn, bn_position, bn_options, spatial=True)
            block = OrderedDict(zip(_block_names(parts), parts, strict=True))
            if min(height, width) >= 2:  # pool while there is something left to pool
                block["pool"] = nn.MaxPool2d(2)
                height, width = height // 2, width // 2
            layers[f"conv{i}"] = nn.Sequential(block)
            in_ch = out_ch
        layers["flatten"] = nn.Flatten()
        fc = nn.Linear(in_ch * height * width, head_width, bias=bias)
        parts = normalized_block(fc, head_width, activation, use_bn, bn_position, bn_options)
        layers["fc"] = nn.Sequential(OrderedDict(zip(_block_names(parts), parts, strict=True)))
        layers["head"] = nn.Linear(head_width, num_classes)
        super().__init__(layers)
        initialize(self, init, init_std)
