"""The activation statistics of logging steps: which device tensors to compute, and how the host
turns them into each step's scalars and histograms.

An ``ActivationLayout`` is built once for a set of watched modules and output shapes. A logging
step copies its outputs into their places in a row of the layout's buffer on the device (one
``torch._foreach_copy_``) and computes its few small tensors; the histograms and moments of up to
``ROWS`` steps are then taken by one fixed list of operations over their rows, while the rows still
fit in a core's cache. The host derives the statistics of many steps at once from arrays of fixed
shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from normlab.diagnostics import stats
from normlab.diagnostics.stats import Bins, Chunks, SegmentedHistogram
from normlab.diagnostics.watch import SATURATING, Watched

# Percentiles and saturation are read from histograms this many times finer than the written ones.
FINE = 2
# The outputs of up to this many steps wait on the device and are binned together, as long as
# they fit in this many bytes.
ROWS = 4
CACHE_BYTES = 2**20


class ActivationLayout:
    """Where each watched module's numbers sit, for one set of modules and output shapes.

    Args:
        watched: the modules that produced an output, in the order of ``outputs``.
        outputs: their outputs on the step the layout is built for (only the shapes are kept).
        bn_sources: per watched batch norm, the position in ``outputs`` of its input, or ``None``
            when its input is not watched (``sources``).
        state: the recorder's ``bn_state`` on that step (only the sizes are kept).
        state_offsets: segment -> where that batch norm's running mean, running variance, weight,
            bias and momentum start in a row of ``state`` (``ActivationRecorder.state_offsets``).
        bins: the written bins of unbounded outputs (sigmoid and tanh use their own bounds).
        percentiles: in percent, e.g. ``[15, 50, 85]``.
        saturation_threshold: see ``TrainingDiagnostics``.
        rows: the most steps whose outputs wait for ``statistics`` (fewer for large outputs).
    """

    def __init__(
        self,
        watched: Sequence[Watched],
        outputs: Sequence[Tensor],
        bn_sources: Sequence[int | None],
        state: Sequence[Tensor],
        state_offsets: dict[int, tuple[int, int, int | None, int | None, int]],
        bins: Bins,
        percentiles: Sequence[float],
        saturation_threshold: float,
        rows: int = ROWS,
    ) -> None:
        self.watched = list(watched)
        segments = len(self.watched)
        written = [Bins(*SATURATING[w.kind], bins.count) if w.saturating else bins for w in self.watched]
        fine = [b.refined(FINE) for b in written]
        numels = [o.numel() for o in outputs]
        self.device = outputs[0].device
        self.shapes = [tuple(o.shape) for o in outputs]
        self.chunks = Chunks(numels)  # where each output lies in the step's buffer
        self.histogram = SegmentedHistogram(self.chunks, fine, self.device)
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
        self.units = np.array([stats.unit_maxima(outputs[s][None]).shape[1] for s in self.rectifiers], dtype=np.int64)

        # batch norms: per-channel arrays over all of them, in segment order
        self.batchnorms = [s for s, w in enumerate(self.watched) if w.batchnorm]
        self.channels = np.array([outputs[s].shape[1] for s in self.batchnorms], dtype=np.int64)
        per_channel = [outputs[s].numel() // outputs[s].shape[1] for s in self.batchnorms]
        self._per_channel = np.repeat(per_channel, self.channels).astype(np.float64)
        self._eps = np.repeat([self.watched[s].module.eps for s in self.batchnorms], self.channels)
        # batch norms with inputs of the same shape are reduced together: from the buffered rows
        # when their inputs are watched outputs, else at each step. On the device the sums of each
        # group follow one another, then their squares: where each batch norm's channels land
        self.bn_sources = list(bn_sources)
        self.bn_groups: list[list[int]] = []  # positions in `batchnorms`
        for b, s in enumerate(self.batchnorms):
            key = (self.shapes[s], self.bn_sources[b] is None)
            same = [
                g for g in self.bn_groups if (self.shapes[self.batchnorms[g[0]]], self.bn_sources[g[0]] is None) == key
            ]
            same[0].append(b) if same else self.bn_groups.append([b])
        starts = np.cumsum([0, *self.channels])
        order = [b for group in self.bn_groups for b in group]
        sums = np.concatenate([np.arange(starts[b], starts[b + 1]) for b in order] or [[]]).astype(np.int64)
        sums = np.argsort(sums, kind="stable")  # device position of each channel's sum, in order
        self._bn_sum_index, self._bn_square_index = _index(sums), _index(int(self.channels.sum()) + sums)
        self.affine = [s for s in self.batchnorms if self.watched[s].module.affine]
        self.affine_sizes = np.array([self.watched[s].module.num_features for s in self.affine], dtype=np.int64)
        # where each channel's numbers lie in a row of batch-norm state: running mean and variance,
        # weight, bias and momentum
        self._running_mean, self._running_var, self._gamma, self._beta, self._momentum = (
            _index(
                _positions([state_offsets[s][k] for s in segments], self.affine_sizes if k in (2, 3) else self.channels)
            )
            for k, segments in enumerate([self.batchnorms, self.batchnorms, self.affine, self.affine, self.batchnorms])
        )
        self.tags = self._tags(percentiles)
        self.segments = segments
        # each row a step's outputs laid end to end, until ``statistics``; as many rows as fit in a
        # core's cache, so that the steps' histograms and moments take one pass of operations
        self.capacity = max(1, min(rows, CACHE_BYTES // (4 * self.chunks.total)))
        self._values = torch.zeros(self.capacity, self.chunks.total, device=self.device)
        self._places = [self.chunks.places(row, self.shapes) for row in self._values]  # per row, per output
        self._padding = self.chunks.padding(self._values)  # zeros, but binning in place overwrites them
        # each row a step's batch-norm state, copied beside its outputs
        sizes = [t.numel() for t in state]
        self._states = torch.zeros(self.capacity, sum(sizes), device=self.device)
        # per batch-norm group, how to read its inputs from the rows when they are watched outputs,
        # else None (built once: per call the arithmetic of the strides costs more than the reduction)
        self._bn_reads = [
            self._rows_of([self.bn_sources[b] for b in group]) if self.bn_sources[group[0]] is not None else None
            for group in self.bn_groups
        ]
        self._small: list[dict[str, Tensor]] = []  # per filled row, its step's other tensors

    @staticmethod
    def sources(outputs: Sequence[Tensor], bn_inputs: Sequence[Tensor]) -> tuple[int | None, ...]:
        """Per batch-norm input, its position among ``outputs`` (the same tensor), or ``None``."""
        position = {id(o): j for j, o in enumerate(outputs)}
        return tuple([position.get(id(x)) for x in bn_inputs])

    def fits(self, outputs: Sequence[Tensor], bn_inputs: Sequence[Tensor]) -> bool:
        """Whether a step's outputs, in the order the layout was built for, have its device and
        shapes, and its batch norms read watched outputs as before (a cheaper check than a new key).
        ``False`` where a batch norm's input is not watched: that is checked by ``sources``."""
        shapes, sources = self.shapes, self.bn_sources
        return (
            len(outputs) == len(shapes)
            and len(bn_inputs) == len(sources)
            and None not in sources
            and outputs[0].device == self.device
            and all(o.shape == shape for o, shape in zip(outputs, shapes, strict=True))
            and all(x is outputs[j] for x, j in zip(bn_inputs, sources, strict=True))
        )

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
    @property
    def used(self) -> int:
        """Rows filled since the last ``statistics``."""
        return len(self._small)

    @property
    def full(self) -> bool:
        return self.used == self.capacity

    def capture(self, outputs: Sequence[Tensor], bn_inputs: Sequence[Tensor], state: Sequence[Tensor]) -> None:
        """Copy a step's outputs and batch-norm state into the next rows, and compute
        its small tensors at once: maxima of rectifier units and batch-norm input moments.

        Args:
            outputs: the watched modules' outputs, in layout order.
            bn_inputs: the inputs of the batch norms, in layout order.
            state: the recorder's ``bn_state``.
        """
        if self.full:
            raise RuntimeError("the layout's rows are full: take their statistics first")
        row = self.used
        torch._foreach_copy_(self._places[row], outputs)
        if state:  # many small tensors: one cat costs less than a copy each
            torch.cat(state, out=self._states[row])
        small = {}
        if self.rectifiers:
            small["maxima"] = torch.cat([stats.unit_maxima(outputs[s][None]) for s in self.rectifiers], dim=1).float()
        if self.batchnorms:
            for g, group in enumerate(self.bn_groups):
                if self._bn_reads[g] is None:
                    sums, squares = stats.channel_moments(_stack([bn_inputs[b] for b in group]))
                    small[f"bn_sums{g}"], small[f"bn_squares{g}"] = sums.reshape(1, -1), squares.reshape(1, -1)
        self._small.append(small)

    def statistics(self, reduce: Callable[[Tensor], Tensor] | None = None) -> dict[str, Tensor]:
        """The device tensors of the filled rows, ``(rows, size)`` each, which are then free again:
        moments and cumulative histogram counts of each output, and the tensors of ``capture``.
        Outputs with a NaN or Inf are counted exactly (each such value in its output's slot 0),
        the others on a faster path.

        Args:
            reduce: sums a tensor over the ranks of data parallelism (histograms and moments).
        """
        values = self._values[: self.used]
        small, self._small = self._small, []
        out = {key: small[0][key] if len(small) == 1 else torch.cat([row[key] for row in small]) for key in small[0]}
        if self.batchnorms:  # before the histograms, which overwrite the rows
            out["bn_moments"] = self._bn_moments(out, len(small))
            out["bn_state"] = self._states[: len(small)].clone()
        moments = stats.chunk_moments(values)
        if math.isfinite(moments.sum().item()):  # no NaN or Inf (or an overflow, which is counted exactly too)
            counts = self.histogram.finite(values)
        else:
            moments = stats.chunk_moments(values, exact=True).float()
            counts = self.histogram.exact(values)
        if self._padding:
            torch._foreach_zero_(self._padding)
        if reduce is not None:
            sizes = [counts.shape[1], moments.shape[1]]
            counts, moments = reduce(torch.cat([counts, moments], dim=1)).split(sizes, dim=1)  # as float32
        out["moments"], out["cumulative"] = moments, counts.cumsum(1)
        return out

    def _bn_moments(self, small: dict[str, Tensor], rows: int) -> Tensor:
        """Per-channel sums, then sums of squares, of the batch norms' inputs, ``(rows, 2 * channels)``:
        from the buffered rows when the inputs are watched outputs, else from ``capture``."""
        sums, squares = [], []
        for g, read in enumerate(self._bn_reads):
            if read is not None:  # (rows, k, N, C, ...) -> (rows, k * C)
                per_channel = stats.channel_moments(read(rows), 3)
                s, q = (m.reshape(rows, -1) for m in per_channel)
            else:
                s, q = small.pop(f"bn_sums{g}"), small.pop(f"bn_squares{g}")
            sums.append(s)
            squares.append(q)
        return torch.cat(sums + squares, dim=1).float()

    def clear(self) -> None:
        """Free the rows of steps whose statistics are not wanted."""
        self._small = []

    def _rows_of(self, segments: list[int]) -> Callable[[int], Tensor]:
        """A reader of these outputs of the same shape in the first ``rows`` rows: ``rows ->
        (rows, len(segments), *shape)``, a view of the rows when they lie at equal distances (a
        copy otherwise)."""
        starts, shape = [self.chunks.starts[s] for s in segments], self.shapes[segments[0]]
        spacing = set(np.diff(starts).tolist())
        if len(spacing) <= 1:
            strides = [int(np.prod(shape[d + 1 :])) for d in range(len(shape))]
            step = spacing.pop() if spacing else 0
            size, stride = (self.capacity, len(starts), *shape), (self.chunks.total, step, *strides)
            view = self._values.as_strided(size, stride, starts[0])
            return lambda rows: view[:rows]
        views = [
            self._values[:, a : a + self.chunks.numels[s]].view(self.capacity, *shape)
            for a, s in zip(starts, segments, strict=True)
        ]
        return lambda rows: torch.stack([v[:rows] for v in views], dim=1)

    # ------------------------------------------------------------------------- on the host
    def values(self, host: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Scalars ``(steps, len(tags))`` and histograms ``(steps, segments, 3 + bins)`` (number of
        values, sum, sum of squares, counts) of several steps at once; ``host`` holds each tensor of
        ``statistics`` as a ``(steps, size)`` array."""
        steps, segments = len(host["moments"]), self.segments
        # per segment: slot 0 counts NaN and Inf, then the bins; the counts arrive cumulated
        total = host["cumulative"].reshape(steps, segments, -1)
        before = np.zeros((steps, segments))
        before[:, 1:] = total[:, :-1, -1]
        nonfinite = (total[:, :, 0] - before).ravel()
        cdf = (total[:, :, 1:] - total[:, :, :1]).reshape(steps * segments, -1)
        n = cdf[:, -1]
        moments = self.chunks.per_tensor(np.asarray(host["moments"], np.float64).reshape(steps, 2, -1))
        sums, squares = moments[:, 0].ravel(), moments[:, 1].ravel()
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
            bn, state = np.asarray(host["bn_moments"], np.float64), np.asarray(host["bn_state"], np.float64)
            drift = stats.batchnorm_drift(
                bn[:, self._bn_sum_index],
                bn[:, self._bn_square_index],
                self._per_channel,
                state[:, self._running_mean],
                state[:, self._running_var],
                state[:, self._momentum],
                self._eps,
            )
            columns.append(stats.group_means(np.stack(drift, axis=2), self.channels, axis=1).reshape(steps, -1))
        if self.affine:
            gamma_beta = np.stack([state[:, self._gamma], state[:, self._beta]], axis=2)
            columns.append(stats.group_means(gamma_beta, self.affine_sizes, axis=1).reshape(steps, -1))
        histograms = np.column_stack([n, sums, squares, stats.coarsen(cdf, FINE)])
        return np.concatenate(columns, axis=1), histograms.reshape(steps, segments, -1)


def _stack(tensors: list[Tensor]) -> Tensor:
    return tensors[0][None] if len(tensors) == 1 else torch.stack(tensors)


def _index(positions: np.ndarray) -> slice | np.ndarray:
    """``positions`` as a slice when they run without a gap (a view instead of a copy)."""
    if len(positions) and np.array_equal(positions, np.arange(positions[0], positions[0] + len(positions))):
        return slice(int(positions[0]), int(positions[0]) + len(positions))
    return positions


def _positions(starts: Sequence[int], sizes: Sequence[int]) -> np.ndarray:
    """The positions ``start + [0, size)`` of each run, end to end."""
    return np.concatenate([np.arange(n) + start for start, n in zip(starts, sizes, strict=True)] or [[]]).astype(
        np.int64
    )
