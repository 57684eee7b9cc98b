"""A loader that slices whole batches out of in-memory tensors.

For datasets that fit in memory this avoids a per-sample ``__getitem__`` and a collate on every
step, which is most of the time a default ``DataLoader`` spends on a small network.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor


class TensorBatchLoader:
    """Iterate over ``(x, y)`` batches of two tensors, reshuffled each epoch from ``seed + epoch``.

    The shuffle depends only on the seed and the epoch number, and the epoch number is part of
    ``state_dict`` (Lightning saves it in checkpoints), so a resumed run sees the same batches as an
    uninterrupted one. Under data parallelism each rank takes its own equal-sized shard.

    Args:
        x, y: inputs and targets, same first dimension.
        batch_size: examples per batch.
        shuffle: reshuffle at the start of each epoch.
        drop_last: drop the last incomplete batch.
        seed: base seed of the shuffle.
        rank, world_size: this process's shard of every epoch.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"x and y differ in length: {len(x)} != {len(y)}")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0  # epochs started so far

    @property
    def shard_size(self) -> int:
        return len(self.x) // self.world_size if self.world_size > 1 else len(self.x)

    def __len__(self) -> int:
        full, rest = divmod(self.shard_size, self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self._order(self.epoch)
        self.epoch += 1
        for i in range(len(self)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            if order is None:
                yield self.x[sl], self.y[sl]
            else:  # gather one batch at a time: no copy of the whole dataset per epoch
                idx = order[sl]
                yield self.x.index_select(0, idx), self.y.index_select(0, idx)

    def _order(self, epoch: int) -> Tensor | None:
        if not self.shuffle and self.world_size == 1:
            return None
        n = len(self.x)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))
        else:
            order = torch.arange(n)
        return order[self.rank : self.shard_size * self.world_size : self.world_size]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
