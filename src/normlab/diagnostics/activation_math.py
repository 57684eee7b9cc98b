"""The activation statistics of several modules at once: pure functions of the modules' samples
(``recording.Measurement.sample``), tested against numpy.

On the device, the samples are stacked into one ``(modules, values)`` matrix, padded with zeros,
and two passes serve every module: the sums (``moments``) and one fine histogram over each
module's fixed range (``fine_histogram``, ``FINE`` fine bins per displayed bin). The fine
histogram is reduced on the device to the displayed bins, a few running totals and each
percentile's place (``fine_summary``), so that only a few numbers per module travel to the host,
where they give the percentiles and the displayed histogram (``binned_statistics``). A row whose fine
bins are too coarse for its spread, or whose percentiles fall among outliers in an edge bin, is
sorted instead (``exact_percentiles``).

The passes assume finite values: a row whose float64 sum is not finite holds NaN or infinity,
which is rare (a diverging run), and is summarized again from its finite values alone
(``finite_values``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

FINE = 64  # fine bins per displayed bin
# a binned percentile is trusted when one fine bin is at most this fraction of the spread
BINNED_ERROR = 0.005


def stack_samples(samples: Sequence[Tensor]) -> Tensor:
    """The samples as rows of one float32 matrix, each padded to the longest with zeros."""
    longest = max(s.numel() for s in samples)
    return torch.stack([s if s.numel() == longest else F.pad(s, (0, longest - s.numel())) for s in samples])


def padding_weights(lengths: Sequence[int], device: torch.device) -> Tensor | None:
    """``(rows, longest)`` 1 for a row's values and 0 for its padding; ``None`` without padding."""
    if len(set(lengths)) <= 1:
        return None
    positions = torch.arange(max(lengths), device=device)
    return (positions < torch.tensor(lengths, device=device)[:, None]).float()


def finite_values(row: Tensor) -> tuple[Tensor, int]:
    """A row's finite values, and how many were not (a read of the row: for the rare bad row)."""
    keep = torch.isfinite(row)
    return row[keep], int(row.numel() - keep.sum())


def moments(x: Tensor) -> Tensor:
    """``(rows, 2)`` float64 sum and sum of squares of each row of zero-padded ``x``: a sum that
    is not finite says that the row holds NaN or infinity (float32 values cannot overflow it)."""
    return torch.stack([x.sum(1, dtype=torch.float64), x.square().sum(1, dtype=torch.float64)], dim=1)


def fine_histogram(x: Tensor, ranges: Tensor, bins: int, weights: Tensor | None = None) -> Tensor:
    """``(rows, bins + 2)`` counts of each row's values: below its range ``ranges[row] = [low,
    high]``, in each of ``bins`` equal bins of it, and above it. ``weights`` (``padding_weights``)
    leaves the padding out. The values must be finite (a NaN is counted below the range)."""
    rows = x.shape[0]
    scale = bins / (ranges[:, 1:] - ranges[:, :1])
    index = torch.addcmul(-ranges[:, :1] * scale, x, scale).floor_().nan_to_num_(nan=-1.0).clamp_(-1, bins)
    first = torch.arange(1, rows * (bins + 2), bins + 2, device=x.device, dtype=x.dtype)  # each row's bin 0
    counts = torch.zeros(rows * (bins + 2), dtype=torch.float32, device=x.device)
    ones = torch.ones_like(x) if weights is None else weights
    counts.scatter_add_(0, index.add_(first[:, None]).long().view(-1), ones.view(-1))  # no read back, unlike bincount
    return counts.view(rows, bins + 2)


def fine_summary(fine: Tensor, q: Sequence[float], threshold: float) -> dict[str, Tensor]:
    """What the host needs of fine counts ``(rows, bins * FINE + 2)`` (``fine_histogram``), so that
    only a few numbers per row travel (``binned_statistics`` reads them):

    - ``histogram`` ``(rows, bins)``: the values in each displayed bin;
    - ``ends`` ``(rows, 5)``: running totals up to five places: the values below the range; up to
      ``threshold`` of the way from the middle of the range to its low bound; up to the same place
      near its high bound; up to its high bound; all values;
    - ``position`` ``(rows, len(q))``: each percentile's place in fine bins from the low bound, as
      ``numpy.percentile`` ranks it, the values of a fine bin taken as evenly spread in it: below 0
      or above ``bins * FINE`` when it lies outside the range.
    """
    rows, width = fine.shape
    cumulative = fine.cumsum(1)  # float32 counts are exact up to 2**24 values a row
    fractions = torch.tensor(q, dtype=fine.dtype, device=fine.device) / 100
    rank = (cumulative[:, -1:] - 1).clamp_(min=0) * fractions  # 0-based
    index = torch.searchsorted(cumulative, rank, right=True).clamp_(max=width - 1)  # the fine bin holding it
    inside = fine.gather(1, index)
    # the rank's place in its bin, from -1 (its start) to 0 (its end); the bin's running total less
    # its own values is what lies before it
    within = (rank - cumulative.gather(1, index) + 0.5).div_(inside.clamp(min=1)).clamp_(-1, 0)
    edge = round((width - 2) * (1 - threshold) / 2)  # fine bins beyond the threshold, on either side
    ends = cumulative[:, [0, edge, width - 2 - edge, width - 2, width - 1]]
    return {"histogram": fine[:, 1:-1].reshape(rows, -1, FINE).sum(2), "ends": ends, "position": index + within}


