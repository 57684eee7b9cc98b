"""``normlab-train``: train, validate and test a model composed by Hydra from ``conf/``."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from normlab.cli import as_plain, build_logger, guarded, in_multirun, log_hparams, print_summary
from normlab.config import register_schemas, validate
from normlab.console import quiet_known_noise, show_config
from normlab.diagnostics.summary import merge_json
from normlab.errors import ConfigError
from normlab.module import Classifier
from normlab.runs import config_dir, find_checkpoint, register_resolvers
from normlab.sweep_resume import latest_checkpoint, run_status

register_schemas()
register_resolvers()


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    return [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and c.get("_target_")]


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the model, test the best checkpoint, return the final metrics."""
    validate(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    ckpt_path = resume_from(cfg.get("ckpt_path"), run_dir)
    quiet_known_noise(resuming=ckpt_path is not None)
    show_config(cfg, run_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = instantiate(cfg.data)
    datamodule.save_hyperparameters(as_plain(cfg.data), logger=False)  # lets normlab-eval rebuild it
    datamodule.prepare_data()  # a missing dataset fails here, before anything is written
    module = Classifier(
        net=as_plain(cfg.model),
        num_classes=cfg.data.num_classes,
        optimizer=as_plain(cfg.optimizer),
        scheduler=as_plain(cfg.get("scheduler")),
    )
    logger = build_logger(cfg)
    # default_root_dir: where Lightning saves and looks for the checkpoint of a SLURM requeue
    trainer: L.Trainer = instantiate(
        cfg.trainer, logger=logger, callbacks=build_callbacks(cfg), default_root_dir=str(run_dir)
    )
    log_hparams(trainer, cfg)

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    fit_seconds = time.perf_counter() - start
    metrics = _scalars(trainer.callback_metrics)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)

    metrics.update(_scalars(trainer.callback_metrics))
    if trainer.is_global_zero and run_status(run_dir) is None:  # trained without the diagnostics' summary
        merge_json(run_dir / "summary.json", {"status": "completed", "global_step": trainer.global_step})
    print_summary(trainer, metrics, run_dir, fit_seconds)
    return metrics


def resume_from(ckpt_path: str | None, run_dir: Path) -> str | None:
    """The checkpoint to start from: ``ckpt_path`` when given; in a sweep, the newest checkpoint in
    the job's own directory, which holds one when the sweep was killed and started again, or when
    SLURM requeued the job after its time-limit signal (``normlab.sweep_resume``)."""
    if ckpt_path is None and in_multirun():
        found = latest_checkpoint(run_dir)
        return str(found) if found is not None else None
    return find_checkpoint(ckpt_path, run_dir)


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if v.numel() == 1}


def objective(cfg: DictConfig) -> dict[str, float] | float | None:
    """Train; return the metric named by ``optimized_metric`` (for a sweeper such as optuna), else all metrics.

    A non-finite metric (a diverged run) is returned as ``None``, like a failed job: optuna marks
    such a trial failed, whereas a NaN would stop the whole search.
    """
    metrics = train(cfg)
    name = cfg.get("optimized_metric")
    if name is None:
        return metrics
    if name not in metrics:
        raise ConfigError(f"optimized_metric={name} is not a metric of this run; choose one of {sorted(metrics)}")
    return metrics[name] if math.isfinite(metrics[name]) else None


@hydra.main(config_path=config_dir(), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> Any:
    return guarded(objective, cfg)


if __name__ == "__main__":
    main()
