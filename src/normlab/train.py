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

from normlab.config import register_schemas, validate
from normlab.console import quiet_known_noise, show_config
from normlab.entrypoints import as_plain, build_logger, guarded, log_hparams, print_summary
from normlab.errors import ConfigError
from normlab.runs import config_dir, find_checkpoint, register_resolvers
from normlab.tasks import TaskRecord, build_task

register_schemas()
register_resolvers()


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    chosen = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and c.get("_target_")]
    return [*chosen, TaskRecord()]  # normlab-eval reads the LightningModule's class from the checkpoint


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the model, test the best checkpoint, return the final metrics."""
    validate(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    ckpt_path = find_checkpoint(cfg.get("ckpt_path"), run_dir)
    quiet_known_noise(resuming=ckpt_path is not None)
    show_config(cfg, run_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = instantiate(cfg.data)
    datamodule.save_hyperparameters(as_plain(cfg.data), logger=False)  # lets normlab-eval rebuild it
    datamodule.prepare_data()  # a missing dataset fails here, before anything is written
    module = build_task(cfg)
    logger = build_logger(cfg)
    trainer: L.Trainer = instantiate(cfg.trainer, logger=logger, callbacks=build_callbacks(cfg))
    log_hparams(trainer, cfg)

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    fit_seconds = time.perf_counter() - start
    metrics = _scalars(trainer.callback_metrics)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)

    metrics.update(_scalars(trainer.callback_metrics))
    print_summary(trainer, metrics, run_dir, fit_seconds)
    return metrics


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
