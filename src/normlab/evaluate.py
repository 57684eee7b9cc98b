"""``normlab-eval ckpt_path=PATH``: validate and test a trained checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import lightning as L
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from normlab.checkpoints import read_checkpoint
from normlab.config import register_schemas, validate
from normlab.console import quiet_known_noise
from normlab.entrypoints import as_plain, guarded, hydra_entry_point
from normlab.errors import ConfigError
from normlab.runs import config_dir, find_checkpoint, register_resolvers
from normlab.tasks import task_class

register_schemas()
register_resolvers()


def data_config(cfg: DictConfig, checkpoint: dict) -> dict:
    """The data to evaluate on: the command line's, else the one stored in the checkpoint."""
    if cfg.get("data") is not None:
        return as_plain(cfg.data)
    stored = checkpoint.get("datamodule_hyper_parameters")
    if not stored or "_target_" not in stored:
        raise ConfigError(f"{cfg.ckpt_path} stores no data config; pass data=<digits|mnist|...>")
    return dict(stored)


def check_data_fits(checkpoint: dict, path: str, data: dict) -> None:
    """Refuse data of another shape or with more classes than the checkpoint's model takes."""
    net = (checkpoint.get("hyper_parameters") or {}).get("net") or {}
    for key in ("input_shape", "num_classes"):
        there, here = net.get(key), data.get(key)
        if there is not None and here is not None and list(np.atleast_1d(there)) != list(np.atleast_1d(here)):
            raise ConfigError(
                f"data.{key}={here} does not fit ckpt_path={path}, whose model takes {key}={there}; "
                "evaluate on the data it was trained on (leave out data=... to use the stored one)"
            )


def evaluate(cfg: DictConfig) -> dict[str, float]:
    validate(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    path = find_checkpoint(cfg.ckpt_path, run_dir)
    quiet_known_noise()
    checkpoint = read_checkpoint(path)
    L.seed_everything(cfg.seed, verbose=False)
    data = data_config(cfg, checkpoint)
    check_data_fits(checkpoint, path, data)
    datamodule = instantiate(data)
    datamodule.prepare_data()
    module = task_class(cfg, checkpoint).load_from_checkpoint(path, map_location="cpu")
    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False)
    metrics: dict[str, float] = {}
    for results in (
        trainer.validate(module, datamodule, verbose=False),
        trainer.test(module, datamodule, verbose=False),
    ):
        metrics.update({k: float(v) for k, v in results[0].items()})
    (run_dir / "metrics.json").write_text(json.dumps({"checkpoint": path, **metrics}, indent=2))
    print(f"normlab: evaluated {path}")
    print("\n".join(f"  {k:<13} {v:.4f}" for k, v in sorted(metrics.items())))
    print(f"  metrics in {run_dir / 'metrics.json'}")
    return metrics


@hydra.main(config_path=config_dir(), config_name="eval", version_base="1.3")
def hydra_main(cfg: DictConfig) -> dict[str, float]:
    return guarded(evaluate, cfg)


main = hydra_entry_point(hydra_main)

if __name__ == "__main__":
    main()
