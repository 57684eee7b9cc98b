"""Multi-layer perceptron whose baseline and normalized variants differ only in normalization."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from normlab.models.layers import Activation, Init, initialize, make_activation
from normlab.models.norms import Norm, NormPosition, NormSpec


class MLP(nn.Sequential):
    """input -> hidden layers -> classes, with a normalization on the chosen hidden layers.

    Modules are named ``layer{i}.fc``, ``layer{i}.act`` and the norm's ``layer{i}.bn|brn|ln|gn|rms``
    (1-based), and ``head``, which is what the diagnostics' tags show.

    Args:
        input_shape: shape of one example; it is flattened.
        num_classes: output logits.
        depth, width: ``depth`` hidden layers of ``width`` units, unless ``hidden`` is given.
        hidden: per-layer widths, e.g. ``[16, 32]``; overrides depth and width.
        activation: sigmoid | relu | tanh.
        norm: none | batch | batch_renorm | layer | group | rms | weight.
        norm_position: pre (affine -> norm -> act) | post (affine -> act -> norm); weight: pre only.
            Batch norm and batch renorm in ``pre`` drop the affine map's bias, which they cancel.
        norm_layers: 1-based hidden layers that are normalized; ``None`` means all.
        bn, renorm, ln, gn, rms, wn: options of each family (see ``normlab.models.norms``); only
            the chosen family's are read.
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
        norm_position: NormPosition | str = NormPosition.pre,
        norm_layers: Sequence[int] | None = None,
        init: Init | str = Init.default,
        init_std: float = 0.01,
        **norm_options: dict | None,
    ) -> None:
        widths = list(hidden) if hidden is not None else [width] * depth
        spec = NormSpec.build(norm, norm_position, norm_options)
        chosen = set(range(1, len(widths) + 1) if norm_layers is None else norm_layers)
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        fan_in = math.prod(input_shape)
        for i, w in enumerate(widths, start=1):
            layer_spec = spec if i in chosen else spec.without()
            fc = nn.Linear(fan_in, w, bias=not layer_spec.drops_bias)
            layers[f"layer{i}"] = nn.Sequential(OrderedDict(layer_spec.block(fc, w, make_activation(activation))))
            fan_in = w
        layers["head"] = nn.Linear(fan_in, num_classes)
        super().__init__(layers)
        initialize(self, init, init_std)
