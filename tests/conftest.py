"""Shared fixtures: config composition and running the entry points, in this process or a subprocess."""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

# One torch thread, in this process and in every process a test starts (they inherit the variable):
# the tests' models are tiny, so a second thread buys nothing, and on cores shared with another
# process its threads wait for each other (a 300-step run took 2.5x as long with two).
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # after the variable: torch reads it once, at import
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from helpers import run_entry
from normlab.config import register_schemas
from normlab.runs import config_dir, register_resolvers, release_run_dirs

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # in case a plugin imported torch first
register_schemas()
register_resolvers()

# Lightning's and torch's log handlers are made at import and hold the stderr of that moment:
# pytest's capture of the whole session, not a test's ``capfd``.
SESSION_STDERR = sys.stderr


def log_handlers_to(stream, patch: pytest.MonkeyPatch) -> None:
    """Point the handlers that write to the session's stderr at ``stream`` until ``patch`` undoes it."""
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", ()):  # a placeholder in the logger tree has none
            if isinstance(handler, logging.StreamHandler) and handler.stream is SESSION_STDERR:
                patch.setattr(handler, "stream", stream)


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
def entry(capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Callable[..., subprocess.CompletedProcess]:
    """Run ``normlab-<module> overrides...`` in this process, as its console script would from ``cwd``.

    Returns what ``run_entry`` returns (exit status, stdout, stderr), seconds sooner: no interpreter
    start and no ``import lightning``. An exception the entry point lets through fails the test, as
    its traceback would fail a user. Tests of what only a process shows (signals, kills, warnings
    on stderr, the console script itself) keep ``run_entry``.
    """

    def _entry(module: str, *overrides: str, cwd: Path) -> subprocess.CompletedProcess:
        main = importlib.import_module(f"normlab.{module}").main
        argv = [f"normlab-{module}", *overrides]
        threads = torch.get_num_threads()  # a multirun's TorchThreads callback sets them for its jobs
        with monkeypatch.context() as patch:
            patch.chdir(cwd)
            patch.setattr(sys, "argv", argv)
            patch.setenv("HYDRA_FULL_ERROR", "0")  # main() sets it to 1 for its own use; restored after
            capfd.readouterr()
            log_handlers_to(sys.stderr, patch)  # the test's capture: Lightning's messages land in stderr
            try:
                main()
                status = 0
            except SystemExit as e:
                status = e.code if isinstance(e.code, int) else int(e.code is not None)  # as Python's exit status
            finally:
                release_run_dirs()  # as the end of a process would
                torch.set_num_threads(threads)
            out, err = capfd.readouterr()
        return subprocess.CompletedProcess(argv, status, out, err)

    return _entry


@pytest.fixture
def train(tmp_path: Path, entry: Callable[..., subprocess.CompletedProcess]):
    """Run normlab-train (in this process) into a fresh run directory under tmp_path; return (process, run_dir)."""
    counter = iter(range(1000))

    def _train(*overrides: str, run_dir: Path | None = None, check: bool = True):
        run_dir = run_dir or tmp_path / f"run{next(counter)}"
        proc = entry("train", *overrides, f"hydra.run.dir={run_dir}", cwd=tmp_path)
        if check:
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        return proc, run_dir

    return _train


@pytest.fixture(scope="session")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """``normlab-train trainer.max_steps=30`` in a process of its own, as a user starts it; (process, run_dir).

    One run for the tests that only read it (what it printed, the files and the events it wrote).
    """
    root = tmp_path_factory.mktemp("default_run")
    run_dir = root / "run"
    proc = run_entry("train", "trainer.max_steps=30", f"hydra.run.dir={run_dir}", cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, run_dir
