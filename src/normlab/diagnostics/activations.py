"""``ActivationStatistics``: the distribution of every watched module's output, on logging steps."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from normlab.diagnostics import activation_math as math_
from normlab.diagnostics.base import DiagnosticsCallback
from normlab.diagnostics.output import Histogram, use_fast_checksums
from normlab.diagnostics.recording import ActivationRecorder, Measurement
from normlab.diagnostics.sample_statistics import SampleStatistics, gather_ranks, summarize
from normlab.diagnostics.selection import SATURATING, Selection, Watched, select_modules


@dataclass(frozen=True)
class TagNames:
    """A watched module's tags (``act/<name>/...``), made once."""

    histogram: str
    percentiles: tuple[str, ...]
    mean: str
    std: str
    nonfinite: str
    saturated: str


@dataclass
class StepOutputs:
    """Whether each watched module's output was finite on a logging step, in the order they ran."""

    step: int
    finite: list[tuple[str, bool]]


class ActivationStatistics(DiagnosticsCallback):
    """Histograms, percentiles, moments and health of the outputs of a model's modules.

    On each logging step the watched modules' outputs are measured as they leave the module
    (``recording.py``) and summarized together on their device (``activation_math.py``); one copy
    per logging step brings the numbers to the host. Percentiles are exact on outputs of up to
    ``sample_size`` values and read from a fixed random sample of larger ones.

    Args:
        log_every_n_steps, dense_every_n_steps, dense_until_step: the cadence (``Cadence``).
        types: class names to watch instead of the default roles (weight owners, normalization
            layers, activations, attention and transformer blocks). Default: by role.
        include, exclude: ``fnmatch`` patterns of module names, as the tags show them.
        max_modules: watch at most this many, spread evenly over the model; 0: no limit.
        bins: histogram bins per module.
        hist_range: ``[low, high]`` of every histogram. Default: per module, fixed at its first
            logging step (a power of two above its largest values), so a run's histograms stay
            comparable step by step. Sigmoid and tanh outputs use their own bounds.
        percentiles: percentiles logged per module (Ioffe & Szegedy's Figure 1 shows 15, 50, 85).
        saturation_threshold: a sigmoid or tanh output is saturated beyond this fraction of the
            way from the middle of its range to either bound.
        sample_size: values of each output the statistics read (all of a smaller output).
        reduce_histograms: under data parallelism, gather every rank's samples first.
        fast_checksums: let TensorBoard checksum its records in C (``output.use_fast_checksums``).
    """

    def __init__(
        self,
        log_every_n_steps: int = 50,
        dense_every_n_steps: int = 10,
        dense_until_step: int = 50,
        types: Sequence[str] | None = None,
        include: Sequence[str] = ("*",),
        exclude: Sequence[str] = (),
        max_modules: int = 64,
        bins: int = 80,
        hist_range: Sequence[float] | None = None,
        percentiles: Sequence[float] = (15, 50, 85),
        saturation_threshold: float = 0.95,
        sample_size: int = 16384,
        reduce_histograms: bool = True,
        fast_checksums: bool = True,
    ) -> None:
        super().__init__(log_every_n_steps, dense_every_n_steps, dense_until_step)
        if bins < 1 or sample_size < 1 or max_modules < 0:
            raise ValueError(
                f"bins and sample_size must be >= 1 and max_modules >= 0, got {bins}, {sample_size}, {max_modules}"
            )
        if hist_range is not None and (len(hist_range) != 2 or not hist_range[0] < hist_range[1]):
            raise ValueError(f"hist_range must be [low, high] with low < high, got {list(hist_range)}")
        if not all(0 <= q <= 100 for q in percentiles):
            raise ValueError(f"percentiles must lie in [0, 100], got {list(percentiles)}")
        if not 0 < saturation_threshold < 1:
            raise ValueError(f"saturation_threshold must lie in (0, 1), got {saturation_threshold}")
        self.types = None if types is None else list(types)
        self.include, self.exclude, self.max_modules = list(include), list(exclude), max_modules
        self.bins, self.sample_size = bins, sample_size
        self.hist_range = None if hist_range is None else (float(hist_range[0]), float(hist_range[1]))
        self.percentiles = sorted(float(q) for q in percentiles)
        self.saturation_threshold = saturation_threshold
        self.reduce_histograms, self.fast_checksums = reduce_histograms, fast_checksums
        self.selection = Selection([])
        self.recorder = ActivationRecorder([], sample_size)
        self.last: StepOutputs | None = None  # the latest logging step's finiteness, for DivergenceMonitor
        self._ranges: dict[str, tuple[float, float]] = {}  # by module name; kept in checkpoints
        self._restored: dict[str, tuple[float, float]] = {}
        self._fired: set[int] = set()
        self._names: dict = {}  # tags by module index (and statistic), made once per run
        self._recorded_step = -1

    @property
    def watched(self) -> list[Watched]:
        return self.selection.watched

    def busy(self) -> bool:
        return self.recorder.attached

    # ------------------------------------------------------------------------- hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        self.selection = select_modules(pl_module, self.types, self.include, self.exclude, self.max_modules)
        self.recorder = ActivationRecorder(self.watched, self.sample_size)
        self._ranges, self._fired, self._recorded_step, self.last = dict(self._restored), set(), -1, None
        self._names = {}
        if self.selection.left_out.get("under nn.DataParallel"):
            rank_zero_warn(
                f"{type(self).__name__}: the modules under nn.DataParallel are not watched (it copies them into "
                "replicas at every forward pass); the other modules, weights and gradients are"
            )
        if self._logging and self.fast_checksums:
            use_fast_checksums()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rank_zero_info(f"{type(self).__name__}: {self.selection.describe()}")
        super().on_train_start(trainer, pl_module)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step != self._recorded_step and self.is_logging_step(step) and self._computes(trainer) and self.watched:
            self._recorded_step = step  # the first micro-batch of an accumulated step
            self.recorder.attach()

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        if self.recorder.attached:  # the forward pass of a logging step is over
            self._finish(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if self.recorder.attached:  # a step without a backward pass
            self._finish(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.recorder.detach()
        silent = [w.name for i, w in enumerate(self.watched) if i not in self._fired]
        if silent and self._recorded_step >= 0:
            rank_zero_warn(
                f"{type(self).__name__}: {len(silent)} watched modules never produced an output (called "
                f"functionally, or not at all): {', '.join(silent[:8])}{', ...' if len(silent) > 8 else ''}"
            )

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.recorder.detach()  # give the modules back their forward

    def _computes(self, trainer: L.Trainer) -> bool:
        # every rank computes when samples are gathered across ranks; only rank zero writes
        return self._logging and (trainer.is_global_zero or self._gathers(trainer))

    def state_dict(self) -> dict[str, Any]:
        """The histogram ranges: a resumed run bins as the run it continues did."""
        return {"ranges": {name: list(bounds) for name, bounds in self._ranges.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = {name: tuple(bounds) for name, bounds in state_dict.get("ranges", {}).items()}
        self._ranges.update(self._restored)

    def _gathers(self, trainer: L.Trainer) -> bool:
        return self.reduce_histograms and trainer.world_size > 1

    # ------------------------------------------------------------------------- statistics
    @torch.no_grad()
    def _finish(self, trainer: L.Trainer) -> None:
        self.recorder.detach()
        measured = self.recorder.measured
        self.recorder.measured = {}
        if not measured:
            rank_zero_warn(
                f"{type(self).__name__}: none of the watched modules ran while recorded (a model traced or "
                "scripted before training runs without the recording); activation statistics are off"
            )
            self.selection = Selection([])
            return
        self._fired.update(measured)
        scalars, histograms, finite = self._statistics(trainer, measured)
        names = [self.watched[i].name for i in measured]
        self.last = StepOutputs(trainer.global_step, list(zip(names, finite, strict=True)))
        if self.writes(trainer):
            self.outputs.write(trainer.global_step, scalars, histograms)

    def _statistics(self, trainer: L.Trainer, measured: dict[int, Measurement]):
        """Scalars and histograms by tag, and per module whether its whole output was finite."""
        indices, found = list(measured), list(measured.values())
        x = math_.stack_samples([m.sample for m in found])
        weights = self._padding(tuple(m.sample.numel() for m in found), x.device)
        if self._gathers(trainer):  # every rank's samples, padded to one shape (a last batch may be smaller)
            x, weights = gather_ranks(trainer.strategy, x, weights, self.sample_size)
        self._fix_ranges(indices, x, weights)
        bounds = tuple(self._ranges.get(self.watched[i].name, (-1.0, 1.0)) for i in indices)
        totals = [m.total for m in found if m.total is not None]
        extras = {f"{row}.{key}": value for row, m in enumerate(found) for key, value in m.extras.items()}
        if totals:
            extras["totals"] = torch.stack(totals)
        stats = summarize(
            x, bounds, self.bins, self.percentiles, self.saturation_threshold, weights, extras,
            ranges=self._range_tensor(bounds, x.device),
        )  # fmt: skip
        return self._tags(indices, found, bounds, stats)

    def _tags(self, indices: list[int], found: list[Measurement], bounds: tuple, stats: SampleStatistics):
        scalars: dict[str, float] = {}
        histograms, finite = {}, []
        totals = iter(stats.extras.get("totals", np.zeros(0)).tolist())
        percentiles, mean, std = stats.percentiles.tolist(), stats.mean.tolist(), stats.std.tolist()
        nonfinite, saturated = stats.nonfinite.tolist(), stats.saturated.tolist()
        for row, (i, m) in enumerate(zip(indices, found, strict=True)):
            w, tags = self.watched[i], self._tag_names(i)
            scalars.update(zip(tags.percentiles, percentiles[row], strict=True))
            scalars[tags.mean], scalars[tags.std] = mean[row], std[row]
            # counted on the sample: scaled to the whole output when it is larger
            scalars[tags.nonfinite] = nonfinite[row] * m.numel / m.sample.numel()
            if w.saturating:
                scalars[tags.saturated] = saturated[row]
            finite.append(nonfinite[row] == 0 if m.total is None else math.isfinite(next(totals)))
            raw = {key: stats.extras[f"{row}.{key}"] for key in m.extras}
            for key, value in math_.role_scalars(raw, **m.constants).items():
                scalars[self._extra_tag(i, key)] = value
            histograms[tags.histogram] = Histogram(
                self._edges(bounds[row]), stats.histogram[row], stats.count[row], stats.sum[row], stats.sum_squares[row]
            )
        return scalars, histograms, finite

    def _tag_names(self, index: int) -> TagNames:
        if index not in self._names:  # made once per module and run: a step writes hundreds of tags
            tag = f"act/{self.watched[index].name}"
            percentiles = tuple(f"{tag}/p{q:g}" for q in self.percentiles)
            self._names[index] = TagNames(
                tag, percentiles, f"{tag}/mean", f"{tag}/std", f"{tag}/nonfinite", f"{tag}/saturated"
            )
        return self._names[index]

    @functools.lru_cache(maxsize=256)  # noqa: B019
    def _edges(self, bounds: tuple[float, float]) -> np.ndarray:
        return np.asarray(math_.histogram_edges(*bounds, self.bins))

    @functools.lru_cache(maxsize=16)  # noqa: B019 (the ranges change only on the first logging steps)
    def _range_tensor(self, bounds: tuple, device: torch.device) -> Tensor:
        return torch.tensor(bounds, dtype=torch.float32, device=device)

    @functools.lru_cache(maxsize=16)  # noqa: B019 (the sample sizes of a model repeat from step to step)
    def _padding(self, lengths: tuple[int, ...], device: torch.device) -> Tensor | None:
        return math_.padding_weights(lengths, device)

    def _extra_tag(self, index: int, key: str) -> str:
        if (index, key) not in self._names:
            w = self.watched[index]
            prefix = "act" if key == "dead" else "bn" if w.batchnorm else "norm"
            self._names[index, key] = f"{prefix}/{w.name}/{key}"
        return self._names[index, key]

    def _fix_ranges(self, indices: list[int], x: Tensor, weights: Tensor | None) -> None:
        """Give each module its histogram range the first time its output says something (a host read
        on the first logging steps only)."""
        missing = [row for row, i in enumerate(indices) if self.watched[i].name not in self._ranges]
        if not missing:
            return
        rows = torch.tensor(missing, device=x.device)
        picked = None if weights is None else weights[rows]
        extremes = math_.exact_percentiles(x[rows], [0.1, 99.9], picked).tolist() if self.hist_range is None else []
        for n, row in enumerate(missing):
            w = self.watched[indices[row]]
            chosen = SATURATING.get(w.kind) or self.hist_range or math_.fixed_range(*extremes[n])
            if chosen is not None:
                self._ranges[w.name] = chosen

    # ------------------------------------------------------------------------- TensorBoard layout
    def layout(self) -> dict:
        """Each module's percentile band as a margin chart (Ioffe & Szegedy's Figure 1), and the
        health statistics of all modules in one chart each."""
        tags = [f"p{q:g}" for q in self.percentiles]
        layout: dict[str, dict] = {}
        if len(tags) >= 2:
            mid, lo, hi = tags[len(tags) // 2], tags[0], tags[-1]
            layout["activation percentiles"] = {
                w.name: ["Margin", [f"act/{w.name}/{mid}", f"act/{w.name}/{lo}", f"act/{w.name}/{hi}"]]
                for w in self.watched
            }
        layout["activation health"] = {
            f"{stat} per module": ["Multiline", [f"^act/.*/{re.escape(stat)}$"]]
            for stat in ("std", "saturated", "dead", "nonfinite")
        }
        return layout
