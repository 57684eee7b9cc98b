"""The activation statistics of several modules at once, on their device: pure functions of the
modules' samples (``recording.Measurement.sample``), tested against numpy.

The samples are stacked into one ``(modules, values)`` matrix, padded with NaN, so that a handful
of tensor operations serve every module: moments, percentiles, histogram counts over each module's
own fixed bins, and the fraction of saturated values. Percentiles are read from fine bins spanning
each row's own values (``binned_percentiles``, a linear pass); a row whose bins are too coarse for
its spread (heavy outliers) is sorted instead (``exact_percentiles``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

MOMENTS = ("count", "nonfinite", "mean", "std", "sum", "sum_squares", "saturated")
FINE_BINS = 2048
# a binned percentile is within one fine bin of the exact one: at most this fraction of the spread
BINNED_ERROR = 0.005


def stack_samples(samples: Sequence[Tensor]) -> Tensor:
    """The samples as rows of one float32 matrix, each padded to the longest with NaN."""
    longest = max(s.numel() for s in samples)
    out = samples[0].new_full((len(samples), longest), math.nan, dtype=torch.float32)
    for row, sample in zip(out, samples, strict=True):
        row[: sample.numel()] = sample
    return out


def moments(x: Tensor, lengths: Tensor, saturation: Tensor) -> Tensor:
    """Per row ``MOMENTS``: finite values, non-finite values (of ``lengths`` real ones), their mean,
    std, sum and sum of squares, and the fraction saturated (NaN for rows without bounds).

    Args:
        x: ``(rows, values)`` NaN-padded samples.
        lengths: ``(rows,)`` number of real values per row.
        saturation: ``(rows, 2)`` per row ``[middle, threshold]``: a value is saturated when
            ``|value - middle| > threshold``; NaN for rows without bounds.
    """
    finite = torch.isfinite(x)
    count = finite.sum(1).float()
    values = torch.where(finite, x, 0.0)
    total = values.sum(1)
    mean = total / count
    centered = torch.where(finite, x - mean[:, None], 0.0)
    std = (centered.square().sum(1) / count).sqrt()
    sum_squares = values.square().sum(1)
    middle, threshold = saturation[:, :1], saturation[:, 1:]
    saturated = (finite & ((x - middle).abs() > threshold)).sum(1).float() / count
    saturated = torch.where(saturation[:, 1].isnan(), math.nan, saturated)
    return torch.stack([count, lengths.float() - count, mean, std, total, sum_squares, saturated], dim=1)


def binned_percentiles(x: Tensor, q: Sequence[float], bins: int = FINE_BINS) -> tuple[Tensor, Tensor]:
    """``(rows, len(q))`` percentiles of each row's finite values, read from ``bins`` equal bins
    between the row's smallest and largest value (the values of a bin taken as evenly spread in
    it), and each row's bin width: the result is within one width of ``exact_percentiles``."""
    finite = torch.isfinite(x)
    count = finite.sum(1, keepdim=True)
    low = torch.where(finite, x, math.inf).amin(1, keepdim=True)
    high = torch.where(finite, x, -math.inf).amax(1, keepdim=True)
    width = torch.where(high > low, (high - low) / bins, 0.0)
    index = torch.where(finite, (x - low) / torch.where(width > 0, width, 1.0), 0).floor().clamp(0, bins - 1)
    rows = torch.arange(x.shape[0], device=x.device)[:, None]
    counts = torch.zeros(x.shape[0] * bins, dtype=torch.float32, device=x.device)
    counts.index_add_(0, (index.long() + bins * rows).reshape(-1), finite.reshape(-1).float())
    counts = counts.view(x.shape[0], bins)
    cumulative = counts.cumsum(1)
    rank = (count - 1).clamp(min=0) * torch.tensor(q, dtype=torch.float32, device=x.device) / 100
    j = torch.searchsorted(cumulative, rank.contiguous(), right=True).clamp(max=bins - 1)
    before = torch.where(j > 0, cumulative.gather(1, (j - 1).clamp(min=0)), 0.0)
    inside = counts.gather(1, j).clamp(min=1)
    out = low + width * (j + ((rank - before + 0.5) / inside).clamp(0, 1))
    return torch.where(count > 0, out, math.nan), width[:, 0]


