"""What a run shows on the console: the composed config as a tree, a progress bar, and no noise.

Every warning or message that normlab silences is listed in ``quiet_known_noise``, with the
reason; anything else Lightning, torch or Hydra says still reaches the console.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.markup import escape
from rich.tree import Tree

CONFIG_TREE_FILE = "config_tree.txt"


def config_tree(cfg: DictConfig) -> Tree:
    """The resolved config as a tree: plain values first, then one branch per group with its chosen option.

    Within a group, ``_target_`` comes first and unset (null) values are left out; the complete
    config is in the run's ``.hydra/config.yaml``.
    """
    # Hydra's own node is there only when composed with return_hydra_config; it is not the run's config.
    plain = {key: _resolved(cfg[key]) for key in cfg if key != "hydra"}
    choices = dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    root = Tree("[bold]config[/] [dim](nulls in groups hidden; all of it: .hydra/config.yaml)[/]")
    for key, value in sorted(plain.items(), key=lambda kv: isinstance(kv[1], dict)):
        if isinstance(value, dict):
            choice = choices.get(key)
            label = f"[bold]{key}[/]" + (f" [dim]({choice})[/]" if choice else "")
            _add_branch(root.add(label), value)
        else:
            root.add(_leaf(key, value))
    return root


def _resolved(node: Any) -> Any:
    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    return node


def _add_branch(branch: Tree, node: dict[str, Any]) -> None:
    for key, value in sorted(node.items(), key=lambda kv: not str(kv[0]).startswith("_")):
        if value is None:
            continue
        if isinstance(value, dict) and value:
            _add_branch(branch.add(f"[bold]{key}[/]"), value)
        else:
            branch.add(_leaf(key, value))


def _leaf(key: str, value: Any) -> str:
    if isinstance(value, bool | None):
        shown = "null" if value is None else str(value).lower()
    else:
        shown = str(value) if value != "" else '""'
    return f"{escape(str(key))}: [cyan]{escape(shown)}[/]"


@rank_zero_only
def show_config(cfg: DictConfig, run_dir: Path) -> None:
    """Print the config tree and write it, without colours, to ``<run_dir>/config_tree.txt``.

    Jobs of a multirun only write the file: parallel jobs would interleave their trees.
    """
    tree = config_tree(cfg)
    if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
        Console().print(tree)
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / CONFIG_TREE_FILE).open("w", encoding="utf-8") as f:
        Console(file=f, width=120, color_system=None, force_terminal=False).print(tree)


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, with the run's step budget in view.

    Under a step budget (``trainer.max_steps``) Lightning knows no last epoch and would label the
    bar ``Epoch 3/-2``; this bar shows ``Epoch 3`` and puts ``step 54/1500`` first among the
    metrics. With an epoch budget it behaves like ``RichProgressBar``. Takes the same arguments.

    Example::

        Trainer(max_steps=1500, callbacks=[StepProgressBar(leave=False)])
    """

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        budget = trainer.max_epochs
        if (budget is None or budget < 0) and self.progress is not None and self.train_progress_bar_id is not None:
            label = f"Epoch {trainer.current_epoch}"  # padded like Lightning's, so the bars line up
            self.progress.update(self.train_progress_bar_id, description=f"{label:{len(self.validation_description)}}")

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, int | str | float]:
        metrics = super().get_metrics(trainer, pl_module)
        if trainer.max_steps > 0:
            metrics = {"step": f"{trainer.global_step}/{trainer.max_steps}", **metrics}
        return metrics


class _DropMessages(logging.Filter):
    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


_LIGHTNING_ADS = _DropMessages("💡 Tip:")  # one instance: adding it twice is a no-op


def quiet_known_noise(resuming: bool = False) -> None:
    """Silence the messages a normal run triggers that say nothing about it; each entry says why.

    Args:
        resuming: the run continues from a checkpoint, so its checkpoint directory is already full.
    """
    # Lightning (< 2.7) still builds torch's deprecated LeafSpec when it wraps the data loaders
    # (CombinedLoader); the warning is about Lightning's code, and the run is unaffected.
    warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)
    # The Classifier moves its (inputs, targets) batches to the device itself, on purpose;
    # Lightning says so whenever a module does that while a datamodule supplies the data.
    warnings.filterwarnings("ignore", r"You have overridden `transfer_batch_to_device` in `LightningModule` but")
    # Advertisements for Lightning's cloud services at every run start, not about the run.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_LIGHTNING_ADS)
    if resuming:
        # Resuming writes into the directory that holds the checkpoint it resumes from, by design.
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
