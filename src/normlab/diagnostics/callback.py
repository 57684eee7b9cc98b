"""``TrainingDiagnostics``: activation, weight and gradient health of any LightningModule, streamed to
TensorBoard at a cost low enough to leave on, with divergence detection and a run summary."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch import Tensor

from normlab.diagnostics.activations import ActivationLayout
from normlab.diagnostics.divergence import batch_finite, locate_gradient, locate_loss
from normlab.diagnostics.output import Histogram, Outputs, custom_scalars_layout, use_fast_checksums
from normlab.diagnostics.parameters import ParameterLayout
from normlab.diagnostics.stats import Bins
from normlab.diagnostics.summary import HPARAM_METRICS, RunSummary, merge_json
from normlab.diagnostics.watch import DEFAULT_TYPES, ActivationRecorder, parameter_layers, select_modules

ON_NONFINITE = ("stop", "warn")
# Logging steps whose numbers wait on the device, to be moved to the host and written together:
# at most this many, for at most this long.
WRITE_BATCH = 32
WRITE_SECONDS = 10.0  # TensorBoard itself flushes event files every 120 s


@dataclass
class _Step:
    """What one logging step has gathered, on the device until it is written."""

    step: int
    seconds: float = 0.0  # time its hooks took
    layout: ActivationLayout | None = None
    activations: tuple[dict[str, Tensor], int] | None = None  # its layout's statistics, (steps, size) each; its row
    params: dict[str, Any] | None = None
    loss: Tensor | None = None  # on the device until written

    def group(self) -> tuple:
        """Steps of one group have tensors of the same shapes: their numbers are derived together."""
        params = tuple(k for k, v in self.params.items() if isinstance(v, Tensor)) if self.params else ()
        present = self.params["present"] if self.params else None
        return (id(self.layout), present, params)


class TrainingDiagnostics(L.Callback):
    """Activation distributions, weight and gradient health and non-finite detection, in TensorBoard.

    Works with any LightningModule. On each logging step (counted in optimizer steps) the watched
    modules' forward is wrapped to record their outputs for that step only; every statistic is
    computed on the tensors' device with fixed histogram bins, the numbers of up to 32 logging steps
    reach the host in one copy, and each step's scalars and histograms are written as one
    TensorBoard event (rank zero). The loss is checked every step and the gradients on logging steps: the first
    non-finite one is traced to a step and a layer (``divergence.py``) and, by default, stops the
    run cleanly. At the end of training a summary goes to ``summary.json`` and to the HParams tab.

    Args:
        log_every_n_steps: cadence in optimizer steps (step 0 included). Default 50.
        dense_every_n_steps: a denser cadence for the first steps, where instability shows. Default 10.
        dense_until_step: the dense cadence applies to steps below this; 0 turns it off. Default 50.
        types: class names of the modules to watch (a subclass matches too). Default: linear and
            conv layers (pre-activations), batch norms and the usual activations.
        include: ``fnmatch`` patterns of module names to watch, as the tags show them. Default ``["*"]``.
        exclude: patterns of module names not to watch. Default none.
        bins: histogram bins per module; percentiles and saturation are read from bins twice as
            fine. Default 80.
        hist_range: ``[low, high]`` of the histograms; sigmoid and tanh outputs use their own
            bounds instead. Values outside fall into the edge bins. Default ``[-8, 8]``.
        percentiles: percentiles logged per module. Default ``[15, 50, 85]`` (Ioffe & Szegedy, Fig. 1).
        saturation_threshold: a sigmoid or tanh output is saturated beyond this fraction of the
            way from the middle of its range to either bound. Default 0.95.
        on_nonfinite: ``stop`` (stop the Trainer cleanly) or ``warn`` on the first non-finite loss
            or gradient. Default ``stop``.
        reduce_histograms: under data parallelism, sum the activation histograms and moments of
            all ranks before the statistics are taken. Default ``True``.
        val_metric: the validation accuracy metric of the summary. Default ``val/acc``.
        target_acc: accuracy whose first reaching gives ``steps_to_target``. Default 0.9.
        summary_path: JSON file of the run summary; default ``summary.json`` in ``trainer.log_dir``.

    Raises:
        ValueError: a cadence below 1 (below 0 for ``dense_until_step``), ``bins`` below 1, an
            empty or reversed ``hist_range``, a percentile outside [0, 100], a
            ``saturation_threshold`` outside (0, 1), or an unknown ``on_nonfinite``.

    Example::

        from lightning.pytorch import Trainer
        from lightning.pytorch.loggers import TensorBoardLogger
        from normlab.diagnostics import TrainingDiagnostics

        trainer = Trainer(logger=TensorBoardLogger("runs"), callbacks=[TrainingDiagnostics(log_every_n_steps=20)])

    Logged (``M`` a watched module, ``B`` a watched batch norm, ``L`` a layer owning parameters,
    named as in ``named_modules()`` without a first component they all share):
        ``act/M`` (histogram), ``act/M/p15|p50|p85`` (per ``percentiles``), ``act/M/mean``,
        ``act/M/std``, ``act/M/nonfinite``, ``act/M/saturated`` (sigmoid, tanh), ``act/M/dead``
        (ReLU); ``bn/B/batch_mean_drift``, ``bn/B/batch_var_drift``, ``bn/B/gamma_mean``,
        ``bn/B/beta_mean``; ``weight_norm/L``, ``grad_norm/L``, ``update_ratio/L``,
        ``grad_nonfinite/L``; ``grad_norm/global``, ``diag/loss``, ``diag/time_ms``; at the end
        ``summary/diverged``, ``summary/divergence_step``, ``summary/max_grad_norm``,
        ``summary/final_grad_norm``, ``summary/final_val_acc``, ``summary/best_val_acc``,
        ``summary/steps_to_target``.
    """

    def __init__(
        self,
        log_every_n_steps: int = 50,
        dense_every_n_steps: int = 10,
        dense_until_step: int = 50,
        types: Sequence[str] = DEFAULT_TYPES,
        include: Sequence[str] = ("*",),
        exclude: Sequence[str] = (),
        bins: int = 80,
        hist_range: Sequence[float] = (-8.0, 8.0),
        percentiles: Sequence[float] = (15, 50, 85),
        saturation_threshold: float = 0.95,
        on_nonfinite: str = "stop",
        reduce_histograms: bool = True,
        val_metric: str = "val/acc",
        target_acc: float = 0.9,
        summary_path: str | None = None,
        fast_checksums: bool = True,
    ) -> None:
        if log_every_n_steps < 1 or dense_every_n_steps < 1 or dense_until_step < 0:
            raise ValueError(
                "log_every_n_steps and dense_every_n_steps must be >= 1 and dense_until_step >= 0, got "
                f"{log_every_n_steps}, {dense_every_n_steps}, {dense_until_step}"
            )
        if len(hist_range) != 2:
            raise ValueError(f"hist_range must be [low, high], got {list(hist_range)}")
        self.bins = Bins(float(hist_range[0]), float(hist_range[1]), int(bins))  # checks range and count
        if not all(0 <= q <= 100 for q in percentiles):
            raise ValueError(f"percentiles must lie in [0, 100], got {list(percentiles)}")
        if not 0 < saturation_threshold < 1:
            raise ValueError(f"saturation_threshold must lie in (0, 1), got {saturation_threshold}")
        if on_nonfinite not in ON_NONFINITE:
            raise ValueError(f"on_nonfinite can be {ON_NONFINITE}, got {on_nonfinite!r}")
        self.log_every_n_steps = log_every_n_steps
        self.dense_every_n_steps = dense_every_n_steps
        self.dense_until_step = dense_until_step
        self.types = list(types)
        self.include, self.exclude = list(include), list(exclude)
        self.percentiles = sorted(float(q) for q in percentiles)
        self.saturation_threshold = saturation_threshold
        self.on_nonfinite = str(getattr(on_nonfinite, "value", on_nonfinite))  # a config enum arrives as such
        self.reduce_histograms = reduce_histograms
        self.val_metric = val_metric
        self.summary_path = summary_path
        self.fast_checksums = fast_checksums
        self.summary = RunSummary(target_acc=target_acc)
        self.hparam_metrics = list(HPARAM_METRICS)

        self._recorder = ActivationRecorder([])
        self._parameters = ParameterLayout([])
        self._layouts: dict[tuple, ActivationLayout] = {}
        self._last_layout: tuple[tuple[int, ...] | None, ActivationLayout | None] = (None, None)
        self._outputs: Outputs | None = None
        self._first_nonfinite: Tensor | None = None  # step of the first non-finite loss, on the device; -1: none
        self._pending: _Step | None = None  # the logging step under way
        self._binning: list[_Step] = []  # steps whose outputs wait in their layout's rows
        self._unwritten: list[_Step] = []
        self._unwritten_since = 0.0
        self._batch: Any = None
        self._scaler = False
        self._writing = False
        self._summary_file: Path | None = None

    def is_logging_step(self, step: int) -> bool:
        dense = step < self.dense_until_step and step % self.dense_every_n_steps == 0
        return dense or step % self.log_every_n_steps == 0

    # ------------------------------------------------------------------------- setup
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._recorder = ActivationRecorder(select_modules(pl_module, self.types, self.include, self.exclude))
        self._layouts, self._last_layout = {}, (None, None)  # a layout knows the modules of one model
        self._parameters = ParameterLayout(parameter_layers(pl_module))
        self._scaler = getattr(trainer.precision_plugin, "scaler", None) is not None
        self._writing = bool(trainer.loggers) and not trainer.fast_dev_run
        self._outputs = Outputs(trainer)
        if self._writing and self.fast_checksums:
            use_fast_checksums()
        self._first_nonfinite = None
        self._summary_file = Path(self.summary_path or run_directory(trainer) / "summary.json")
        if not trainer.loggers:
            rank_zero_warn("TrainingDiagnostics: no logger, so only divergence and summary.json are kept")
        if any(isinstance(m, torch.nn.DataParallel) for m in pl_module.modules()):
            rank_zero_warn(
                "TrainingDiagnostics: the modules under nn.DataParallel are not watched (it copies them into "
                "replicas at every forward pass); the other modules, weights and gradients are"
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._writing and trainer.is_global_zero:
            modules = [w.name for w in self._recorder.watched]
            layers = [layer.name for layer in self._parameters.layers]
            percentiles = [f"p{q:g}" for q in self.percentiles]
            self._outputs.custom_scalars(custom_scalars_layout(modules, percentiles, layers))

    def _loss_scale(self, trainer: L.Trainer) -> float:
        """The factor by which a GradScaler multiplied the loss handed to ``on_before_backward``."""
        return trainer.precision_plugin.scaler.get_scale() if self._scaler else 1.0

    def _computes(self, trainer: L.Trainer) -> bool:
        # every rank computes when histograms are summed across ranks; only rank zero writes
        return self._writing and (trainer.is_global_zero or self._reduces(trainer))

    def _reduces(self, trainer: L.Trainer) -> bool:
        return self.reduce_histograms and trainer.world_size > 1

    # ------------------------------------------------------------------------- per-step hooks
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch = batch
        step = trainer.global_step
        if self._pending is not None or not self.is_logging_step(step) or not self._computes(trainer):
            return
        start = time.perf_counter()
        self._pending = _Step(step)
        if self._recorder.watched:
            self._recorder.attach()
        self._pending.seconds += time.perf_counter() - start

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        record = self._pending
        if self._recorder.attached:  # the forward pass of a logging step is over
            start = time.perf_counter()
            self._capture_activations(trainer)
            record.seconds += time.perf_counter() - start
        loss = loss.detach()
        if record is not None and record.loss is None:
            record.loss = loss.float() / self._loss_scale(trainer)
        # no read from the device here: the first non-finite loss's step, and whether its batch was
        # finite, wait on the device until a logging step reads them
        step = trainer.global_step
        if self._first_nonfinite is None:
            self._first_nonfinite = torch.tensor([-1, 1], dtype=torch.int64, device=loss.device)
        first = self._first_nonfinite
        new = (first[0] < 0) & ~torch.isfinite(loss)
        torch.where(
            new,
            torch.stack([loss.new_tensor(step, dtype=torch.int64), batch_finite(self._batch, loss.device)]),
            first,
            out=first,
        )
        if record is not None and record.step == step:
            self._check_loss(trainer)

    def _check_loss(self, trainer: L.Trainer) -> None:
        """Read the first non-finite loss's step (on logging steps only) and trace it to a layer."""
        if self._first_nonfinite is None or self.summary.diverged:
            return
        bad, batch_ok = self._first_nonfinite.tolist()
        if bad < 0:
            return
        if bad == trainer.global_step:  # this step's recorded outputs are still at hand
            if self._pending is None and self._computes(trainer):  # keep this step's weights and gradients
                self._pending = _Step(bad)
            activations = self._activations_finite(bad)
        else:  # found after the fact: the weights tell which layer an update corrupted
            activations = []
        layer, source, back = locate_loss(bool(batch_ok), activations, self._parameters.layers)
        self._diverged(trainer, max(bad - back, 0), layer, source)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        record = self._pending
        if record is None or record.step != trainer.global_step or record.params is not None:
            return
        start = time.perf_counter()
        present = self._parameters.with_grad()
        if not present:
            self._parameters.close()  # the weights are still as the last logging step left them
            return
        record.params = self._parameters.before_step(present)
        grad_norm = self._parameters.grad_norm(record.params)
        self.summary.observe_grad_norm(grad_norm)
        if not math.isfinite(grad_norm):
            self._parameters.count_nonfinite(record.params)
            # under a GradScaler non-finite gradients are routine: the scaler skips that step
            if not self._scaler and not self.summary.diverged:
                finite = self._parameters.finite_layers(present)
                self._diverged(trainer, record.step, locate_gradient(self._parameters.layers, finite), "gradient")
        record.seconds += time.perf_counter() - start

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        record = self._pending
        if record is not None:
            start = time.perf_counter()
            if self._recorder.attached:  # a batch without a backward pass
                self._capture_activations(trainer)
            if trainer.global_step > record.step:  # the optimizer has stepped: the update is known
                self._check_loss(trainer)
                self._pending = None
                if record.params is not None:  # a logging step next takes the update with its own norms
                    self._parameters.after_step(record.params, wait=self.is_logging_step(trainer.global_step))
                if trainer.is_global_zero:
                    if not self._unwritten:
                        self._unwritten_since = time.perf_counter()
                    self._unwritten.append(record)
            record.seconds += time.perf_counter() - start
        if self._unwritten and (
            len(self._unwritten) >= WRITE_BATCH
            or time.perf_counter() - self._unwritten_since >= WRITE_SECONDS
            or self.summary.diverged
        ):
            self._write(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_loss(trainer)
        if self._unwritten:
            self._write(trainer)

    # ------------------------------------------------------------------------- statistics
    @torch.no_grad()
    def _capture_activations(self, trainer: L.Trainer) -> None:
        """Stop recording and hand the step's outputs to their layout, which bins those of a few
        steps together (all ranks at once when they sum their histograms)."""
        recorder, record = self._recorder, self._pending
        recorder.detach()
        if not recorder.outputs:
            rank_zero_warn(
                "TrainingDiagnostics: none of the watched modules ran while their outputs were recorded (a "
                "model traced or scripted before training runs without the recording); activation "
                "statistics are off for this run"
            )
            self._recorder = ActivationRecorder([])
            return
        indices = tuple(sorted(recorder.outputs))
        outputs = [recorder.outputs[i] for i in indices]
        bn_inputs = [recorder.bn_inputs[i] for i in indices if i in recorder.bn_inputs]
        state = recorder.bn_state()
        layout = self._layout(indices, outputs, bn_inputs, state)
        if layout.full:
            self._take_statistics(layout)
        layout.capture(outputs, bn_inputs, state)
        recorder.release()
        record.layout = layout
        self._binning.append(record)
        if self._reduces(trainer):
            self._take_statistics(layout, lambda t: trainer.strategy.reduce(t, reduce_op="sum"))

    def _take_statistics(self, layout: ActivationLayout, reduce: Callable[[Tensor], Tensor] | None = None) -> None:
        """Give the steps waiting in ``layout`` their activation tensors."""
        waiting = [r for r in self._binning if r.layout is layout]
        self._binning = [r for r in self._binning if r.layout is not layout]
        tensors = layout.statistics(reduce)
        for i, record in enumerate(waiting):
            record.activations = (tensors, i)

    def _binned(self, records: list[_Step]) -> None:
        """Take the statistics of every layout where one of ``records`` waits."""
        for layout in {
            id(r.layout): r.layout for r in records if r.layout is not None and r.activations is None
        }.values():
            self._take_statistics(layout)

    def _layout(
        self, indices: tuple[int, ...], outputs: list[Tensor], bn_inputs: list[Tensor], state: list[Tensor]
    ) -> ActivationLayout:
        """The layout of these modules' outputs, built on the first step that has their shapes
        (the batch-norm state of a recorder has the same shapes at every step)."""
        last_indices, last = self._last_layout
        if indices == last_indices and last.fits(outputs, bn_inputs):
            return last
        sources = ActivationLayout.sources(outputs, bn_inputs)
        key = (outputs[0].device, indices, tuple(o.shape for o in outputs), sources)
        layout = self._layouts.get(key)
        if layout is None:
            offsets = self._recorder.state_offsets()
            watched = [self._recorder.watched[i] for i in indices]
            segments = {s: offsets[i] for s, i in enumerate(indices) if i in offsets}
            layout = ActivationLayout(
                watched, outputs, sources, state, segments, self.bins, self.percentiles, self.saturation_threshold
            )
            self._layouts[key] = layout
        self._last_layout = (indices, layout)
        return layout

    def _activations_finite(self, step: int) -> list[tuple[str, bool]]:
        """Whether each watched module's output was finite on this step, in the order they ran
        (nothing when the step recorded none)."""
        record = self._pending
        if record is None or record.step != step or record.layout is None:
            return []
        self._binned([record])
        tensors, row = record.activations
        total = tensors["cumulative"][row].view(record.layout.segments, -1)
        before = torch.cat([total.new_zeros(1), total[:-1, -1]])
        finite = (total[:, 0] == before).tolist()  # nothing in slot 0: no NaN or Inf
        names = [w.name for w in self._recorder.watched]
        by_index = dict(zip(sorted(self._recorder.fired), finite, strict=True))
        return [(names[i], by_index[i]) for i in self._recorder.fired]

    # ------------------------------------------------------------------------- writing
    @torch.no_grad()
    def _write(self, trainer: L.Trainer) -> None:
        """Move the waiting steps' tensors to the host in one copy, derive their statistics group by
        group, and write one event per step."""
        records, self._unwritten = self._unwritten, []
        if not records:
            return
        self._parameters.close()
        self._binned(records)
        start = time.perf_counter()
        groups: dict[tuple, list[_Step]] = {}
        for record in records:
            groups.setdefault(record.group(), []).append(record)
        members = list(groups.values())
        device = [self._device_tensors(group) for group in members]
        derived = [
            (group, *self._group_values(group, host)) for group, host in zip(members, _to_host(device), strict=True)
        ]
        with_loss = [r for r in records if r.loss is not None]
        losses = torch.stack([r.loss for r in with_loss]).double().cpu().tolist() if with_loss else []
        loss_of = {r.step: value for r, value in zip(with_loss, losses, strict=True)}
        shared = (time.perf_counter() - start) / len(records)  # the host's work, split among the steps
        out: dict[int, tuple[dict[str, float], dict[str, Histogram]]] = {}
        for members, tags, table, histograms, specs in derived:
            for i, record in enumerate(members):
                scalars = dict(zip(tags, table[i].tolist(), strict=True))
                if record.step in loss_of:
                    scalars["diag/loss"] = loss_of[record.step]
                scalars["diag/time_ms"] = (record.seconds + shared) * 1000
                rows = histograms[i] if histograms is not None else []
                hists = {tag: Histogram(edges, h[3:], *h[:3]) for (tag, edges), h in zip(specs, rows, strict=True)}
                out[record.step] = (scalars, hists)
        for record in records:  # in step order: TensorBoard drops what follows a step that goes back
            self._outputs.write(record.step, *out[record.step])

    def _device_tensors(self, records: list[_Step]) -> dict[str, Tensor]:
        """The device tensors of steps of one group, ``(steps, size)`` each, by name."""
        first, out = records[0], {}
        if first.activations is not None:
            out.update({f"act.{k}": v for k, v in _activation_rows(records).items()})
        if first.params is not None:
            tensors = [k for k, v in first.params.items() if isinstance(v, Tensor)]
            out.update({f"params.{k}": torch.stack([r.params[k] for r in records]) for k in tensors})
        return out

    def _group_values(
        self, records: list[_Step], batch: dict[str, np.ndarray]
    ) -> tuple[list[str], np.ndarray, np.ndarray | None, list]:
        """Tags, scalars ``(steps, tags)``, histograms and their ``(tag, edges)`` of steps whose
        tensors have the same shapes."""
        first = records[0]
        tags: list[str] = []
        columns: list[np.ndarray] = []
        histograms, specs = None, []
        if first.params is not None:
            params = {k.split(".", 1)[1]: v for k, v in batch.items() if k.startswith("params.")}
            tags += self._parameters.tags
            columns.append(self._parameters.values(params, first.params["present"]))
        if first.activations is not None:
            act = {k.split(".", 1)[1]: v for k, v in batch.items() if k.startswith("act.")}
            values, histograms = first.layout.values(act)
            tags += first.layout.tags
            columns.append(values)
            specs = first.layout.histogram_specs
        table = np.concatenate(columns, axis=1) if columns else np.zeros((len(records), 0))
        return tags, table, histograms, specs

    # ------------------------------------------------------------------------- divergence
    def _diverged(self, trainer: L.Trainer, step: int, layer: str, source: str) -> None:
        self.summary.mark_diverged(step, layer, source)
        action = "stopping" if self.on_nonfinite == "stop" else "going on"
        if self.on_nonfinite == "stop":
            trainer.should_stop = True
        rank_zero_warn(
            f"non-finite {source} at step {step} in layer {layer}: {action} (on_nonfinite={self.on_nonfinite})"
        )

    # ------------------------------------------------------------------------- end of training
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        value = trainer.callback_metrics.get(self.val_metric)
        if value is not None:
            self.summary.observe_validation(float(value), trainer.global_step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._recorder.detach()
        self._check_loss(trainer)
        self._pending = None  # a step the optimizer never finished
        if self._unwritten:
            self._write(trainer)
        for record in self._binning:  # steps never written
            record.layout.clear()
        self._binning = []
        self.summary.global_step = trainer.global_step
        if trainer.fast_dev_run or self._summary_file is None:
            return
        self._write_summary(trainer)

    @rank_zero_only
    def _write_summary(self, trainer: L.Trainer) -> None:
        merge_json(self._summary_file, self.summary.as_dict())
        if self._writing:
            self._outputs.write(trainer.global_step, self.summary.hparam_scalars())
            self._outputs.flush()
        if self.summary.diverged:
            print(
                f"diverged at step {self.summary.divergence_step} in layer {self.summary.divergence_layer}", flush=True
            )

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._recorder.detach()  # an exception in a logging step's forward pass: give the modules back

    def state_dict(self) -> dict[str, Any]:
        return {"summary": self.summary.as_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.summary.load(state_dict.get("summary", {}))


def run_directory(trainer: L.Trainer) -> Path:
    """The run's own directory: a TensorBoard or CSV logger's version directory, else the Trainer's
    ``default_root_dir`` (W&B and MLflow keep their files in folders that many runs share)."""
    log_dir = trainer.log_dir  # a collective under DDP: resolved on every rank
    if trainer.loggers and isinstance(trainer.loggers[0], (TensorBoardLogger, CSVLogger)) and log_dir:
        return Path(log_dir)
    return Path(trainer.default_root_dir)


def _to_host(groups: list[dict[str, Tensor]]) -> list[dict[str, np.ndarray]]:
    """One device-to-host copy, in float64, of the ``(steps, size)`` tensors of several groups of steps."""
    tensors = [t for group in groups for t in group.values()]
    if not tensors:  # only losses
        return [{} for _ in groups]
    flat = torch.empty(sum(t.numel() for t in tensors), dtype=torch.float64, device=tensors[0].device)
    torch.cat([t.reshape(-1) for t in tensors], out=flat)
    flat = flat.cpu().numpy()
    out, offset = [], 0
    for group in groups:
        host = {}
        for key, t in group.items():
            host[key] = flat[offset : offset + t.numel()].reshape(t.shape)
            offset += t.numel()
        out.append(host)
    return out


def _activation_rows(records: list[_Step]) -> dict[str, Tensor]:
    """The records' rows of their layout's statistics, ``(records, size)`` each: the statistics of
    each few steps joined, then the records' rows picked (unless they are all the rows)."""
    batches: list[dict[str, Tensor]] = []
    starts: dict[int, int] = {}
    rows = []
    for record in records:
        tensors, row = record.activations
        if id(tensors) not in starts:
            starts[id(tensors)] = sum(len(b["moments"]) for b in batches)
            batches.append(tensors)
        rows.append(starts[id(tensors)] + row)
    joined = {k: batches[0][k] if len(batches) == 1 else torch.cat([b[k] for b in batches]) for k in batches[0]}
    if rows == list(range(len(joined["moments"]))):
        return joined
    index = torch.tensor(rows, device=joined["moments"].device)
    return {k: v.index_select(0, index) for k, v in joined.items()}
