"""Residual CNN: a stem, residual stages, global average pooling and a linear head."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from normlab.models.layers import Activation, Init, initialize, make_activation
from normlab.models.norms import Norm, NormPosition, NormSpec


class ResidualBlock(nn.Module):
    """Two 3x3 conv blocks and a shortcut: ``act(block2(block1(x)) + shortcut(x))`` in ``pre``.

    The second block's nonlinearity comes after the sum (He et al. 2016), so its norm follows
    the conv in either placement. The shortcut is the identity, or a strided 1x1 conv (normalized like the
    convs) where the shape changes.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, spec: NormSpec, activation: Activation | str) -> None:
        super().__init__()
        bias = not spec.drops_bias
        conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=bias)
        self.block1 = nn.Sequential(OrderedDict(spec.block(conv1, out_ch, make_activation(activation), spatial=True)))
        conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=bias)
        parts = spec.block(conv2, out_ch, nn.Identity(), spatial=True)  # the activation waits for the sum
        self.block2 = nn.Sequential(OrderedDict((k, v) for k, v in parts.items() if k != "act"))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            proj = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=bias)
            parts = spec.block(proj, out_ch, nn.Identity(), spatial=True)
            self.shortcut = nn.Sequential(OrderedDict((k, v) for k, v in parts.items() if k != "act"))
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.block2(self.block1(x)) + self.shortcut(x))


class ResNet(nn.Sequential):
    """stem (3x3 conv block) -> stages of residual blocks -> global average pool -> linear head.

    Modules are named ``stem.conv|act|<norm>``, ``stage{s}.block{b}.block1|block2|shortcut|act``,
    ``pool`` and ``head``. The first stage keeps the resolution; each later one halves it.

    Args:
        input_shape: (channels, height, width) of one example.
        num_classes: output logits.
        widths: channels of each stage (and of the stem: the first entry).
        blocks_per_stage: residual blocks in each stage.
        activation, norm, norm_position, init, init_std, bn, renorm, ln, gn, rms, wn: as for ``MLP``.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        widths: Sequence[int] = (16, 32, 64),
        blocks_per_stage: int = 1,
        activation: Activation | str = Activation.relu,
        norm: Norm | str = Norm.none,
        norm_position: NormPosition | str = NormPosition.pre,
        init: Init | str = Init.default,
        init_std: float = 0.01,
        **norm_options: dict | None,
    ) -> None:
        if len(input_shape) != 3:
            raise ValueError(f"ResNet needs input_shape (channels, height, width), got {list(input_shape)}")
        if not widths:
            raise ValueError("ResNet needs at least one stage width")
        spec = NormSpec.build(norm, norm_position, norm_options)
        stem = nn.Conv2d(input_shape[0], widths[0], 3, padding=1, bias=not spec.drops_bias)
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            stem=nn.Sequential(OrderedDict(spec.block(stem, widths[0], make_activation(activation), spatial=True)))
        )
        in_ch = widths[0]
        for s, out_ch in enumerate(widths, start=1):
            blocks = OrderedDict()
            for b in range(1, blocks_per_stage + 1):
                stride = 2 if s > 1 and b == 1 else 1
                blocks[f"block{b}"] = ResidualBlock(in_ch, out_ch, stride, spec, activation)
                in_ch = out_ch
            layers[f"stage{s}"] = nn.Sequential(blocks)
        layers["pool"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        layers["head"] = nn.Linear(in_ch, num_classes)
        super().__init__(layers)
        initialize(self, init, init_std)
