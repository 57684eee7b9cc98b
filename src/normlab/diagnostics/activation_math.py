"""The activation statistics of several modules at once: pure functions of the modules' samples
(``recording.Measurement.sample``), tested against numpy.

On the device, the samples are stacked into one ``(modules, values)`` matrix, padded with NaN, and
two passes serve every module: the moments (``moments``) and one fine histogram over each module's
fixed range (``fine_histogram``, ``FINE`` fine bins per displayed bin). On the host, that fine
histogram gives the displayed histogram (``coarsen``), the percentiles (``binned_percentiles``)
and the saturated fraction. A row whose fine bins are too coarse for its spread, or whose
percentiles fall among outliers in an edge bin, is sorted instead (``exact_percentiles``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

MOMENTS = ("count", "nonfinite", "mean", "std", "sum", "sum_squares")
FINE = 64  # fine bins per displayed bin
# a binned percentile is trusted when one fine bin is at most this fraction of the spread
BINNED_ERROR = 0.005


def stack_samples(samples: Sequence[Tensor]) -> Tensor:
    """The samples as rows of one float32 matrix, each padded to the longest with NaN."""
    return torch.nn.utils.rnn.pad_sequence(list(samples), batch_first=True, padding_value=math.nan)


def moments(x: Tensor, lengths: Tensor) -> Tensor:
    """Per row ``MOMENTS`` of the finite values: their count, the non-finite values among the
    ``lengths`` real ones, mean, std, sum and sum of squares (summed in float64)."""
    finite = torch.isfinite(x)
    count = finite.sum(1, dtype=torch.float64)
    values = torch.where(finite, x, 0.0)
    total = values.sum(1, dtype=torch.float64)
    sum_squares = values.square().sum(1, dtype=torch.float64)
    mean = total / count
    std = (sum_squares / count - mean.square()).clamp(min=0).sqrt()
    return torch.stack([count, lengths.double() - count, mean, std, total, sum_squares], dim=1)


def fine_histogram(x: Tensor, ranges: Tensor, bins: int) -> Tensor:
    """``(rows, bins + 2)`` counts of each row's finite values: below its range ``ranges[row] =
    [low, high]``, in each of ``bins`` equal bins of it, and above it."""
    finite = torch.isfinite(x)
    low, high = ranges[:, :1], ranges[:, 1:]
    index = ((x - low) * (bins / (high - low))).floor_().clamp_(-1, bins) + 1
    index = torch.where(finite, index, 0).long() + (bins + 2) * torch.arange(x.shape[0], device=x.device)[:, None]
    counts = torch.zeros(x.shape[0] * (bins + 2), dtype=torch.float32, device=x.device)
    counts.index_add_(0, index.reshape(-1), finite.reshape(-1).float())  # no read back, unlike bincount
    return counts.view(x.shape[0], bins + 2)


def exact_percentiles(x: Tensor, q: Sequence[float]) -> Tensor:
    """``(rows, len(q))`` percentiles ``q`` (in [0, 100]) of each row's finite values, with linear
    interpolation as ``numpy.percentile`` does; NaN for a row without finite values."""
    finite = torch.isfinite(x)
    count = finite.sum(1, keepdim=True)
    ordered = torch.where(finite, x, math.inf).sort(dim=1).values
    position = (count - 1).clamp(min=0) * torch.tensor(q, dtype=torch.float32, device=x.device) / 100
    low = position.floor().long()
    high = torch.minimum((low + 1).clamp(max=x.shape[1] - 1), (count - 1).clamp(min=0))
    fraction = position - low
    a, b = ordered.gather(1, low), ordered.gather(1, high)
    out = a + (b - a) * fraction
    return torch.where(count > 0, out, math.nan)


# ----------------------------------------------------------------------------- on the host
def coarsen(counts: np.ndarray, factor: int) -> np.ndarray:
    """Fine counts ``(rows, bins * factor + 2)`` summed into ``(rows, bins)``, the values below
    and above the range in the first and the last bin."""
    inner = counts[:, 1:-1].reshape(counts.shape[0], -1, factor).sum(2)
    inner[:, 0] += counts[:, 0]
    inner[:, -1] += counts[:, -1]
    return inner


def binned_percentiles(counts: np.ndarray, ranges: np.ndarray, q: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Percentiles ``(rows, len(q))`` from fine counts over ``ranges`` (``fine_histogram``), the
    values of a bin taken as evenly spread in it: within one bin width of the exact value, or of
    the gap between the two values around it where that is wider (a small sample). Also per row
    whether they are to be trusted: a bin is at most ``BINNED_ERROR`` of the spread between the
    lowest and the highest percentile, and none lies below or above the range."""
    rows, bins = counts.shape[0], counts.shape[1] - 2
    cumulative = counts.cumsum(1)
    total = cumulative[:, -1:]
    rank = np.maximum(total - 1, 0) * np.asarray(q, np.float64) / 100
    # one search for all rows: each row's cumulative counts lifted above the previous row's
    lift = (np.arange(rows) * (total.max() + 1))[:, None]
    found = np.searchsorted((cumulative + lift).ravel(), (rank + lift).ravel(), side="right").reshape(rank.shape)
    where = found - np.arange(rows)[:, None] * (bins + 2)  # the bin within the row
    before = np.where(where > 0, np.take_along_axis(cumulative, np.maximum(where - 1, 0), 1), 0.0)
    inside = np.maximum(np.take_along_axis(counts, np.minimum(where, bins + 1), 1), 1)
    out = where - 1 + np.clip((rank - before + 0.5) / inside, 0, 1)
    width = (ranges[:, 1] - ranges[:, 0]) / bins
    out = ranges[:, :1] + width[:, None] * out
    spread = out[:, -1] - out[:, 0] if len(q) > 1 else np.full(rows, np.inf)
    ok = (width <= BINNED_ERROR * spread) & (where > 0).all(1) & (where <= bins).all(1)
    out[total[:, 0] == 0] = np.nan
    return out, ok


def saturated_fraction(counts: np.ndarray, threshold: float) -> np.ndarray:
    """Per row, the share of values beyond ``threshold`` of the way from the middle of the range to
    either bound, from fine counts over exactly that range (to the nearest fine bin edge)."""
    bins = counts.shape[1] - 2
    edge = round(bins * (1 - threshold) / 2) + 1  # with the bin below the range
    beyond = counts[:, :edge].sum(1) + counts[:, counts.shape[1] - edge :].sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return beyond / counts.sum(1)


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
