"""Sweeps end to end: normlab-train -m with each launcher, failures that do not stop a sweep, optuna."""

from __future__ import annotations

import json
import logging
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import read_write

from helpers import run_entry
from normlab.entrypoints import guarded
from normlab.errors import ConfigError
from normlab.report import build_report, read_scalars
from normlab.sweep_callbacks import TorchThreads, threads_per_job

# Four steps in two epochs of two batches: validation runs twice, every step is logged.
TINY = [
    "trainer.max_steps=4",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
]
GRID = ["model=baseline_mlp,bn_mlp", "optimizer.lr=0.05,0.5"]
STATUS_LINE = re.compile(r"^  (\d{3})  +(\w+) ", flags=re.MULTILINE)


def multirun(sweep_dir: Path, *overrides: str, run: Callable[..., subprocess.CompletedProcess] = run_entry):
    """``normlab-train -m overrides...`` with the TINY budget: a process of its own unless ``run`` is
    the in-process ``entry`` fixture (the basic launcher runs its jobs in the sweep's process anyway)."""
    proc = run("train", "-m", *overrides, *TINY, f"hydra.sweep.dir={sweep_dir}", cwd=sweep_dir.parent)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def statuses(stdout: str) -> dict[str, str]:
    """Job number -> status, from the table printed when the sweep ends."""
    table = stdout.split("normlab: sweep of", 1)[1]
    return dict(STATUS_LINE.findall(table))


def check_grid_sweep(sweep: Path, stdout: str) -> None:
    runs = sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())
    jobs = [(m, lr) for m in ("baseline_mlp", "bn_mlp") for lr in ("0.05", "0.5")]
    assert len(runs) == len(jobs)
    for i, (run, (model, lr)) in enumerate(zip(runs, jobs, strict=True)):
        assert run.name.startswith(f"{i:03d}_model={model},optimizer.lr={lr},")  # named by its overrides
        overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
        assert sorted(overrides) == sorted([f"model={model}", f"optimizer.lr={lr}", *TINY])
        assert len(read_scalars(run, tags=["val/acc"])["val/acc"]) == 2
    assert statuses(stdout) == {f"{i:03d}": "completed" for i in range(4)}

    report = build_report(sweep)
    assert [g.label for g in report.groups] == [
        "model=baseline_mlp, optimizer.lr=0.05",
        "model=baseline_mlp, optimizer.lr=0.5",
        "model=bn_mlp, optimizer.lr=0.05",
        "model=bn_mlp, optimizer.lr=0.5",
    ]
    assert {"val_acc", "train_loss", "lr_stability"} <= set(report.figures)
    text = report.path.read_text()
    rows = text.split("## Groups", 1)[1].split("## Figures", 1)[0]
    assert sum(line.startswith("| model=") for line in rows.splitlines()) == 4


def test_basic_launcher_sweep_lands_in_one_directory_and_is_reported(entry, tmp_path):
    proc = multirun(tmp_path / "sweep", *GRID, run=entry)
    check_grid_sweep(tmp_path / "sweep", proc.stdout)


