"""The activation statistics of logging steps: which device tensors to compute, and how the host
turns them into each step's scalars and histograms.

An ``ActivationLayout`` is built once for a set of watched modules and output shapes, so that a
logging step runs a fixed list of device operations, and the host derives the statistics of
several steps at once from arrays of fixed shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from normlab.diagnostics import stats
from normlab.diagnostics.stats import Bins, SegmentedHistogram
from normlab.diagnostics.watch import SATURATING, Watched

# Percentiles and saturation are read from histograms this many times finer than the written ones.
FINE = 4


class ActivationLayout:
    """Where each watched module's numbers sit, for one set of modules and output shapes.

    Args:
        watched: the modules that produced an output, in the order of ``outputs``.
        outputs: their outputs on the step the layout is built for (only the shapes are kept).
        running_offsets: segment -> where that batch norm's running mean starts in the recorder's
            snapshot of running statistics (the means of all watched batch norms, then their variances).
        running_size: length of that snapshot.
        bins: the written bins of unbounded outputs (sigmoid and tanh use their own bounds).
        percentiles: in percent, e.g. ``[15, 50, 85]``.
        saturation_threshold: see ``TrainingDiagnostics``.
    """

    def __init__(
        self,
        watched: Sequence[Watched],
        outputs: Sequence[Tensor],
        running_offsets: dict[int, int],
        running_size: int,
        bins: Bins,
        percentiles: Sequence[float],
        saturation_threshold: float,
    ) -> None:
        self.watched = list(watched)
        segments = len(self.watched)
        written = [Bins(*SATURATING[w.kind], bins.count) if w.saturating else bins for w in self.watched]
        fine = [b.refined(FINE) for b in written]
        numels = [o.numel() for o in outputs]
        self.histogram = SegmentedHistogram(numels, fine, outputs[0].device)
        self.runs = stats.equal_runs(numels)
        self.low = np.array([b.low for b in fine])
        self.width = np.array([b.width for b in fine])
        self.q = np.asarray(percentiles, dtype=np.float64) / 100
        self.histogram_specs = [(f"act/{w.name}", b.edges()) for w, b in zip(self.watched, written, strict=True)]

        self.saturating = [s for s, w in enumerate(self.watched) if w.saturating]
        self.cuts = [
            stats.saturation_cut(fine[s], SATURATING[self.watched[s].kind], saturation_threshold)
            for s in self.saturating
        ]
        self.rectifiers = [s for s, w in enumerate(self.watched) if w.rectifier]
        self.units = np.array([stats.unit_maxima(outputs[s]).numel() for s in self.rectifiers], dtype=np.int64)

        # batch norms: per-channel arrays over all of them, in segment order
        self.batchnorms = [s for s, w in enumerate(self.watched) if w.batchnorm]
        self.channels = np.array([outputs[s].shape[1] for s in self.batchnorms], dtype=np.int64)
        per_channel = [outputs[s].numel() // outputs[s].shape[1] for s in self.batchnorms]
        self._per_channel = np.repeat(per_channel, self.channels).astype(np.float64)
        self._eps = np.repeat([self.watched[s].module.eps for s in self.batchnorms], self.channels)
        # batch norms with inputs of the same shape are reduced together: [sums, squares] per group
        self.bn_groups: list[list[int]] = []  # positions in `batchnorms`
        for b, s in enumerate(self.batchnorms):
            same = [g for g in self.bn_groups if outputs[self.batchnorms[g[0]]].shape == outputs[s].shape]
            same[0].append(b) if same else self.bn_groups.append([b])
        sums, offset = np.zeros(int(self.channels.sum()), np.int64), 0
        starts = np.cumsum([0, *self.channels[:-1]]).astype(np.int64)
        for group in self.bn_groups:
            width = int(sum(self.channels[b] for b in group))
            for b in group:
                sums[starts[b] : starts[b] + self.channels[b]] = offset + np.arange(self.channels[b])
                offset += self.channels[b]
            offset += width  # the group's squares follow its sums
        self._bn_sums = sums
        self._bn_squares = sums + np.repeat(
            [sum(self.channels[b] for b in g) for g in self.bn_groups for _ in g],
            [self.channels[b] for g in self.bn_groups for b in g],
        )
        means = [running_offsets[s] + np.arange(c) for s, c in zip(self.batchnorms, self.channels, strict=True)]
        self._running_mean = np.concatenate(means) if means else np.zeros(0, np.int64)
        self._running_var = self._running_mean + running_size // 2
        self.affine = [s for s in self.batchnorms if self.watched[s].module.affine]
        self.affine_sizes = np.array([self.watched[s].module.num_features for s in self.affine], dtype=np.int64)
        self.tags = self._tags(percentiles)
        self.segments = segments

    def _tags(self, percentiles: Sequence[float]) -> list[str]:
        """Scalar tag names, in the order of ``values``' columns."""
        names = [w.name for w in self.watched]
        per_module = [*(f"p{q:g}" for q in percentiles), "mean", "std", "nonfinite"]
        tags = [f"act/{m}/{stat}" for m in names for stat in per_module]
        tags += [f"act/{names[s]}/saturated" for s in self.saturating]
        tags += [f"act/{names[s]}/dead" for s in self.rectifiers]
        tags += [f"bn/{names[s]}/{d}" for s in self.batchnorms for d in ("batch_mean_drift", "batch_var_drift")]
        tags += [f"bn/{names[s]}/{p}" for s in self.affine for p in ("gamma_mean", "beta_mean")]
        return tags

    # ------------------------------------------------------------------------- on the device
    def tensors(
        self, outputs: Sequence[Tensor], bn_inputs: Sequence[Tensor], running: Tensor | None
    ) -> tuple[dict[str, Tensor], Tensor]:
        """The step's device tensors but the histograms, and the concatenated outputs (for ``histograms``).

        Args:
            outputs: the watched modules' outputs, in layout order.
            bn_inputs: the inputs of the batch norms, in layout order.
            running: the recorder's snapshot of running statistics.
        """
        flat = torch.cat([o.reshape(-1) for o in outputs]).float()
        out = {"moments": stats.segment_moments(flat, self.runs)}
        if self.rectifiers:
            out["maxima"] = torch.cat([stats.unit_maxima(outputs[s]) for s in self.rectifiers]).float()
        if self.batchnorms:
            groups = [stats.channel_moments([bn_inputs[b] for b in group]) for group in self.bn_groups]
            out["bn_moments"] = groups[0] if len(groups) == 1 else torch.cat(groups)
            out["running"] = running
        if self.affine:
            modules = [self.watched[s].module for s in self.affine]
            out["affine"] = torch.cat([m.weight for m in modules] + [m.bias for m in modules]).float()
        return out, flat

    @staticmethod
    def finite(moments: Sequence[float]) -> bool:
        """Whether the outputs were all finite, from the host copy of their moments (a NaN or Inf
        makes its segment's sum non-finite)."""
        return all(map(math.isfinite, moments))

    def histograms(
        self, tensors: dict[str, Tensor], flat: Tensor, finite: bool, reduce: Callable[[Tensor], Tensor] | None = None
    ) -> None:
        """Add the cumulative histogram counts to ``tensors``; for outputs that are not ``finite``,
        recount everything over the finite values only, with each NaN and Inf counted apart.

        Args:
            tensors: the step's tensors from ``tensors``.
            flat: the concatenated outputs.
            finite: whether they are all finite (``finite`` of the moments).
            reduce: sums a tensor over the ranks of data parallelism.
        """
        if finite:
            counts = self.histogram.finite(flat)
        else:
            counts = self.histogram.exact(flat)
            tensors["moments"] = stats.segment_moments(flat, self.runs, exact=True).float()
        if reduce is not None:
            sizes = [counts.numel(), tensors["moments"].numel()]
            counts, tensors["moments"] = reduce(torch.cat([counts, tensors["moments"]])).split(sizes)
        tensors["cumulative"] = counts.cumsum(0)

    # ------------------------------------------------------------------------- on the host
    def values(self, host: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Scalars ``(steps, len(tags))`` and histograms ``(steps, segments, 3 + bins)`` (number of
        values, sum, sum of squares, counts) of several steps at once; ``host`` holds each device
        tensor of ``tensors`` and ``histograms`` as a ``(steps, size)`` array."""
        steps, segments = len(host["moments"]), self.segments
        # per segment: slot 0 counts NaN and Inf, then the bins; the counts arrive cumulated
        total = host["cumulative"].reshape(steps, segments, -1)
        before = np.zeros((steps, segments))
        before[:, 1:] = total[:, :-1, -1]
        nonfinite = (total[:, :, 0] - before).ravel()
        cdf = (total[:, :, 1:] - total[:, :, :1]).reshape(steps * segments, -1)
        n = cdf[:, -1]
        moments = host["moments"].astype(np.float64)
        sums, squares = moments[:, :segments].ravel(), moments[:, segments:].ravel()
        mean, std = stats.mean_std(n, sums, squares)
        pct = stats.percentiles(cdf, np.tile(self.low, steps), np.tile(self.width, steps), self.q)
        columns = [np.column_stack([pct, mean, std, nonfinite]).reshape(steps, -1)]
        if self.saturating:
            per_step = cdf.reshape(steps, segments, -1)
            columns.append(
                np.column_stack(
                    [
                        stats.saturated_fraction(per_step[:, s], *cut)
                        for s, cut in zip(self.saturating, self.cuts, strict=True)
                    ]
                )
            )
        if self.rectifiers:
            columns.append(stats.group_means((host["maxima"] <= 0).astype(np.float64), self.units))
        if self.batchnorms:
            bn, running = host["bn_moments"].astype(np.float64), host["running"].astype(np.float64)
            drift = stats.batchnorm_drift(
                bn[:, self._bn_sums],
                bn[:, self._bn_squares],
                self._per_channel,
                running[:, self._running_mean],
                running[:, self._running_var],
                self._eps,
            )
            columns.append(np.stack([stats.group_means(d, self.channels) for d in drift], axis=2).reshape(steps, -1))
        if self.affine:
            gamma, beta = np.split(host["affine"].astype(np.float64), 2, axis=1)
            means = [stats.group_means(gamma, self.affine_sizes), stats.group_means(beta, self.affine_sizes)]
            columns.append(np.stack(means, axis=2).reshape(steps, -1))
        histograms = np.column_stack([n, sums, squares, stats.coarsen(cdf, FINE)])
        return np.concatenate(columns, axis=1), histograms.reshape(steps, segments, -1)
