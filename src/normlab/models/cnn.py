"""Small convolutional network: conv blocks, then a one-hidden-layer classifier head."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from normlab.models.layers import Activation, Init, initialize, make_activation
from normlab.models.norms import Norm, NormPosition, NormSpec


class CNN(nn.Sequential):
    """Conv blocks (3x3 conv, activation, normalization, 2x2 max-pool) and a classifier head.

    Modules are named ``conv{i}.conv|act|pool`` with the norm's ``conv{i}.bn|brn|ln|gn|rms``,
    ``fc.fc|act|...`` and ``head``.

    Args:
        input_shape: (channels, height, width) of one example.
        num_classes: output logits.
        channels: output channels of each conv block.
        head_width: units of the hidden layer in the head.
        activation, norm, norm_position, init, init_std, bn, renorm, ln, gn, rms, wn: as for
            ``MLP``; the norm goes into every conv block and the head's hidden layer.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (16, 32),
        head_width: int = 64,
        activation: Activation | str = Activation.relu,
        norm: Norm | str = Norm.none,
        norm_position: NormPosition | str = NormPosition.pre,
        init: Init | str = Init.default,
        init_std: float = 0.01,
        **norm_options: dict | None,
    ) -> None:
        if len(input_shape) != 3:
            raise ValueError(f"CNN needs input_shape (channels, height, width), got {list(input_shape)}")
        spec = NormSpec.build(norm, norm_position, norm_options)
        in_ch, height, width = input_shape
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i, out_ch in enumerate(channels, start=1):
            conv = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=not spec.drops_bias)
            block = OrderedDict(spec.block(conv, out_ch, make_activation(activation), spatial=True))
            if min(height, width) >= 2:  # pool while there is something left to pool
                block["pool"] = nn.MaxPool2d(2)
                height, width = height // 2, width // 2
            layers[f"conv{i}"] = nn.Sequential(block)
            in_ch = out_ch
        layers["flatten"] = nn.Flatten()
        fc = nn.Linear(in_ch * height * width, head_width, bias=not spec.drops_bias)
        layers["fc"] = nn.Sequential(OrderedDict(spec.block(fc, head_width, make_activation(activation))))
        layers["head"] = nn.Linear(head_width, num_classes)
        super().__init__(layers)
        initialize(self, init, init_std)
