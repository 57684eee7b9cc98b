"""``normlab-train``: train, validate and test a model composed by Hydra from ``conf/``."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from normlab.checkpoint_io import AtomicCheckpointIO
from normlab.checkpoints import check_fits, read_checkpoint
from normlab.collapse import accuracy_collapse_step
from normlab.config import register_schemas, validate
from normlab.console import quiet_known_noise, show_config
from normlab.diagnostics.summary import merge_json
from normlab.entrypoints import (
    as_plain,
    build_logger,
    guarded,
    hydra_entry_point,
    in_multirun,
    log_hparams,
    print_summary,
    resume_command,
)
from normlab.errors import ConfigError
from normlab.runs import config_dir, find_checkpoint, keep_restart_point, register_resolvers
from normlab.slurm_requeue import time_limit_handling
from normlab.sweep_resume import latest_checkpoint
from normlab.tasks import TaskRecord, build_task

register_schemas()
register_resolvers()


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    chosen = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and c.get("_target_")]
    return [*chosen, TaskRecord()]  # normlab-eval reads the LightningModule's class from the checkpoint


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the model, test the weights ``test_on`` names, return the final metrics."""
    validate(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    ckpt_path = resume_from(cfg.get("ckpt_path"), run_dir)
    checkpoint = read_checkpoint(ckpt_path) if ckpt_path else None
    quiet_known_noise(resuming=ckpt_path is not None)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = instantiate(cfg.data)
    datamodule.save_hyperparameters(as_plain(cfg.data), logger=False)  # lets normlab-eval rebuild it
    datamodule.prepare_data()  # a missing dataset fails here, before anything is written
    check_batches(datamodule, cfg.data.batch_size)
    module = build_task(cfg)
    if checkpoint is not None:
        check_fits(checkpoint, ckpt_path, module, cfg.optimizer.get("_target_"))
        if cfg.ckpt_path == "last":
            ckpt_path = keep_restart_point(ckpt_path, checkpoint.get("global_step", 0))
        print(f"normlab: resuming from {ckpt_path} (step {checkpoint.get('global_step', '?')})", flush=True)
    show_config(cfg, run_dir)
    logger = build_logger(cfg)
    slurm_plugins, slurm_callbacks = time_limit_handling()
    # default_root_dir: where a SLURM requeue's checkpoint goes and where Lightning looks for it
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        logger=logger,
        callbacks=[*build_callbacks(cfg), *slurm_callbacks],
        plugins=[AtomicCheckpointIO(), *slurm_plugins],
        default_root_dir=str(run_dir),
    )
    log_hparams(trainer, cfg)

    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SystemExit:  # Lightning ends a run stopped with Ctrl-C this way, after a clean shutdown
        if not trainer.interrupted:
            raise
        record_interrupt(trainer, run_dir)
        sys.exit(130)
    fit_seconds = time.perf_counter() - start
    metrics = _scalars(trainer.callback_metrics)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    tested = cfg.test_on if best else "last"
    # ckpt_path=None tests the weights in memory: those at the end of training.
    trainer.test(module, datamodule=datamodule, ckpt_path=best if tested == "best" else None, verbose=False)

    metrics.update(_scalars(trainer.callback_metrics))
    finish_summary(trainer, run_dir, tested, cfg.data.num_classes)
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


def check_batches(datamodule: L.LightningDataModule, batch_size: int) -> None:
    """Refuse a batch size that leaves no full training batch: the run would train 0 steps."""
    datamodule.setup("fit")
    if len(datamodule.train_dataloader()) == 0:
        splits = getattr(datamodule, "splits", {})
        size = f" ({len(splits['train'].y)} examples)" if "train" in splits else ""
        raise ConfigError(
            f"data.batch_size={batch_size} is larger than the training split{size}: no full batch to "
            "train on; choose a smaller data.batch_size"
        )


@rank_zero_only
def finish_summary(trainer: L.Trainer, run_dir: Path, tested: str, num_classes: int) -> None:
    """Add to ``summary.json`` which weights were tested, and call a run that fell back to chance
    accuracy ``collapsed`` (with the step), whatever its test accuracy of earlier weights says."""
    if trainer.fast_dev_run:
        return
    path = run_dir / "summary.json"
    updates: dict[str, Any] = {"test_on": tested}
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):  # trained without the diagnostics callback
        summary = {}
    if "status" not in summary:  # so that a sweep started again knows this run ended
        updates |= {"status": "completed", "global_step": trainer.global_step}
    history = summary.get("val_history") or []
    step = accuracy_collapse_step([s for s, _ in history], [a for _, a in history], 1 / num_classes)
    if summary.get("status", "completed") == "completed" and step is not None:
        updates |= {"status": "collapsed", "collapse_step": step}
        print(f"normlab: collapsed: validation accuracy back at chance level from step {step}", flush=True)
    merge_json(path, updates)


@rank_zero_only
def record_interrupt(trainer: L.Trainer, run_dir: Path) -> None:
    """Ctrl-C: ``summary.json`` says ``interrupted`` and the console says how to go on."""
    merge_json(run_dir / "summary.json", {"status": "interrupted", "global_step": trainer.global_step})
    lines = [f"normlab: interrupted at step {trainer.global_step}"]
    if any(run_dir.glob("checkpoints/*.ckpt")):
        lines.append(f"  resume         {resume_command(run_dir.resolve())}")
    print("\n".join(lines), file=sys.stderr, flush=True)


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
def hydra_main(cfg: DictConfig) -> Any:
    return guarded(objective, cfg)


main = hydra_entry_point(hydra_main)

if __name__ == "__main__":
    main()
