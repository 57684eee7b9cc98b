"""A generated task whose input features live on wildly different scales.

Like the tutorial's "miles driven" next to "number of doors": the label depends on every feature
equally once each is standardised, but raw features span ``scale_disparity`` orders of magnitude,
so an unscaled network sees almost only the largest ones. It is the demo of why input
normalisation matters.
"""

from __future__ import annotations

import torch

from normlab.data.base import InMemoryDataModule, Split, split_off


class SyntheticDataModule(InMemoryDataModule):
    """Gaussian inputs, labels from a random linear teacher, features rescaled and shifted.

    Feature ``j`` is multiplied by ``10 ** (scale_disparity * j / (num_features - 1))`` and shifted
    by a positive offset of the same order, so the raw feature scales range from 1 to
    ``10 ** scale_disparity``. Everything is drawn from ``data_seed``.

    Args:
        num_samples: examples in all splits together.
        num_features: input dimension.
        num_classes: classes (the teacher's argmax over that many directions).
        scale_disparity: orders of magnitude between the smallest and largest feature scale.
        noise: std of label noise added to the teacher's scores.
        data_seed: seed of the generated data and of the split.
        val_fraction, test_fraction: held-out shares.
        **kwargs: see ``InMemoryDataModule``.
    """

    def __init__(
        self,
        num_samples: int = 4000,
        num_features: int = 8,
        num_classes: int = 2,
        scale_disparity: float = 4.0,
        noise: float = 0.1,
        data_seed: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
        **kwargs,
    ) -> None:
        super().__init__(num_classes=num_classes, **kwargs)
        self.shape = (num_samples, num_features, num_classes)
        self.scale_disparity, self.noise, self.data_seed = scale_disparity, noise, data_seed
        self.fractions = (val_fraction, test_fraction)

    def load_splits(self) -> dict[str, Split]:
        x, y = make_scaled_task(*self.shape, self.scale_disparity, self.noise, self.data_seed)
        return split_off(x, y, self.fractions, self.data_seed)


def make_scaled_task(
    num_samples: int, num_features: int, num_classes: int, scale_disparity: float, noise: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(num_samples, num_features, generator=g)
    teacher = torch.randn(num_features, num_classes, generator=g)
    scores = z @ teacher + noise * torch.randn(num_samples, num_classes, generator=g)
    y = scores.argmax(dim=1)
    exponents = torch.linspace(0, scale_disparity, num_features) if num_features > 1 else torch.zeros(1)
    scale = 10.0**exponents
    x = z * scale + 3 * scale  # positive offsets, like counts and distances
    return x, y
