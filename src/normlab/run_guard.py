"""The Hydra callback that checks a run before Hydra writes anything for it.

Hydra creates the run directory and writes ``.hydra/`` before the task function starts, so a
check made there comes too late to leave nothing behind. ``on_run_start`` runs after the config
is composed and before the directory exists: the config is validated there, and the directory is
created and locked only once it is valid.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from normlab.config import validate
from normlab.errors import UserError
from normlab.runs import claim_run_dir


class RunGuard(Callback):
    """Validate the config, then create and lock the run directory (single runs; each job of a
    multirun claims its own directory when it starts, see ``normlab.entrypoints.guarded``)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            # What run_job does next, so that ${hydra:...} resolves in the run directory's name and the config.
            HydraConfig.instance().set_config(config)
            run_dir = Path(str(OmegaConf.select(config, "hydra.run.dir"))).absolute()
            with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
                config.hydra.runtime.output_dir = str(run_dir)
            HydraConfig.instance().set_config(config)
            validate(config)
            resuming = config.get("ckpt_path") is not None
            claim_run_dir(run_dir, resuming=resuming, overwrite=bool(config.get("overwrite", False)))
        except UserError as e:
            print(f"normlab: error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
            sys.exit(2)
