"""scikit-learn's bundled 8x8 handwritten digits: real data that needs no download."""

from __future__ import annotations

import torch

from normlab.data.base import InMemoryDataModule, Split, split_off


class DigitsDataModule(InMemoryDataModule):
    """1797 grey-scale 8x8 digits (pixel values 0..16), 10 classes, split by a fixed seed.

    Args:
        val_fraction, test_fraction: shares of the data held out for validation and test.
        split_seed: seed of the split, fixed so that every run tests on the same examples.
        **kwargs: see ``InMemoryDataModule``.
    """

    def __init__(self, val_fraction: float = 0.15, test_fraction: float = 0.2, split_seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.fractions = (val_fraction, test_fraction)
        self.split_seed = split_seed

    def load_splits(self) -> dict[str, Split]:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1)  # (N, 1, 8, 8)
        y = torch.as_tensor(bunch.target, dtype=torch.long)
        return split_off(x, y, self.fractions, self.split_seed)
