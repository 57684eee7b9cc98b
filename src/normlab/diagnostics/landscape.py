"""The optimization-landscape probes as a Lightning callback: opt-in, each at its own cadence."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from normlab.diagnostics.geometry import covariate_shift, gradient, walk_along
from normlab.diagnostics.hessian import hessian_operator, top_eigenvalue
from normlab.diagnostics.layers import layer_indices, trainable_parameters
from normlab.diagnostics.run_summary import run_directory
from normlab.diagnostics.sandbox import LossFn, batch_loss
from normlab.diagnostics.selection import display_names
from normlab.diagnostics.stability import Stability, stability
from normlab.diagnostics.summary import merge_json
from normlab.diagnostics.update import Preview, PreviewError, preview_step
from normlab.errors import ConfigError

INSTRUMENTS = ("loss_variation", "grad_predictiveness", "beta_smoothness", "ics", "sharpness")
_NEED_GRADIENTS = {"grad_predictiveness", "beta_smoothness"}
_ALONG_UPDATE = {"loss_variation", *_NEED_GRADIENTS}
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

    The walks follow the update ``u`` the optimizer is about to make, its own direction and size
    (momentum, Adam's preconditioning and the trainer's gradient clipping included), computed by
    stepping a copy of the optimizer (``normlab.diagnostics.update``). An optimizer that cannot be
    copied and stepped without a closure (L-BFGS) gets plain gradient descent's ``-lr g``, with a
    warning. Sharpness is compared with the stability threshold of the optimizer
    (``normlab.diagnostics.stability``).

    Args:
        loss_variation: cadence of the loss at ``w + m u`` over the multiples ``m``.
        grad_predictiveness: cadence of ``||grad L(w + m u) - g||`` over the multiples.
        beta_smoothness: cadence of ``max_m ||grad L(w + m u) - g|| / ||m u||``.
        ics: cadence of the internal covariate shift: per layer, the change of its gradient when
            the layers before it take the update the optimizer just made (Santurkar et al. 2018).
        sharpness: cadence of the top Hessian eigenvalue, by power iteration, and for Adam of the
            preconditioned Hessian, each beside the optimizer's stability threshold.
        step_multiples: the multiples ``m`` of the optimizer's update. Default 0.5, 1, ..., 4.
        power_iterations: most Hessian-vector products per sharpness estimate (default 20).
        tolerance: the sharpness estimate stops when it changes by less than this fraction.
        ics_layers: module names (as in ``named_modules()`` of the LightningModule) whose
            covariate shift is measured; default: every module owning parameters that is not a
            normalization layer, in registration order, which must be the forward order.
        loss_fn: ``loss_fn(module, batch) -> loss``; default: the loss ``training_step`` returns
            (or its ``loss`` entry), evaluated with ``self.log`` muted.
        summary_path: JSON file for the final values; default ``summary.json`` in the run's own
            directory (``run_summary.run_directory``), whatever the logger.

    Raises:
        ValueError: a cadence below 0, no or non-positive ``step_multiples``, ``power_iterations``
            below 1 or ``tolerance`` not positive.
        ConfigError: at setup, an unknown name in ``ics_layers``, or manual optimization without a
            ``loss_fn``; during training, a ``training_step`` that returns no loss.

    Example::

        probes = LandscapeProbes(grad_predictiveness=100, sharpness=500)
        Trainer(callbacks=[probes])

    Logged (``<layer>`` without the module's first name component when all layers share it,
    e.g. ``layer2.fc`` for ``net.layer2.fc``):
        ``landscape/loss_variation/min|max|range``, ``landscape/grad_predictiveness/min|max``,
        ``landscape/beta_smoothness``, ``landscape/update_norm`` (``||u||``; the three share one
        walk), ``landscape/ics/<layer>/l2|cos``, ``landscape/sharpness``,
        ``landscape/preconditioned_sharpness`` (Adam), ``landscape/sharpness_threshold`` and
        ``landscape/sharpness_ratio`` (the fitting sharpness over it; absent where no threshold is
        known), ``landscape/sharpness_iterations``, ``landscape/time_ms/along_update|ics|sharpness``.
    """

    def __init__(
        self,
        loss_variation: int = 0,
        grad_predictiveness: int = 0,
        beta_smoothness: int = 0,
        ics: int = 0,
        sharpness: int = 0,
        step_multiples: Sequence[float] = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0),
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
        if not step_multiples or any(m <= 0 for m in step_multiples):
            raise ValueError(f"step_multiples must be positive multiples of the update, got {list(step_multiples)}")
        if power_iterations < 1:
            raise ValueError(f"power_iterations must be >= 1, got {power_iterations}")
        if not tolerance > 0:
            raise ValueError(f"tolerance must be > 0, got {tolerance}")
        self.step_multiples = [float(m) for m in step_multiples]
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
        self._said: set[str] = set()  # notes already given, each once
        self._rule: str | None = None  # the stability threshold's rule, for summary.json

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
            layer_indices(pl_module, self.ics_layers)  # fails now on a misspelt name
        self._summary = Path(self.summary_path or run_directory(trainer) / "summary.json")

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
        params = trainable_parameters(pl_module)
        preview = self._preview(trainer, pl_module, optimizer, params) if due - {"ics"} else None
        if "sharpness" in due:
            self._metrics |= self._sharpness(trainer, pl_module, params, preview, step)
        if due & _ALONG_UPDATE:
            lr = float(optimizer.param_groups[0]["lr"])
            self._metrics |= self._walk(trainer, pl_module, params, preview, lr, due)
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

    def _preview(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer, params: list[Tensor]
    ) -> Preview | None:
        """The update the optimizer is about to make, with the gradients clipped as the trainer will
        clip them (after this hook); ``None``, with a warning once, where it cannot be previewed."""

        def clip(shadow: torch.optim.Optimizer) -> None:
            if pl_module.automatic_optimization:  # Lightning clips only then
                val, algorithm = trainer.gradient_clip_val, trainer.gradient_clip_algorithm
                pl_module.configure_gradient_clipping(shadow, gradient_clip_val=val, gradient_clip_algorithm=algorithm)

        try:
            return preview_step(optimizer, params, clip)
        except PreviewError as error:
            self._say(f"landscape probes: {error}; they walk along -lr * g, plain gradient descent's step", warn=True)
            return None

    def _walk(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        params: list[Tensor],
        preview: Preview | None,
        lr: float,
        due: set[str],
    ) -> dict[str, float]:
        start = time.perf_counter()
        gradients = bool(due & _NEED_GRADIENTS)
        with self._batch_loss(trainer, pl_module) as loss:
            if preview is None:
                walk = walk_along(loss, params, None, [m * lr for m in self.step_multiples], gradients)
            else:
                walk = walk_along(loss, params, preview.delta, self.step_multiples, gradients)
        out = {"time_ms/along_update": 1000 * (time.perf_counter() - start)}
        if preview is not None:
            out["update_norm"] = walk.step_norm
        if "loss_variation" in due:
            out |= {f"loss_variation/{k}": v for k, v in walk.loss_variation().items()}
        if "grad_predictiveness" in due:
            out |= {f"grad_predictiveness/{k}": v for k, v in walk.grad_predictiveness().items()}
        if "beta_smoothness" in due:
            out["beta_smoothness"] = walk.beta_smoothness()
        return out

    def _sharpness(
        self, trainer: L.Trainer, pl_module: L.LightningModule, params: list[Tensor], preview: Preview | None, step: int
    ) -> dict[str, float]:
        start = time.perf_counter()
        fit = self._stability(preview)
        generator = torch.Generator().manual_seed(step)  # start vectors of its own: global RNG untouched
        with self._batch_loss(trainer, pl_module) as loss:
            grads = gradient(loss, params, create_graph=True)  # one graph for both eigenvalues
            eigen = self._top(hessian_operator(grads, params), params, generator)
            out = {"sharpness": eigen.value, "sharpness_iterations": eigen.iterations}
            edge = eigen.value
            if fit.preconditioner is not None:
                pre = self._top(hessian_operator(grads, params, fit.preconditioner), params, generator)
                out |= {
                    "preconditioned_sharpness": pre.value,
                    "sharpness_iterations": eigen.iterations + pre.iterations,
                }
                edge = pre.value
        if fit.threshold is not None:
            out |= {"sharpness_threshold": fit.threshold, "sharpness_ratio": edge / fit.threshold}
        out["time_ms/sharpness"] = 1000 * (time.perf_counter() - start)
        return out

    def _top(self, operator: Callable, params: list[Tensor], generator: torch.Generator):
        return top_eigenvalue(operator, params, self.power_iterations, self.tolerance, generator)

    def _stability(self, preview: Preview | None) -> Stability:
        """The optimizer's threshold, its rule said once (a warning where none is known)."""
        fit = (
            stability(preview)
            if preview is not None
            else Stability(None, None, "none, the update could not be previewed")
        )
        self._rule = fit.rule
        self._say(f"landscape probes: sharpness threshold: {fit.rule}", warn=fit.threshold is None)
        return fit

    def _say(self, message: str, warn: bool = False) -> None:
        if message not in self._said:
            self._said.add(message)
            (rank_zero_warn if warn else rank_zero_info)(message)

    def _covariate_shift(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        start = time.perf_counter()
        layers = layer_indices(pl_module, self.ics_layers)
        with self._batch_loss(trainer, pl_module) as loss:
            shifts = covariate_shift(loss, trainable_parameters(pl_module), self._before, layers)
        shown = dict(zip(layers, display_names(list(layers)), strict=True))
        out = {}
        for name, shift in shifts.items():
            out |= {f"ics/{shown[name]}/l2": shift.l2, f"ics/{shown[name]}/cos": shift.cos}
        out["time_ms/ics"] = 1000 * (time.perf_counter() - start)
        return out

    def _batch_loss(self, trainer: L.Trainer, pl_module: L.LightningModule):
        """``sandbox.batch_loss`` of the batch just trained on."""
        batch, batch_idx = self._batch
        return batch_loss(trainer, pl_module, batch, batch_idx, self.loss_fn)

    # ------------------------------------------------------------------------- output
    def _publish(self, trainer: L.Trainer, step: int, metrics: dict[str, float]) -> None:
        for logger in trainer.loggers:
            logger.log_metrics({f"landscape/{k}": v for k, v in metrics.items()}, step=step)
        for name, value in metrics.items():
            self._history.setdefault(name, []).append([step, _finite_or_none(value)])
        if trainer.is_global_zero and self._summary is not None:
            final = {name: points[-1][1] for name, points in self._history.items()}
            entry = {"step": step, "final": final, "history": self._history}
            merge_json(self._summary, {"landscape": entry | ({"stability_rule": self._rule} if self._rule else {})})


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no NaN