def exact_percentiles(x: Tensor, q: Sequence[float], weights: Tensor | None = None) -> Tensor:
    """``(rows, len(q))`` percentiles ``q`` (in [0, 100]) of each row's values (``weights``: as in
    ``fine_histogram``), with linear interpolation as ``numpy.percentile`` does; NaN for an empty row."""
    if weights is None:
        count = torch.full((x.shape[0], 1), x.shape[1], device=x.device)
        ordered = x.sort(dim=1).values
    else:
        count = weights.sum(1, keepdim=True).long()
        ordered = torch.where(weights > 0, x, math.inf).sort(dim=1).values
    position = (count - 1).clamp(min=0) * torch.tensor(q, dtype=torch.float32, device=x.device) / 100
    low = position.floor().long()
    high = torch.minimum((low + 1).clamp(max=x.shape[1] - 1), (count - 1).clamp(min=0))
    fraction = position - low
    a, b = ordered.gather(1, low), ordered.gather(1, high)
    out = a + (b - a) * fraction
    return torch.where(count > 0, out, math.nan)


# ----------------------------------------------------------------------------- on the host
def binned_statistics(summary: dict[str, np.ndarray], ranges: np.ndarray) -> dict[str, np.ndarray]:
    """From ``fine_summary`` (on the host) over ``ranges[row] = [low, high]``, per row: ``count``;
    ``histogram``, with the values below and above the range in the first and the last bin;
    ``beyond``, the values beyond the threshold near either bound; ``percentiles`` (NaN for an
    empty row), within one fine bin of the exact value, or of the gap between the two values
    around it where that is wider (a small sample); and whether to ``trust`` them: a fine bin is
    at most ``BINNED_ERROR`` of the spread between the lowest and the highest percentile, and
    none lies below or above the range."""
    below, low_edge, high_edge, inside, count = summary["ends"].T
    histogram = summary["histogram"].copy()
    histogram[:, 0] += below
    histogram[:, -1] += count - inside
    fine_bins = histogram.shape[1] * FINE
    position = summary["position"]
    width = (ranges[:, 1] - ranges[:, 0]) / fine_bins
    percentiles = ranges[:, :1] + width[:, None] * position
    percentiles[count == 0] = np.nan
    spread = percentiles[:, -1] - percentiles[:, 0] if position.shape[1] > 1 else np.full(len(count), np.inf)
    trusted = (width <= BINNED_ERROR * spread) & (position >= 0).all(1) & (position <= fine_bins).all(1)
    return {
        "count": count,
        "histogram": histogram,
        "beyond": low_edge + count - high_edge,
        "percentiles": percentiles,
        "trusted": trusted,
    }


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


def role_scalars(
    raw: dict[str, np.ndarray], eps: float = 0.0, momentum: float | None = 0.1, per_channel: int = 0
) -> dict[str, float]:
    """The scalars of a module's role from its raw numbers (``recording.measure``), on the host.

    ``alive`` (per unit: did any example activate it) gives ``dead``; a normalization layer's
    ``weight`` and ``bias`` give ``gamma_mean`` and ``beta_mean``; a batch norm's running
    statistics from before and after the batch (with its ``momentum`` and ``per_channel`` values
    per channel: ``batch_statistics``), or its input's per-channel ``batch_mean`` and ``batch_var``
    beside its unmoving ``running`` statistics, give its input's mean and std and ``batch_mean_drift``
    (mean over channels of ``|batch mean - running mean| / running std``) and ``batch_var_drift``
    (of ``|batch var / running var - 1|``, both variances plus the batch norm's ``eps``).
    """
    out: dict[str, float] = {}
    if "alive" in raw:
        out["dead"] = 1.0 - _mean(raw["alive"])
    batch = None
    if "running_before" in raw:
        batch = batch_statistics(raw["running_before"], raw["running_after"], momentum, per_channel)
    elif "batch_mean" in raw:  # measured on the input: running statistics that do not move
        channels = len(raw["batch_mean"])
        batch = raw["batch_mean"], raw["batch_var"], raw["running"][:channels], raw["running"][channels:]
    if batch is not None:
        mean, var, running_mean, running_var = batch
        running_var = running_var + eps
        out["input_mean"] = _mean(mean)  # every channel holds as many values
        out["input_std"] = math.sqrt(max(_mean(var) + _mean(np.square(mean - out["input_mean"])), 0.0))
        out["batch_mean_drift"] = _mean(np.abs(mean - running_mean) / np.sqrt(running_var))
        out["batch_var_drift"] = _mean(np.abs((var + eps) / running_var - 1))
    for key in ("input_mean", "input_std"):
        if key in raw:
            out[key] = float(raw[key])
    if "weight" in raw:
        out["gamma_mean"] = _mean(raw["weight"])
    if "bias" in raw:
        out["beta_mean"] = _mean(raw["bias"])
    return out


def batch_statistics(
    before: np.ndarray, after: np.ndarray, momentum: float | None, per_channel: int
) -> tuple[np.ndarray, ...]:
    """A batch's per-channel mean and biased variance, recovered from a batch norm's running mean
    and variance (concatenated) before and after the batch updated them, as PyTorch does:
    ``running = (1 - momentum) * running + momentum * batch``, with the unbiased variance of
    ``per_channel`` values (``momentum=None``: ``1 / batches seen``, the count ending ``after``).
    Also the running mean and variance from before. Exact up to the float32 rounding of the
    running statistics, magnified by ``1 / momentum``."""
    channels = len(before) // 2
    weight = momentum if momentum is not None else 1.0 / after[-1]
    batch = (after[: 2 * channels] - (1 - weight) * before[: 2 * channels]) / weight
    mean, unbiased = batch[:channels], batch[channels:]
    var = unbiased * (per_channel - 1) / per_channel
    return mean, np.maximum(var, 0.0), before[:channels], before[channels : 2 * channels]


def _mean(values: np.ndarray) -> float:
    return float(values.sum()) / values.size  # ndarray.mean's Python wrapper costs more than the sum