def exact_percentiles(x: Tensor, q: Sequence[float]) -> Tensor:
    """``(rows, len(q))`` percentiles ``q`` (in [0, 100]) of each row's finite values, with linear
    interpolation as ``numpy.percentile`` does; NaN for a row without finite values."""
    finite = torch.isfinite(x)
    count = finite.sum(1, keepdim=True)
    ordered = torch.where(finite, x, math.inf).sort(dim=1).values
    position = (count - 1).clamp(min=0) * torch.tensor(q, dtype=torch.float32, device=x.device) / 100
    low = position.floor().long()
    high = (low + 1).clamp(max=x.shape[1] - 1)
    high = torch.minimum(high, (count - 1).clamp(min=0))
    fraction = position - low
    a, b = ordered.gather(1, low), ordered.gather(1, high)
    out = a + (b - a) * fraction
    return torch.where(count > 0, out, math.nan)


def histogram_counts(x: Tensor, ranges: Tensor, bins: int) -> Tensor:
    """``(rows, bins)`` counts of each row's finite values over ``bins`` equal bins of its range
    ``ranges[row] = [low, high]``; values outside fall into the first or last bin."""
    finite = torch.isfinite(x)
    low, high = ranges[:, :1], ranges[:, 1:]
    index = ((x - low) / (high - low) * bins).floor().clamp(0, bins - 1)
    index = torch.where(finite, index, 0).long() + bins * torch.arange(x.shape[0], device=x.device)[:, None]
    counts = torch.zeros(x.shape[0] * bins, dtype=torch.float32, device=x.device)
    counts.index_add_(0, index.reshape(-1), finite.reshape(-1).float())  # no read back, unlike bincount
    return counts.view(x.shape[0], bins)


def fixed_range(low: float, high: float) -> tuple[float, float] | None:
    """A histogram range that holds ``[low, high]`` (robust extremes of a first sample) with room
    to grow: the next power of two above the larger magnitude, on one side of zero when the values
    are; ``None`` when the sample says nothing yet (all zero, or not finite)."""
    extent = max(abs(low), abs(high))
    if not math.isfinite(extent) or extent == 0:
        return None
    top = 2.0 ** math.ceil(math.log2(extent * 1.25))
    if low >= 0:
        return 0.0, top
    if high <= 0:
        return -top, 0.0
    return -top, top


def histogram_edges(low: float, high: float, bins: int) -> list[float]:
    return [low + (high - low) * i / bins for i in range(bins + 1)]


def role_scalars(raw: dict[str, np.ndarray]) -> dict[str, float]:
    """The scalars of a module's role from its raw numbers (``recording.measure``), on the host.

    ``alive`` (per unit: did any example activate it) gives ``dead``; a normalization layer's
    ``weight`` and ``bias`` give ``gamma_mean`` and ``beta_mean``; a batch norm's per-channel
    ``batch_mean`` and biased ``batch_var`` give its input's mean and std and, against the running
    statistics from before the batch, ``batch_mean_drift`` (mean over channels of ``|batch mean -
    running mean| / running std``) and ``batch_var_drift`` (of ``|batch var / running var - 1|``,
    both variances plus ``eps``).
    """
    out: dict[str, float] = {}
    if "alive" in raw:
        out["dead"] = 1.0 - float(np.mean(raw["alive"]))
    if "batch_mean" in raw:
        mean, var, eps = raw["batch_mean"], raw["batch_var"], float(raw["eps"])
        running_var = raw["running_var"] + eps
        out["input_mean"] = float(mean.mean())  # every channel holds as many values
        out["input_std"] = float(np.sqrt(var.mean() + np.square(mean - mean.mean()).mean()))
        out["batch_mean_drift"] = float((np.abs(mean - raw["running_mean"]) / np.sqrt(running_var)).mean())
        out["batch_var_drift"] = float(np.abs((var + eps) / running_var - 1).mean())
    for key in ("input_mean", "input_std"):
        if key in raw:
            out[key] = float(raw[key])
    if "weight" in raw:
        out["gamma_mean"] = float(raw["weight"].mean())
    if "bias" in raw:
        out["beta_mean"] = float(raw["bias"].mean())
    return out