@pytest.mark.slow
def test_joblib_launcher_runs_the_same_sweep_in_parallel(tmp_path):
    proc = multirun(tmp_path / "sweep", *GRID, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    check_grid_sweep(tmp_path / "sweep", proc.stdout)
    assert "Joblib.Parallel(n_jobs=2," in proc.stdout


def test_a_diverging_and_a_failing_job_do_not_stop_the_sweep(entry, tmp_path):
    # lr 1000 blows the baseline up; lr -1 is rejected by the config check inside its job
    proc = multirun(tmp_path / "sweep", "model=baseline_mlp", "optimizer.lr=0.1,1000,-1", run=entry)
    assert statuses(proc.stdout) == {"000": "completed", "001": "diverged", "002": "failed"}
    assert "optimizer.lr=-1.0 is out of range" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr

    report = build_report(tmp_path / "sweep")
    assert [o.status for o in report.outcomes] == ["completed", "diverged", "failed"]
    text = report.path.read_text()
    assert re.search(r"optimizer\.lr=1000: 1/1 seeds diverged, first at step \d", text)
    assert "optimizer.lr=-1.0 is out of range: must be > 0" in text


def test_an_unexpected_error_in_a_sweep_job_is_one_line_and_a_logged_traceback(compose_cfg, tmp_path, capsys):
    cfg = compose_cfg()
    with read_write(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.job.num = 7
    HydraConfig.instance().set_config(cfg)
    run_dir = Path(cfg.hydra.runtime.output_dir)
    run_dir.mkdir(parents=True)
    handler = logging.FileHandler(run_dir / "train.log")
    logging.getLogger().addHandler(handler)
    try:

        def task(_):
            raise RuntimeError("the GPU fell off")

        assert guarded(task, cfg) is None
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "job 7 failed: RuntimeError: the GPU fell off" in err
    assert "Traceback" in (run_dir / "train.log").read_text()
    assert json.loads((run_dir / "summary.json").read_text()) == {
        "status": "failed",
        "error": "RuntimeError: the GPU fell off",
    }


@pytest.mark.slow
def test_submitit_local_launcher(tmp_path):
    proc = multirun(tmp_path / "sweep", "model=baseline_mlp,bn_mlp", "hydra/launcher=submitit_local")
    assert statuses(proc.stdout) == {"000": "completed", "001": "completed"}
    assert (tmp_path / "sweep" / ".submitit").is_dir()
    report = build_report(tmp_path / "sweep")  # the .submitit folder is not a run
    assert [g.label for g in report.groups] == ["model=baseline_mlp", "model=bn_mlp"]


def test_optuna_search_of_two_trials_returns_the_best_run(entry, tmp_path):
    sweep = tmp_path / "sweep"
    proc = multirun(sweep, "hparams_search=lr_optuna", "hydra.sweeper.n_trials=2", run=entry)
    assert statuses(proc.stdout) == {"000": "completed", "001": "completed"}
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    runs = [p for p in sweep.iterdir() if (p / ".hydra").is_dir()]
    best = max(read_scalars(r, tags=["val/acc_best"])["val/acc_best"].last() for r in runs)
    assert result["best_value"] == pytest.approx(best)
    assert set(result["best_params"]) == {"optimizer.lr", "model"}


def test_slurm_preset_takes_partition_time_and_gpus_from_config(compose_cfg):
    cfg = compose_cfg(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.timeout_min, launcher.gpus_per_node) == ("gpu", 30, 1)
    assert threads_per_job(launcher, cores=64) == launcher.cpus_per_task


@pytest.mark.parametrize(
    ("launcher", "cores", "expected"),
    [
        ({"n_jobs": 2}, 2, 1),  # joblib, one job per core
        ({"n_jobs": 2}, 16, 8),
        ({"n_jobs": -1}, 8, 1),  # -1: as many jobs as cores
        ({"n_jobs": -2}, 8, 1),  # all cores but one: 7 jobs share 8 cores
        ({"n_jobs": 32}, 8, 1),
        ({"cpus_per_task": 4}, 64, 4),  # submitit
        ({"cpus_per_task": None}, 64, None),
        ({}, 8, None),  # basic launcher: one job at a time keeps every core
    ],
)
def test_threads_per_job(launcher, cores, expected):
    assert threads_per_job(launcher, cores) == expected


def test_torch_threads_callback_sets_torch_threads_in_a_multirun(compose_cfg):
    cfg = compose_cfg(["hydra/launcher=joblib", "hydra.launcher.n_jobs=64"])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        TorchThreads().on_job_start(cfg)
        assert torch.get_num_threads() == 2  # a single run keeps its threads
        with read_write(cfg.hydra):
            cfg.hydra.mode = RunMode.MULTIRUN
        TorchThreads().on_job_start(cfg)
        assert torch.get_num_threads() == 1  # 64 jobs share the cores
        TorchThreads(threads=2).on_job_start(cfg)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError, match="threads=0: must be >= 1"):
        TorchThreads(threads=0)
