"""Base LightningDataModule for datasets held in memory as tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import lightning as L
import torch
from torch import Tensor

from normlab.data.loader import TensorBatchLoader
from normlab.data.preprocess import InputScaler, Preprocess
from normlab.errors import DataError


@dataclass
class Split:
    x: Tensor  # (N, *input_shape), float32
    y: Tensor  # (N,), int64


class InMemoryDataModule(L.LightningDataModule):
    """Loads train/val/test tensors once, scales inputs with training statistics, serves batches.

    Subclasses implement ``load_splits`` (and ``prepare_data`` when files must be fetched).

    Args:
        batch_size: training batch size.
        eval_batch_size: validation and test batch size (default: a whole split per batch, up to 4096).
        preprocess: none | normalize | standardize.
        seed: seed of the training shuffle.
        input_shape, num_classes: what the model is built for; checked against the loaded data.
    """

    def __init__(
        self,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        preprocess: Preprocess | str = Preprocess.none,
        seed: int = 0,
        input_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.scaler = InputScaler(preprocess)
        self.seed = seed
        self.splits: dict[str, Split] = {}

    def load_splits(self) -> dict[str, Split]:
        """Return the raw ``train``, ``val`` and ``test`` splits."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        raw = self.load_splits()
        self._check_shape(raw["train"])
        self.scaler.fit(raw["train"].x)
        self.splits = {name: Split(self.scaler.transform(s.x), s.y) for name, s in raw.items()}

    def _check_shape(self, train: Split) -> None:
        found = tuple(train.x.shape[1:])
        if self.input_shape is not None and found != self.input_shape:
            raise DataError(f"data.input_shape={list(self.input_shape)} but the examples have shape {list(found)}")
        labels = int(train.y.max()) + 1
        if self.num_classes is not None and labels > self.num_classes:
            raise DataError(f"data.num_classes={self.num_classes} but the labels go up to {labels - 1}")

    def _loader(self, split: str, train: bool) -> TensorBatchLoader:
        s = self.splits[split]
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        size = self.batch_size if train else self.eval_batch_size or min(len(s.x), 4096)
        return TensorBatchLoader(
            s.x, s.y, size, shuffle=train, drop_last=train, seed=self.seed, rank=rank, world_size=world
        )

    def train_dataloader(self) -> TensorBatchLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> TensorBatchLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> TensorBatchLoader:
        return self._loader("test", train=False)


def split_off(x: Tensor, y: Tensor, fractions: tuple[float, float], seed: int) -> dict[str, Split]:
    """Shuffle once with a fixed seed and cut into train/val/test by the (val, test) fractions."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    n_val, n_test = (round(f * len(x)) for f in fractions)
    n_train = len(x) - n_val - n_test
    return {
        "train": Split(x[:n_train], y[:n_train]),
        "val": Split(x[n_train : n_train + n_val], y[n_train : n_train + n_val]),
        "test": Split(x[n_train + n_val :], y[n_train + n_val :]),
    }
