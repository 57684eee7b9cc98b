"""Multi-layer perceptron whose baseline and batch-normalised variants differ only in normalisation."""

from __future__ import annotations

import math
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


class MLP(nn.Sequential):
    """input -> hidden layers -> classes, with batch norm on the chosen hidden layers.

    Modules are named ``layer{i}.fc``, ``layer{i}.bn``, ``layer{i}.act`` (1-based) and ``head``,
    which is what the diagnostics' tags show.

    Args:
        input_shape: shape of one example; it is flattened.
        num_classes: output logits.
        depth, width: ``depth`` hidden layers of ``width`` units, unless ``hidden`` is given.
        hidden: per-layer widths, e.g. ``[16, 32]``; overrides depth and width.
        activation: sigmoid | relu | tanh.
        norm: none | batch.
        bn_position: pre (affine -> BN -> act, no bias) | post (affine -> act -> BN).
        norm_layers: 1-based hidden layers that get BN when ``norm=batch``; ``None`` means all.
        bn: eps, momentum, affine, gamma_init, beta_init (see ``BatchNormOptions``).
        init, init_std: weight initialisation scheme and the std of ``normal``.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        depth: int = 3,
        width: int = 100,
        hidden: Sequence[int] | None = None,
        activation: Activation | str = Activation.sigmoid,
        norm: Norm | str = Norm.none,
        bn_position: BNPosition | str = BNPosition.pre,
        norm_layers: Sequence[int] | None = None,
        bn: BatchNormOptions | dict | None = None,
        init: Init | str = Init.default,
        init_std: float = 0.01,
    ) -> None:
        widths = list(hidden) if hidden is not None else [width] * depth
        bn_options = BatchNormOptions.from_any(bn)
        bn_layers = set(range(1, len(widths) + 1) if norm_layers is None else norm_layers)
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        fan_in = math.prod(input_shape)
        for i, w in enumerate(widths, start=1):
            use_bn = Norm(norm) is Norm.batch and i in bn_layers
            drop_bias = use_bn and BNPosition(bn_position) is BNPosition.pre
            parts = normalized_block(
                nn.Linear(fan_in, w, bias=not drop_bias), w, activation, use_bn, bn_position, bn_options
            )
            layers[f"layer{i}"] = nn.Sequential(OrderedDict(zip(_block_names(parts), parts, strict=True)))
            fan_in = w
        layers["head"] = nn.Linear(fan_in, num_classes)
        super().__init__(layers)
        initialize(self, init, init_std)


def _block_names(parts: list[nn.Module]) -> list[str]:
    names = {nn.Linear: "fc", nn.Conv2d: "conv", nn.BatchNorm1d: "bn", nn.BatchNorm2d: "bn"}
    return [names.get(type(p), "act") for p in parts]
