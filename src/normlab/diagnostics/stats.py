"""Statistics of module outputs, weights and gradients: pure functions, testable without a Trainer.

The work is split where it is cheapest. Everything that touches every element (histogram
counts, sums of squares, per-channel moments, norms) runs on the tensors' own device and returns
a few small tensors; a logging step moves those to the host in one copy. What is derived from
them (percentiles, mean and std, drift, per-layer norms) is then a handful of numpy operations on
arrays of a few hundred numbers. Histograms use fixed, equal-width bins, so percentiles come from
the cumulative counts instead of sorting the values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Bins:
    """``count`` equal-width bins on ``[low, high]``; values outside fall into the first or last bin."""

    low: float
    high: float
    count: int

    def __post_init__(self) -> None:
        if not self.high > self.low or self.count < 1:
            raise ValueError(f"bins need low < high and count >= 1, got [{self.low}, {self.high}] x {self.count}")

    @property
    def width(self) -> float:
        return (self.high - self.low) / self.count

    def edges(self) -> np.ndarray:
        """The ``count + 1`` bin edges, identical for every step and run with the same bins."""
        return np.linspace(self.low, self.high, self.count + 1)

    def refined(self, factor: int) -> Bins:
        """The same range with each bin split into ``factor``."""
        return Bins(self.low, self.high, self.count * factor)


# ----------------------------------------------------------------------------- on the device
class SegmentedHistogram:
    """Histograms of several tensors (segments) at once: one count over their concatenation.

    Each segment has its own range but all have the same number of bins. Segment ``s`` owns the
    slots ``s * (bins + 1) + [0, bins]`` of the counts: slot 0 for NaN and infinite values, then
    one per bin. Consecutive segments of equal size are binned as the rows of one matrix, each
    row with its own scale, in float32 and int32, which the CPU kernels vectorize. ``finite`` is
    the fast path for values known to be finite; ``exact`` sets the non-finite ones apart.

    Args:
        numels: number of elements of each segment, in the order of the concatenation.
        bins: the bins of each segment (all with the same ``count``).
        device: the segments' device.
    """

    def __init__(self, numels: Sequence[int], bins: Sequence[Bins], device: torch.device) -> None:
        counts = {b.count for b in bins}
        if len(counts) != 1 or len(numels) != len(bins):
            raise ValueError(f"one Bins per segment, all with the same count, got {list(bins)}")
        self.numels = list(numels)
        self.bins = list(bins)
        self.count = counts.pop()
        self.slots = len(bins) * (self.count + 1)
        self.runs = equal_runs(self.numels)

        def per_row(values: list[float], dtype: torch.dtype = torch.float32) -> list[Tensor]:
            # one column per run of equal-sized segments, broadcast over each row's values
            column = torch.tensor(values, device=device, dtype=dtype)
            return [column[first : first + rows, None] for first, rows, _ in self.runs]

        self._scale = per_row([1.0 / b.width for b in bins])
        self._shift = per_row([-b.low / b.width for b in bins])
        self._first = per_row([s * (self.count + 1) + 1 for s in range(len(bins))], torch.int32)

    def finite(self, flat: Tensor) -> Tensor:
        """Counts ``(slots,)`` of the concatenated segments ``flat`` (1-D float32, all finite)."""
        return self._count(flat)

    def exact(self, flat: Tensor) -> Tensor:
        """Counts ``(slots,)`` of any values, each NaN or Inf in its segment's slot 0."""
        nan = float("nan")
        return self._count(torch.nan_to_num(flat, nan=nan, posinf=nan, neginf=nan), exact=True)

    def _count(self, flat: Tensor, exact: bool = False) -> Tensor:
        slots, offset = [], 0
        for (_, rows, size), scale, shift, first in zip(self.runs, self._scale, self._shift, self._first, strict=True):
            values = flat[offset : offset + rows * size].view(rows, size)
            slot = torch.addcmul(shift, values, scale).clamp_(0, self.count - 1)
            if exact:  # NaN survives the clamp and becomes slot -1 of its segment
                slot.nan_to_num_(-1.0)
            slots.append(slot.int().add_(first).view(-1))
            offset += rows * size
        index = slots[0] if len(slots) == 1 else torch.cat(slots)
        return torch.bincount(index, minlength=self.slots)


def equal_runs(numels: Sequence[int]) -> list[tuple[int, int, int]]:
    """Runs of consecutive segments of equal size: ``(first segment, segments, size)``."""
    runs: list[tuple[int, int, int]] = []
    for i, n in enumerate(numels):
        if runs and runs[-1][2] == n:
            first, count, _ = runs[-1]
            runs[-1] = (first, count + 1, n)
        else:
            runs.append((i, 1, n))
    return runs


def segment_moments(flat: Tensor, runs: Sequence[tuple[int, int, int]], exact: bool = False) -> Tensor:
    """Sum and sum of squares of each segment: ``(2 * segments,)``, all sums first (additive, so
    that ranks can sum them).

    Segments of equal size are reduced as the rows of one matrix, so a network whose layers have
    the same width costs a couple of operations. A NaN or infinite value makes its segment's
    numbers non-finite unless ``exact``, which leaves such values out.

    Args:
        flat: the segments, concatenated (1-D).
        runs: ``equal_runs`` of the segment sizes.
        exact: leave non-finite values out (in float64).
    """
    x = torch.nan_to_num(flat, nan=0.0, posinf=0.0, neginf=0.0).double() if exact else flat
    sums, squares, offset = [], [], 0
    for _, count, size in runs:
        rows = x[offset : offset + count * size].view(count, size)
        sums.append(rows.sum(1))
        squares.append(torch.linalg.vector_norm(rows, dim=1).square_())
        offset += count * size
    return torch.cat(sums + squares)


