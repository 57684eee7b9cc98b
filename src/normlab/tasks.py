"""The LightningModule of a run, chosen by config (``conf/task``) and found again from its checkpoint."""

from __future__ import annotations

from typing import Any

import lightning as L
from hydra.errors import HydraException
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from normlab.errors import ConfigError

# The checkpoint entry that names the LightningModule's class, written by TaskRecord.
CHECKPOINT_KEY = "normlab_task"


def _plain(node: Any) -> Any:
    return None if node is None else OmegaConf.to_container(node, resolve=True, enum_to_str=True)


def _load_class(target: str) -> type[L.LightningModule]:
    try:
        cls = get_class(target)
    except (HydraException, ImportError, ValueError) as error:
        raise ConfigError(f"task class {target} cannot be imported ({error}); check the task's _target_") from None
    if not (isinstance(cls, type) and issubclass(cls, L.LightningModule)):
        raise ConfigError(f"task class {target} is not a LightningModule; point _target_ at one")
    return cls


def build_task(cfg: DictConfig) -> L.LightningModule:
    """The LightningModule named by ``cfg.task``, given the run's model, optimizer and scheduler configs.

    Every task takes ``net``, ``optimizer`` and ``scheduler`` as configs (``_target_`` mappings) and
    instantiates them itself, so that ``save_hyperparameters`` puts them in the checkpoint and
    ``load_from_checkpoint`` rebuilds the module; the task's other keys are passed as they are.
    """
    task = _plain(cfg.task)
    cls = _load_class(task.pop("_target_"))
    return cls(
        net=_plain(cfg.model),
        optimizer=_plain(cfg.optimizer),
        scheduler=_plain(cfg.get("scheduler")),
        **task,
    )


def task_class(cfg: DictConfig, checkpoint: dict[str, Any]) -> type[L.LightningModule]:
    """The class to load a checkpoint with: ``cfg.task`` if given, else the one the checkpoint names."""
    if cfg.get("task") is not None:
        return _load_class(cfg.task._target_)
    target = checkpoint.get(CHECKPOINT_KEY)
    if target is None:
        raise ConfigError(f"{cfg.ckpt_path} does not say which LightningModule wrote it; pass task=<name>")
    return _load_class(target)


class TaskRecord(L.Callback):
    """Writes the LightningModule's import path into every checkpoint, for ``normlab-eval``."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        cls = type(pl_module)
        checkpoint[CHECKPOINT_KEY] = f"{cls.__module__}.{cls.__qualname__}"
