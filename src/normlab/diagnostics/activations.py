"""``ActivationStatistics``: the distribution of every watched module's output, on logging steps."""

from __future__ import annotations

import functools
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
from normlab.diagnostics.selection import SATURATING, Selection, Watched, select_modules


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
        self._recorded_step = -1

    @property
    def watched(self) -> list[Watched]:
        return self.selection.watched

    # ------------------------------------------------------------------------- hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        self.selection = select_modules(pl_module, self.types, self.include, self.exclude, self.max_modules)
        self.recorder = ActivationRecorder(self.watched, self.sample_size)
        self._ranges, self._fired, self._recorded_step, self.last = dict(self._restored), set(), -1, None
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
        lengths = torch.tensor([m.sample.numel() for m in found], device=x.device)
        if self._gathers(trainer):  # every rank's samples, padded to one shape (a last batch may be smaller)
            x = torch.nn.functional.pad(x, (0, self.sample_size - x.shape[1]), value=float("nan"))
            x = trainer.strategy.all_gather(x).transpose(0, 1).reshape(len(found), -1)
            lengths = trainer.strategy.reduce(lengths, reduce_op="sum")
        self._fix_ranges(indices, x)
        ranges = [self._ranges.get(self.watched[i].name, (-1.0, 1.0)) for i in indices]
        flags = [m.finite for m in found if m.finite is not None]
        raw = [(row, key, value) for row, m in enumerate(found) for key, value in m.extras.items()]
        parts = {
            "moments": math_.moments(x, lengths),
            "fine": math_.fine_histogram(x, torch.tensor(ranges, device=x.device), self.bins * math_.FINE),
            "finite": torch.stack(flags) if flags else x.new_zeros(0),
            **{f"{row}.{key}": value for row, key, value in raw},
        }
        host = _to_host(parts)  # the one copy of this step
        host["ranges"] = np.asarray(ranges, np.float64)
        host["percentiles"] = self._percentiles(x, host)
        return self._tags(indices, found, host)

    def _percentiles(self, x: Tensor, host: dict[str, np.ndarray]) -> np.ndarray:
        """Percentiles from the fine bins, and by sorting the rows where those cannot be trusted
        (see ``activation_math.binned_percentiles``): a second copy, on such steps only."""
        pct, ok = math_.binned_percentiles(host["fine"], host["ranges"], self.percentiles)
        rows = np.flatnonzero(~ok & (host["moments"][:, 0] > 0))
        if len(rows):
            longest = int((host["moments"][rows, 0] + host["moments"][rows, 1]).max())
            picked = x[torch.as_tensor(rows, device=x.device), :longest]
            pct[rows] = math_.exact_percentiles(picked, self.percentiles).cpu().numpy()
        return pct

    def _tags(self, indices: list[int], found: list[Measurement], host: dict[str, np.ndarray]):
        scalars: dict[str, float] = {}
        histograms, finite, flags = {}, [], iter(host["finite"].tolist())
        counts = math_.coarsen(host["fine"], math_.FINE)
        for row, (i, m) in enumerate(zip(indices, found, strict=True)):
            w, stats = self.watched[i], dict(zip(math_.MOMENTS, host["moments"][row].tolist(), strict=True))
            tag = f"act/{w.name}"
            percentiles = host["percentiles"][row].tolist()
            scalars.update({f"{tag}/p{p:g}": v for p, v in zip(self.percentiles, percentiles, strict=True)})
            scalars[f"{tag}/mean"], scalars[f"{tag}/std"] = stats["mean"], stats["std"]
            # counted on the sample: scaled to the whole output when it is larger
            scalars[f"{tag}/nonfinite"] = stats["nonfinite"] * m.numel / m.sample.numel()
            if w.saturating:
                scalars[f"{tag}/saturated"] = float(
                    math_.saturated_fraction(host["fine"][row : row + 1], self.saturation_threshold)[0]
                )
            finite.append(stats["nonfinite"] == 0 if m.finite is None else next(flags) > 0)
            raw = {key: host[f"{row}.{key}"] for key in m.extras}
            for key, value in math_.role_scalars(raw).items():
                scalars[self._extra_tag(i, key)] = value
            edges = self._edges(self._ranges.get(w.name, (-1.0, 1.0)))
            histograms[tag] = Histogram(edges, counts[row], stats["count"], stats["sum"], stats["sum_squares"])
        return scalars, histograms, finite

    @functools.lru_cache(maxsize=256)  # noqa: B019 (a callback lives as long as its run)
    def _edges(self, bounds: tuple[float, float]) -> np.ndarray:
        return np.asarray(math_.histogram_edges(*bounds, self.bins))

    def _extra_tag(self, index: int, key: str) -> str:
        w = self.watched[index]
        if key == "dead":
            return f"act/{w.name}/dead"
        return f"{'bn' if w.batchnorm else 'norm'}/{w.name}/{key}"

    def _fix_ranges(self, indices: list[int], x: Tensor) -> None:
        """Give each module its histogram range the first time its output says something (a host read
        on the first logging steps only)."""
        missing = [row for row, i in enumerate(indices) if self.watched[i].name not in self._ranges]
        if not missing:
            return
        rows = torch.tensor(missing, device=x.device)
        extremes = math_.exact_percentiles(x[rows], [0.1, 99.9]).tolist() if self.hist_range is None else []
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


def _to_host(parts: dict[str, Tensor]) -> dict[str, np.ndarray]:
    """Device tensors brought to the host in one copy, each in its shape, as float64."""
    flat = torch.cat([t.reshape(-1).to(torch.float64) for t in parts.values()]).cpu().numpy()
    out, offset = {}, 0
    for key, tensor in parts.items():
        out[key] = flat[offset : offset + tensor.numel()].reshape(tensor.shape)
        offset += tensor.numel()
    return out