def channel_moments(inputs: Sequence[Tensor]) -> Tensor:
    """Per-channel sums, then sums of squares, of same-shaped ``(N, C, ...)`` tensors: ``(2 * k * C,)``."""
    x = torch.stack(list(inputs))  # (k, N, C, ...)
    dims = [d for d in range(x.dim()) if d not in (0, 2)]
    return torch.cat([x.sum(dims), (x * x).sum(dims)]).view(-1).float()


def unit_maxima(output: Tensor) -> Tensor:
    """Largest value of each unit over the batch: a feature of ``(N, C)``, a channel (dim 1) of ``(N, C, ...)``."""
    dims = [d for d in range(output.dim()) if d != 1] if output.dim() > 1 else [0]
    return output.amax(dim=dims)


def tensor_norms(tensors: Sequence[Tensor]) -> Tensor:
    """L2 norm of each tensor: ``(len(tensors),)``."""
    return torch.stack(torch._foreach_norm(list(tensors)))


def nonfinite_counts(tensors: Sequence[Tensor]) -> Tensor:
    """Number of NaN or infinite values of each tensor: ``(len(tensors),)``."""
    return torch.stack([(~torch.isfinite(t)).sum() for t in tensors])


# ----------------------------------------------------------------------------- on the host
def percentiles(cdf: np.ndarray, low: np.ndarray, width: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Quantiles ``q`` (fractions in [0, 1]) of each row of a histogram, interpolated inside the bin.

    The result lies in the bin that holds the quantile, so it is within one bin width of the
    exact value when the values are inside the bins' range (outliers sit in the edge bins).

    Args:
        cdf: ``(segments, bins)`` cumulative histogram counts (``counts.cumsum(1)``).
        low, width: ``(segments,)`` lower edge and bin width of each row.
        q: ``(quantiles,)`` fractions.

    Returns:
        ``(segments, quantiles)``; NaN for an empty row.
    """
    rows, bins = cdf.shape
    total = cdf[:, -1:]
    target = q[None, :] * total  # (segments, quantiles)
    # One search for all rows: lift row r by r * (largest total + 1) so that they stay sorted.
    lift = np.arange(rows)[:, None] * (total.max() + 1)
    at = np.searchsorted((cdf + lift).ravel(), (target + lift).ravel()).reshape(target.shape)
    start = np.arange(rows)[:, None] * bins
    at = np.minimum(at, start + bins - 1)  # the first bin whose cumulative count reaches the target
    flat = cdf.ravel()
    below = np.where(at > start, flat[at - 1], 0.0)
    inside = np.maximum(flat[at] - below, 1)
    value = low[:, None] + (at - start + np.clip((target - below) / inside, 0, 1)) * width[:, None]
    return np.where(total > 0, value, np.nan)


def mean_std(n: np.ndarray, sums: np.ndarray, squares: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population standard deviation from counts, sums and sums of squares; NaN where n = 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / n
        var = np.maximum(squares / n - mean * mean, 0)
    return mean, np.sqrt(var)


def saturation_cut(bins: Bins, bounds: tuple[float, float], threshold: float) -> tuple[int, int]:
    """The saturated bins of an output bounded by ``bounds``: ``bins[:low]`` and ``bins[high:]``.

    A bin is saturated when its centre lies beyond ``threshold`` of the way from the middle of
    the bounds to either end. When the threshold falls on a bin edge, as it does for the default
    bins, counting these bins counts the saturated values exactly.
    """
    centre, half = (bounds[0] + bounds[1]) / 2, (bounds[1] - bounds[0]) / 2
    edges = bins.edges()
    position = ((edges[:-1] + edges[1:]) / 2 - centre) / half
    return int(np.sum(position < -threshold)), int(bins.count - np.sum(position > threshold))


def saturated_fraction(cdf: np.ndarray, low: int, high: int) -> np.ndarray:
    """Share of each row's values in ``bins[:low]`` and ``bins[high:]``, from the cumulative counts ``(rows, bins)``."""
    total = cdf[:, -1]
    below = cdf[:, low - 1] if low > 0 else 0.0
    return (below + total - cdf[:, high - 1]) / np.maximum(total, 1)


def batchnorm_drift(
    sums: np.ndarray,
    squares: np.ndarray,
    n: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    eps: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, how far a batch's statistics are from the running ones that evaluation uses.

    Args:
        sums, squares: per-channel sum and sum of squares of the layer's input.
        n: values per channel in the batch.
        running_mean, running_var: the running statistics before the batch updated them.
        eps: the layer's epsilon.

    Returns:
        ``|batch mean - running mean| / running std`` and ``|batch var / running var - 1|``
        (biased batch variance, both variances plus ``eps``).
    """
    mean = sums / n
    var = np.maximum(squares / n - mean * mean, 0)
    mean_drift = np.abs(mean - running_mean) / np.sqrt(running_var + eps)
    var_drift = np.abs((var + eps) / (running_var + eps) - 1)
    return mean_drift, var_drift


def group_means(values: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Mean of each consecutive group of ``sizes`` values along the last axis (``sizes`` int64)."""
    starts = np.zeros_like(sizes)
    np.cumsum(sizes[:-1], out=starts[1:])
    return np.add.reduceat(values, starts, axis=-1) / sizes


def coarsen(cdf: np.ndarray, factor: int) -> np.ndarray:
    """Counts of bins ``factor`` times wider, from the cumulative counts ``(rows, bins)`` of the fine ones."""
    counts = cdf[:, factor - 1 :: factor].copy()
    counts[:, 1:] -= cdf[:, factor - 1 : -factor : factor]
    return counts
