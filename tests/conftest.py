"""Shared fixtures: config composition and running the entry points in a subprocess."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from helpers import run_entry
from normlab.config import register_schemas
from normlab.runs import config_dir, register_resolvers

register_schemas()
register_resolvers()


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose a config the way the entry point does, with Hydra's own node set and resolvable."""

    def _compose(overrides: list[str] = (), config_name: str = "train") -> DictConfig:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(tmp_path / "run")
        HydraConfig.instance().set_config(cfg)
        return cfg

    return _compose


@pytest.fixture
def train(tmp_path: Path) -> Callable[..., tuple[subprocess.CompletedProcess, Path]]:
    """Run normlab-train into a fresh run directory under tmp_path; return (process, run_dir)."""
    counter = iter(range(1000))

    def _train(*overrides: str, run_dir: Path | None = None, check: bool = True):
        run_dir = run_dir or tmp_path / f"run{next(counter)}"
        proc = run_entry("train", *overrides, f"hydra.run.dir={run_dir}", cwd=tmp_path)
        if check:
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        return proc, run_dir

    return _train
