"""The statistics of one logging step's samples: computed on their device, brought to the host in
one copy, and done again from the finite values for the rare row that holds NaN or infinity.

``summarize`` takes the samples as the rows of one zero-padded matrix (``activation_math``) and
returns per row, on the host, the numbers ``ActivationStatistics`` logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from normlab.diagnostics import activation_math as math_


@dataclass
class SampleStatistics:
    """Per row (module) of one step, on the host."""

    count: np.ndarray  # finite values in the sample
    nonfinite: np.ndarray  # NaN or infinite values in the sample
    mean: np.ndarray
    std: np.ndarray
    sum: np.ndarray
    sum_squares: np.ndarray
    percentiles: np.ndarray  # (rows, len(q))
    histogram: np.ndarray  # (rows, bins), the values outside the range in the edge bins
    saturated: np.ndarray  # share of the values near either bound of the range
    extras: dict[str, np.ndarray]  # what the caller sent along, by its key


def gather_ranks(strategy: Any, x: Tensor, weights: Tensor | None, width: int) -> tuple[Tensor, Tensor]:
    """Under data parallelism, every rank's samples side by side in each row (each padded to
    ``width`` values), and which of their values are real (``weights``)."""
    rows = x.shape[0]
    if weights is None:
        weights = torch.ones_like(x)
    pad = (0, width - x.shape[1])
    x, weights = torch.nn.functional.pad(x, pad), torch.nn.functional.pad(weights, pad)
    gathered = [strategy.all_gather(t).transpose(0, 1).reshape(rows, -1) for t in (x, weights)]
    return gathered[0], gathered[1]


def to_host(parts: dict[str, Tensor]) -> dict[str, np.ndarray]:
    """Device tensors brought to the host in one copy, each in its shape, as float64."""
    flat = torch.cat([t if t.dim() == 1 else t.reshape(-1) for t in parts.values()]).to(torch.float64).cpu().numpy()
    out, offset = {}, 0
    for key, tensor in parts.items():
        out[key] = flat[offset : offset + tensor.numel()].reshape(tensor.shape)
        offset += tensor.numel()
    return out


def on_device(x: Tensor, ranges: Tensor, bins: int, q: Sequence[float], threshold: float, weights: Tensor | None):
    """The two passes over ``x`` that every row needs, its sums and its fine histogram, reduced to
    a few numbers per row."""
    fine = math_.fine_histogram(x, ranges, bins * math_.FINE, weights)
    return {"moments": math_.moments(x), **math_.fine_summary(fine, q, threshold)}


@torch.no_grad()
def summarize(
    x: Tensor,
    bounds: np.ndarray,
    bins: int,
    q: Sequence[float],
    threshold: float,
    weights: Tensor | None = None,
    extras: dict[str, Tensor] | None = None,
    ranges: Tensor | None = None,
) -> SampleStatistics:
    """The statistics of each row of ``x`` (zero-padded samples; ``weights`` as in
    ``activation_math.fine_histogram``) over its histogram range ``bounds[row] = (low, high)``, in
    ``bins`` bins, with percentiles ``q`` and the saturated share at ``threshold``. ``extras``
    (device tensors) travel to the host in the same copy. ``ranges``: ``bounds`` on the device,
    if the caller keeps them there."""
    bounds = np.asarray(bounds, np.float64)
    if ranges is None:
        ranges = torch.tensor(bounds, dtype=torch.float32, device=x.device)
    host = to_host({**on_device(x, ranges, bins, q, threshold, weights), **(extras or {})})  # the one copy
    host.update(math_.binned_statistics(host, bounds))
    nonfinite = np.zeros(len(x))
    for row in np.flatnonzero(~np.isfinite(host["moments"][:, 0])):  # a second copy, on such steps only
        values = x[row] if weights is None else x[row][weights[row] > 0]
        finite, nonfinite[row] = math_.finite_values(values)
        again = to_host(on_device(finite[None], ranges[row : row + 1], bins, q, threshold, None))
        again.update(math_.binned_statistics(again, bounds[row : row + 1]))
        if not again["trusted"][0] and len(finite):
            again["percentiles"] = math_.exact_percentiles(finite[None], q).double().cpu().numpy()
            again["trusted"][0] = True
        for key in ("moments", "count", "percentiles", "trusted", "histogram", "beyond"):
            host[key][row] = again[key][0]
    untrusted = np.flatnonzero(~host["trusted"] & (host["count"] > 0))
    if len(untrusted):  # bins too coarse for the row's spread: sort it (a second copy)
        rows = torch.as_tensor(untrusted, device=x.device)
        picked = None if weights is None else weights[rows]
        host["percentiles"][untrusted] = math_.exact_percentiles(x[rows], q, picked).double().cpu().numpy()
    count = host["count"]
    sums, sum_squares = host["moments"][:, 0], host["moments"][:, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / count
        std = np.sqrt(np.maximum(sum_squares / count - mean**2, 0))
        saturated = host["beyond"] / count
    return SampleStatistics(
        count=count,
        nonfinite=nonfinite,
        mean=mean,
        std=std,
        sum=sums,
        sum_squares=sum_squares,
        percentiles=host["percentiles"],
        histogram=host["histogram"],
        saturated=saturated,
        extras={key: host[key] for key in extras or {}},
    )
