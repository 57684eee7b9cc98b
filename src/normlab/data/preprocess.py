"""Input scaling fitted on the training split and applied to every split."""

from __future__ import annotations

import enum

import torch
from torch import Tensor


class Preprocess(str, enum.Enum):
    none = "none"
    normalize = "normalize"  # per-feature min-max to [0, 1]
    standardize = "standardize"  # per-feature zero mean, unit std


class InputScaler:
    """Per-feature ``(x - shift) / scale`` with statistics from the training split only.

    Features that are constant in the training split keep a scale of 1 rather than dividing by 0.
    """

    def __init__(self, kind: Preprocess | str) -> None:
        self.kind = Preprocess(kind)
        self.shift: Tensor | None = None
        self.scale: Tensor | None = None

    def fit(self, x_train: Tensor) -> InputScaler:
        if self.kind is Preprocess.normalize:
            low, high = x_train.amin(dim=0), x_train.amax(dim=0)
            self.shift, self.scale = low, high - low
        elif self.kind is Preprocess.standardize:
            self.shift, self.scale = x_train.mean(dim=0), x_train.std(dim=0)
        if self.scale is not None:
            self.scale = torch.where(self.scale > 1e-12, self.scale, torch.ones_like(self.scale))
        return self

    def transform(self, x: Tensor) -> Tensor:
        if self.kind is Preprocess.none:
            return x
        if self.shift is None:
            raise RuntimeError("InputScaler.transform called before fit")
        return (x - self.shift) / self.scale
