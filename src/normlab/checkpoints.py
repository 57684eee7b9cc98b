"""Reading a checkpoint a user points at: a broken file or one from another model is one clear line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from normlab.errors import ConfigError


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path``; ``ConfigError`` when it is empty, truncated or not a checkpoint."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises half a dozen types for a file that is not a whole checkpoint
        reason = "it is empty" if Path(path).stat().st_size == 0 else f"{type(e).__name__}: {str(e).splitlines()[0]}"
        raise ConfigError(f"ckpt_path={path} is not a readable checkpoint ({reason}); choose another .ckpt") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"ckpt_path={path} is not a Lightning checkpoint (no state_dict); choose another .ckpt")
    return checkpoint


def check_fits(checkpoint: dict[str, Any], path: str, module: nn.Module, optimizer_target: str | None) -> None:
    """Refuse to resume into a model or optimizer other than the checkpoint's, naming the first difference."""
    hint = "resume with the run's own overrides (the 'resume' line it printed at its end)"
    stored = checkpoint["state_dict"]
    own = module.state_dict()
    for name in [*own, *(k for k in stored if k not in own)]:  # in the model's own order
        there, here = stored.get(name), own.get(name)
        if there is None or here is None:
            where = "only in the checkpoint" if here is None else "not in the checkpoint"
            raise ConfigError(f"ckpt_path={path} holds another model: {name} is {where}; {hint}")
        if tuple(there.shape) != tuple(here.shape):
            raise ConfigError(
                f"ckpt_path={path} holds another model: {name} is {list(there.shape)} there, "
                f"{list(here.shape)} here; {hint}"
            )
    saved = ((checkpoint.get("hyper_parameters") or {}).get("optimizer") or {}).get("_target_")
    if saved and optimizer_target and saved != optimizer_target:
        raise ConfigError(f"ckpt_path={path} was trained with optimizer {saved}, not {optimizer_target}; {hint}")
