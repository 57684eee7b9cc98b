"""Random tensors of a dataset's shape: for benchmarks and smoke tests, where the numbers don't matter."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from normlab.data.base import InMemoryDataModule, Split


class RandomDataModule(InMemoryDataModule):
    """Uniform inputs and uniform labels, one set of tensors serving as train, val and test.

    Args:
        num_samples: examples.
        input_shape: shape of one example (default MNIST's).
        num_classes: label range.
        data_seed: seed of the tensors.
        **kwargs: see ``InMemoryDataModule``.
    """

    def __init__(
        self,
        num_samples: int = 60_000,
        input_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        data_seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(input_shape=input_shape, num_classes=num_classes, **kwargs)
        g = torch.Generator().manual_seed(data_seed)
        self.data = Split(
            torch.rand(num_samples, *input_shape, generator=g),
            torch.randint(0, num_classes, (num_samples,), generator=g),
        )

    def load_splits(self) -> dict[str, Split]:
        return {"train": self.data, "val": self.data, "test": self.data}
