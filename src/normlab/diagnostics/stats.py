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
# On a CPU most of the cost of a small tensor operation is launching it, so the tensors of a step
# are laid end to end in one buffer and reduced chunk by chunk: a few operations for all of them.
CHUNK = 256


class Chunks:
    """Tensors laid end to end in one flat buffer, each padded with zeros to whole chunks of
    ``size`` values, so that one ``view(-1, size)`` reduces every tensor chunk by chunk, and the
    host adds each tensor's chunks up (``per_tensor``). The padding zeros change no sum or norm;
    histograms take them out again (``SegmentedHistogram``).

    Args:
        numels: number of values of each tensor, in buffer order.
        size: values per chunk.
    """

    def __init__(self, numels: Sequence[int], size: int = CHUNK) -> None:
        self.numels = [int(n) for n in numels]
        self.size = size
        self.counts = np.array([max(1, -(-n // size)) for n in self.numels], dtype=np.int64)  # chunks per tensor
        self.first = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)  # each tensor's first chunk
        self.starts = (self.first * size).tolist()  # where each tensor starts in the buffer
        self.pads = (self.counts * size - np.array(self.numels, dtype=np.int64)).tolist()
        self.chunks = int(self.counts.sum())
        self.total = self.chunks * size
        self.owner = np.repeat(np.arange(len(self.numels)), self.counts)  # the tensor of each chunk

    def places(self, row: Tensor, shapes: Sequence[Sequence[int]]) -> list[Tensor]:
        """Each tensor's place in a 1-D ``row`` of ``total`` values, as a view of the tensor's shape:
        one ``torch._foreach_copy_`` into them lays a step's tensors out."""
        return [row[s : s + n].view(*shape) for s, n, shape in zip(self.starts, self.numels, shapes, strict=True)]

    def padding(self, rows: Tensor) -> list[Tensor]:
        """The padding after each tensor in every row of ``(rows, total)`` values, as views (none
        for a tensor of whole chunks). It must hold zeros whenever the rows are reduced."""
        return [
            rows[:, s + n : s + n + pad] for s, n, pad in zip(self.starts, self.numels, self.pads, strict=True) if pad
        ]

    def per_tensor(self, per_chunk: np.ndarray) -> np.ndarray:
        """Sums of each tensor's chunks: ``(..., chunks)`` -> ``(..., tensors)``."""
        return np.add.reduceat(per_chunk, self.first, axis=-1)


def chunk_moments(values: Tensor, size: int = CHUNK, exact: bool = False) -> Tensor:
    """Sum and sum of squares of each chunk of each step: ``(steps, n * size)`` -> ``(steps, 2 * n)``,
    all sums first (additive, so that ranks can sum them).

    A NaN or infinite value makes its chunk's numbers non-finite unless ``exact``, which leaves
    such values out (and adds up in float64).
    """
    x = torch.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0).double() if exact else values
    x = x.view(x.shape[0], -1, size)
    return torch.cat([x.sum(2), torch.linalg.vector_norm(x, dim=2).square_()], dim=1)


class SegmentedHistogram:
    """Histograms of several tensors (segments) at once, for several steps: one count over all.

    A step's segments lie in one row of ``(steps, total)`` values, laid out by ``Chunks``. Each
    segment has its own range but all have the same number of bins. Segment ``s`` owns the slots
    ``s * (bins + 1) + [0, bins]`` of a step's counts: slot 0 for NaN and infinite values, then one
    per bin. Every chunk is binned with its own scale by the same few operations, which the CPU
    kernels vectorize, in place: the float slots become int32 in the same memory. The padding
    zeros are then taken out of the bin they fell in. ``finite`` is the fast path for values known
    to be finite; ``exact`` sets the non-finite ones apart.

    Args:
        layout: where each segment lies in a row.
        bins: the bins of each segment (all with the same ``count``).
        device: the segments' device.
    """

    def __init__(self, layout: Chunks, bins: Sequence[Bins], device: torch.device) -> None:
        counts = {b.count for b in bins}
        if len(counts) != 1 or len(layout.numels) != len(bins):
            raise ValueError(f"one Bins per segment, all with the same count, got {list(bins)}")
        self.layout = layout
        self.count = counts.pop()
        self.slots = len(bins) * (self.count + 1)
        self.device = device
        scale = np.float32([1.0 / b.width for b in bins])
        shift = np.float32([-b.low / b.width for b in bins])
        self._first = np.arange(len(bins)) * (self.count + 1) + 1

        def per_chunk(values: np.ndarray) -> Tensor:
            return torch.tensor(values[layout.owner], device=device, dtype=torch.float32)[:, None]

        self._scale = per_chunk(scale)
        self._shift = per_chunk(shift)
        # a padding zero lands where the binning below puts 0.0: trunc(clamp(shift, 0, count - 1))
        zero_slot = self._first + np.clip(shift, 0, self.count - 1).astype(np.int64)
        padding = np.zeros(self.slots, dtype=np.int64)
        np.add.at(padding, zero_slot, layout.pads)
        self._padding = torch.tensor(padding, device=device)
        self._lifted = torch.empty(0, dtype=torch.int32, device=device)

    def finite(self, values: Tensor) -> Tensor:
        """Counts ``(steps, slots)`` of the rows of ``values`` ``(steps, total)``, all finite.
        The rows are overwritten."""
        return self._count(values)

    def exact(self, values: Tensor) -> Tensor:
        """Counts ``(steps, slots)`` of any values, each NaN or Inf in its segment's slot 0."""
        nan = float("nan")
        return self._count(torch.nan_to_num(values, nan=nan, posinf=nan, neginf=nan), exact=True)

    def _count(self, values: Tensor, exact: bool = False) -> Tensor:
        steps, size = values.shape[0], self.layout.size
        slot = values.view(steps, -1, size).mul_(self._scale).add_(self._shift).clamp_(0, self.count - 1)
        if exact:  # NaN survives the clamp and becomes slot -1 of its segment
            slot.nan_to_num_(-1.0)
        index = slot.view(torch.int32)  # the slots become integers in the same memory
        index.copy_(slot)  # truncates, as the bins need
        index.add_(self._offsets(steps))
        counts = torch.bincount(index.view(-1), minlength=steps * self.slots).view(steps, self.slots)
        return counts.sub_(self._padding)

    def _offsets(self, steps: int) -> Tensor:
        """Per step and chunk, the first slot of the chunk's segment, lifted by the step's own
        slots: ``(steps, chunks, 1)``, kept for as many steps as the largest call had."""
        if len(self._lifted) < steps:
            first = torch.tensor(self._first[self.layout.owner], dtype=torch.int32, device=self.device)
            lift = torch.arange(steps, dtype=torch.int32, device=self.device) * self.slots
            self._lifted = (first[None, :] + lift[:, None])[:, :, None]
        return self._lifted[:steps]


def channel_moments(inputs: Tensor, channel: int = 2) -> tuple[Tensor, Tensor]:
    """Per-channel sums and sums of squares of ``(k, N, C, ...)`` inputs: two ``(k, C)``; with
    ``channel=3``, of ``(rows, k, N, C, ...)`` inputs: two ``(rows, k, C)``. (``vector_norm`` over
    these dimensions would save the squares' memory, but its CPU kernel is 10x slower there.)"""
    dims = [d for d in range(channel - 1, inputs.dim()) if d != channel]
    return inputs.sum(dims), (inputs * inputs).sum(dims)


def unit_maxima(outputs: Tensor) -> Tensor:
    """Largest value of each unit over the batch, per step, from ``(steps, N, ...)`` outputs: ``(steps, units)``.

    A unit is a feature of ``(N, C)`` outputs, a channel (dim 1) of ``(N, C, ...)``, and the
    whole output of ``(N,)``.
    """
    if outputs.dim() == 2:
        return outputs.amax(dim=1, keepdim=True)
    return outputs.amax(dim=[d for d in range(1, outputs.dim()) if d != 2])


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
    momentum: np.ndarray,
    eps: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, how far a batch's statistics are from the running ones that evaluation uses.

    The running statistics are compared as they were before the batch. They are read after it,
    which moved them to ``(1 - momentum) * before + momentum * batch`` (PyTorch's update, with the
    unbiased batch variance), so ``before`` is solved from that; a momentum of 0 reads them as they are.

    Args:
        sums, squares: per-channel sum and sum of squares of the layer's input.
        n: values per channel in the batch.
        running_mean, running_var: the running statistics after the batch.
        momentum: how far the batch moved them (NaN where unknown, which gives NaN).
        eps: the layer's epsilon.

    Returns:
        ``|batch mean - running mean| / running std`` and ``|batch var / running var - 1|``
        (biased batch variance, both variances plus ``eps``).
    """
    with np.errstate(invalid="ignore", divide="ignore"):  # a non-finite input gives NaN
        mean = sums / n
        var = np.maximum(squares / n - mean * mean, 0)
        unbiased = var * n / np.maximum(n - 1, 1)
        running_mean = (running_mean - momentum * mean) / (1 - momentum)
        running_var = (running_var - momentum * unbiased) / (1 - momentum)
        mean_drift = np.abs(mean - running_mean) / np.sqrt(running_var + eps)
        var_drift = np.abs((var + eps) / (running_var + eps) - 1)
    return mean_drift, var_drift


def group_means(values: np.ndarray, sizes: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean of each consecutive group of ``sizes`` values along ``axis`` (``sizes`` int64)."""
    starts = np.zeros_like(sizes)
    np.cumsum(sizes[:-1], out=starts[1:])
    sums = np.add.reduceat(values, starts, axis=axis)
    return sums / sizes.reshape([-1] + [1] * (values.ndim - 1 - axis % values.ndim))


def coarsen(cdf: np.ndarray, factor: int) -> np.ndarray:
    """Counts of bins ``factor`` times wider, from the cumulative counts ``(rows, bins)`` of the fine ones."""
    counts = cdf[:, factor - 1 :: factor].copy()
    counts[:, 1:] -= cdf[:, factor - 1 : -factor : factor]
    return counts
