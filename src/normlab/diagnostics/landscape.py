"""The optimization-landscape probes as a Lightning callback: opt-in, each at its own cadence."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from normlab.diagnostics.geometry import covariate_shift, walk_along_gradient
from normlab.diagnostics.hessian import top_hessian_eigenvalue
from normlab.diagnostics.sandbox import LossFn, sandboxed, training_step_loss
from normlab.diagnostics.selection import display_names
from normlab.diagnostics.summary import merge_json
from normlab.errors import ConfigError

INSTRUMENTS = ("loss_variation", "grad_predictiveness", "beta_smoothness", "ics", "sharpness")
_NEED_GRADIENTS = {"grad_predictiveness", "beta_smoothness"}
_ALONG_GRADIENT = {"loss_variation", *_NEED_GRADIENTS}
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LayerNorm, nn.GroupNorm)
_NORMS += (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
# The tag of each instrument that goes into the HParams tab.
_HEADLINE = {
    "loss_variation": "landscape/loss_variation/range",
    "grad_predictiveness": "landscape/grad_predictiveness/max",
    "beta_smoothness": "landscape/beta_smoothness",
    "sharpness": "landscape/sharpness",
}


class LandscapeProbes(L.Callback):
    """Measure the loss landscape around the weights on the current training batch.

    Each instrument runs every N optimizer steps (step 0 included) and is off when N is 0. All
    of them evaluate the loss of the batch just trained on, at the weights the optimizer is about
    to update, and leave parameters, ``.grad``, buffers (BN running statistics), metric states,
    the optimizer and every random generator exactly as they found them. A step's scalars are
    written together once it ends, and the latest value of each goes to ``summary.json`` under
    ``landscape`` (with the history), which the sweep report reads.

    Args:
        loss_variation: cadence of the loss at ``w - eta g`` over the step sizes ``eta``.
        grad_predictiveness: cadence of ``||grad L(w - eta g) - g||`` over the step sizes.
        beta_smoothness: cadence of ``max_eta ||grad L(w - eta g) - g|| / ||eta g||``.
        ics: cadence of the internal covariate shift: per layer, the change of its gradient when
            the layers before it take the update the optimizer just made (Santurkar et al. 2018).
        sharpness: cadence of the top Hessian eigenvalue, by power iteration.
        lr_multiples: the step sizes, as multiples of the current learning rate (of the first
            parameter group). Default 0.5, 1, ..., 4.
        power_iterations: most Hessian-vector products per sharpness estimate (default 20).
        tolerance: the sharpness estimate stops when it changes by less than this fraction.
        ics_layers: module names (as in ``named_modules()`` of the LightningModule) whose
            covariate shift is measured; default: every module owning parameters that is not a
            normalization layer, in registration order, which must be the forward order.
        loss_fn: ``loss_fn(module, batch) -> loss``; default: the loss ``training_step`` returns
            (or its ``loss`` entry), evaluated with ``self.log`` muted.
        summary_path: JSON file for the final values; default ``summary.json`` in ``trainer.log_dir``.

    Raises:
        ValueError: a cadence below 0, no or non-positive ``lr_multiples``, ``power_iterations``
            below 1 or ``tolerance`` not positive.
        ConfigError: at setup, an unknown name in ``ics_layers``, or manual optimization without a
            ``loss_fn``; during training, a ``training_step`` that returns no loss.

    Example::

        probes = LandscapeProbes(grad_predictiveness=100, sharpness=500)
        Trainer(callbacks=[probes])

    Logged (``<layer>`` without the module's first name component when all layers share it,
    e.g. ``layer2.fc`` for ``net.layer2.fc``):
        ``landscape/loss_variation/min|max|range``, ``landscape/grad_predictiveness/min|max``,
        ``landscape/beta_smoothness``, ``landscape/ics/<layer>/l2``, ``landscape/ics/<layer>/cos``,
        ``landscape/sharpness``, ``landscape/sharpness_2_over_lr``, ``landscape/sharpness_iterations``,
        ``landscape/time_ms/along_gradient|ics|sharpness`` (the three share one walk along the
        gradient, timed once).
    """

    def __init__(
        self,
        loss_variation: int = 0,
        grad_predictiveness: int = 0,
        beta_smoothness: int = 0,
        ics: int = 0,
        sharpness: int = 0,
        lr_multiples: Sequence[float] = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0),
        power_iterations: int = 20,
        tolerance: float = 1e-3,
        ics_layers: Sequence[str] | None = None,
        loss_fn: LossFn | None = None,
        summary_path: str | None = None,
    ) -> None:
        self.every = dict(
            zip(INSTRUMENTS, (loss_variation, grad_predictiveness, beta_smoothness, ics, sharpness), strict=True)
        )
        bad = {k: v for k, v in self.every.items() if not isinstance(v, int) or v < 0}
        if bad:
            raise ValueError(f"cadences must be whole numbers of steps >= 0 (0 = off), got {bad}")
        if not lr_multiples or any(m <= 0 for m in lr_multiples):
            raise ValueError(f"lr_multiples must be positive multiples of the learning rate, got {list(lr_multiples)}")
        if power_iterations < 1:
            raise ValueError(f"power_iterations must be >= 1, got {power_iterations}")
        if not tolerance > 0:
            raise ValueError(f"tolerance must be > 0, got {tolerance}")
        self.lr_multiples = [float(m) for m in lr_multiples]
        self.power_iterations = power_iterations
        self.tolerance = tolerance
        self.ics_layers = list(ics_layers) if ics_layers is not None else None
        self.loss_fn = loss_fn
        self.summary_path = summary_path
        self._summary: Path | None = None
        self._batch: tuple[Any, int] | None = None
        self._step: int | None = None  # the step whose probes are under way
        self._metrics: dict[str, float] = {}
        self._before: list[Tensor] | None = None  # weights before the update, for the covariate shift
        self._history: dict[str, list[list[float]]] = {}  # tag -> [[step, value], ...]

    @property
    def hparam_metrics(self) -> list[str]:
        return [tag for name, tag in _HEADLINE.items() if self.every[name]]

    # ------------------------------------------------------------------------- hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self.loss_fn is None and not pl_module.automatic_optimization:
            raise ConfigError(
                "the landscape probes cannot call the training_step of a manually optimized module "
                "(it steps the optimizer); give them a loss_fn(module, batch)"
            )
        if self.ics_layers is not None:
            _layer_indices(pl_module, self.ics_layers)  # fails now on a misspelt name
        log_dir = trainer.log_dir or trainer.default_root_dir  # log_dir is called on every rank
        self._summary = Path(self.summary_path) if self.summary_path else Path(log_dir) / "summary.json"

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch = (batch, batch_idx)

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        step = trainer.global_step
        due = self._due(step)
        if not due or self._batch is None or self._step == step:
            return
        self._step = step
        lr = optimizer.param_groups[0]["lr"]
        params = _parameters(pl_module)
        if "sharpness" in due:
            self._metrics |= self._sharpness(trainer, pl_module, params, lr, step)
        if due & _ALONG_GRADIENT:
            self._metrics |= self._walk(trainer, pl_module, params, lr, due)
        if "ics" in due:
            self._before = [p.detach().clone() for p in params]

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._step is None or not (self._metrics or self._before):
            return
        if self._before is not None:
            self._metrics |= self._covariate_shift(trainer, pl_module)
            self._before = None
        self._publish(trainer, self._step, self._metrics)
        self._metrics = {}

    def state_dict(self) -> dict[str, Any]:
        return {"history": self._history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._history = state_dict["history"]

    # ------------------------------------------------------------------------- instruments
    def _due(self, step: int) -> set[str]:
        return {name for name, every in self.every.items() if every and step % every == 0}

    def _walk(
        self, trainer: L.Trainer, pl_module: L.LightningModule, params: list[Tensor], lr: float, due: set[str]
    ) -> dict[str, float]:
        start = time.perf_counter()
        with self._batch_loss(trainer, pl_module) as loss:
            walk = walk_along_gradient(loss, params, [m * lr for m in self.lr_multiples], bool(due & _NEED_GRADIENTS))
        out = {"time_ms/along_gradient": 1000 * (time.perf_counter() - start)}
        if "loss_variation" in due:
            out |= {f"loss_variation/{k}": v for k, v in walk.loss_variation().items()}
        if "grad_predictiveness" in due:
            out |= {f"grad_predictiveness/{k}": v for k, v in walk.grad_predictiveness().items()}
        if "beta_smoothness" in due:
            out["beta_smoothness"] = walk.beta_smoothness()
        return out

    def _sharpness(
        self, trainer: L.Trainer, pl_module: L.LightningModule, params: list[Tensor], lr: float, step: int
    ) -> dict[str, float]:
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(step)  # a start vector of its own: global RNG untouched
        with self._batch_loss(trainer, pl_module) as loss:
            eigen = top_hessian_eigenvalue(loss, params, self.power_iterations, self.tolerance, generator)
        return {
            "sharpness": eigen.value,
            "sharpness_2_over_lr": 2 / lr,
            "sharpness_iterations": eigen.iterations,
            "time_ms/sharpness": 1000 * (time.perf_counter() - start),
        }

    def _covariate_shift(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        start = time.perf_counter()
        layers = _layer_indices(pl_module, self.ics_layers)
        with self._batch_loss(trainer, pl_module) as loss:
            shifts = covariate_shift(loss, _parameters(pl_module), self._before, layers)
        shown = dict(zip(layers, display_names(list(layers)), strict=True))
        out = {}
        for name, shift in shifts.items():
            out |= {f"ics/{shown[name]}/l2": shift.l2, f"ics/{shown[name]}/cos": shift.cos}
        out["time_ms/ics"] = 1000 * (time.perf_counter() - start)
        return out

    @contextmanager
    def _batch_loss(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Iterator[Callable[[], Tensor]]:
        """A closure for the loss of the current batch, inside the sandbox and the training precision."""
        batch, batch_idx = self._batch
        with torch.enable_grad(), trainer.precision_plugin.train_step_context(), sandboxed(pl_module) as rewind:

            def loss() -> Tensor:
                rewind()  # same dropout masks at every evaluation
                if self.loss_fn is not None:
                    return self.loss_fn(pl_module, batch)
                return training_step_loss(pl_module, batch, batch_idx)

            yield loss

    # ------------------------------------------------------------------------- output
    def _publish(self, trainer: L.Trainer, step: int, metrics: dict[str, float]) -> None:
        for logger in trainer.loggers:
            logger.log_metrics({f"landscape/{k}": v for k, v in metrics.items()}, step=step)
        for name, value in metrics.items():
            self._history.setdefault(name, []).append([step, _finite_or_none(value)])
        if trainer.is_global_zero and self._summary is not None:
            final = {name: points[-1][1] for name, points in self._history.items()}
            merge_json(self._summary, {"landscape": {"step": step, "final": final, "history": self._history}})


def _parameters(module: nn.Module) -> list[Tensor]:
    return [p for p in module.parameters() if p.requires_grad]


def _layer_indices(module: nn.Module, names: Sequence[str] | None) -> dict[str, list[int]]:
    """Layer name -> indices of its parameters in ``_parameters(module)`` (registration order)."""
    index = {id(p): i for i, p in enumerate(_parameters(module))}
    if names is None:
        found = {
            name: [index[id(p)] for p in m.parameters(recurse=False) if id(p) in index]
            for name, m in module.named_modules()
            if name and not isinstance(m, _NORMS)  # the root's own parameters come first: before every layer
        }
        return {name: idx for name, idx in found.items() if idx}
    modules = dict(module.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        known = list(_layer_indices(module, None))
        raise ConfigError(f"ics_layers={list(names)}: no module named {unknown}; layers with weights: {known}")
    out = {n: [index[id(p)] for p in modules[n].parameters() if id(p) in index] for n in names}
    empty = [n for n, idx in out.items() if not idx]
    if empty:
        raise ConfigError(f"ics_layers={list(names)}: {empty} have no trainable parameters")
    return out


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no NaN
