"""The experiment scripts and the TensorBoard server, run as a user would from the repository root."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from synthetic_sweep import write_sweep

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "trainer.max_steps=4",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
]
# On top of each experiment's documented reduced budget (one seed): two values of the swept key.
SHRINK = {
    "lr_stability": ["optimizer.lr=0.3,30"],
    "bad_init": ["model.init_std=0.01,10"],
    "input_scaling": ["data.preprocess=none,standardize"],
    "ioffe2015_mnist": [],
    "norm_batch_size": ["model.norm=batch,layer", "data.batch_size=4,64"],
    "norm_depth": ["model.depth=5,20"],
    "norm_lr_stability": ["model.norm=none,layer", "optimizer.lr=0.3,30"],
}
GROUPS = {
    "lr_stability": [f"model={m}, optimizer.lr={lr}" for m in ("baseline_mlp", "bn_mlp") for lr in ("0.3", "30")],
    "bad_init": [f"model={m}, model.init_std={s}" for m in ("baseline_mlp", "bn_mlp") for s in ("0.01", "10")],
    "input_scaling": [
        f"model={m}, data.preprocess={p}" for m in ("baseline_mlp", "bn_mlp") for p in ("none", "standardize")
    ],
    "ioffe2015_mnist": ["model=baseline_mlp", "model=bn_mlp"],
    "norm_batch_size": [f"model.norm={n}, data.batch_size={b}" for n in ("batch", "layer") for b in (4, 64)],
    "norm_depth": [f"model.norm={n}, model.depth={d}" for n in ("none", "batch", "layer") for d in (5, 20)],
    "norm_lr_stability": [f"model.norm={n}, optimizer.lr={lr}" for n in ("none", "layer") for lr in ("0.3", "30")],
}
NORM_EXPERIMENTS = ["norm_batch_size", "norm_depth", "norm_lr_stability"]
# lr_stability's script runs with the launcher its experiment sets (joblib, two worker processes);
# the others run their jobs in the sweep's process: at TINY budgets two workers importing Lightning
# cost more than the jobs, and tests/test_sweep.py tests the joblib launcher itself.
OWN_LAUNCHER = {"lr_stability"}


def script_env() -> dict[str, str]:
    """The environment with this interpreter's bin/ (normlab-train, normlab-report, tensorboard) first on PATH."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def reduced_budget(name: str) -> list[str]:
    """The overrides of the reduced-budget command in the experiment's header comment."""
    header = (ROOT / "conf" / "experiment" / f"{name}.yaml").read_text().split("Reduced budget", 1)[1]
    command = re.search(rf"scripts/{name}\.sh (.*)", header).group(1)
    return shlex.split(command)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SHRINK))
def test_experiment_script_runs_its_sweep_and_writes_its_report(tmp_path, name):
    sweep = tmp_path / "sweep"
    launcher = [] if name in OWN_LAUNCHER else ["hydra/launcher=basic"]
    command = [str(ROOT / "scripts" / f"{name}.sh"), *reduced_budget(name), *SHRINK[name], *TINY, *launcher]
    proc = subprocess.run(
        command,
        check=False,
        cwd=tmp_path,
        env={**script_env(), "SWEEP_DIR": str(sweep)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = (sweep / "report.md").read_text()
    assert f"normlab: sweep of {len(GROUPS[name])} runs finished" in proc.stdout
    assert "failed" not in proc.stdout.split("normlab: sweep of", 1)[1].split("report:", 1)[0]
    assert f"normlab-report: {len(GROUPS[name])} runs" in proc.stdout
    for group in GROUPS[name]:
        assert f"| {group} |" in report


@pytest.mark.parametrize("name", list(SHRINK))
def test_reduced_budget_runs_fewer_or_shorter_jobs(name):
    params = yaml.safe_load((ROOT / "conf" / "experiment" / f"{name}.yaml").read_text())["hydra"]["sweeper"]["params"]
    grid = [f"{k}={v}" for k, v in params.items()]
    reduced = reduced_budget(name)
    full_jobs, reduced_jobs = (len(jobs(overrides)) for overrides in (grid, grid + reduced))
    shorter = any(o.startswith("trainer.max_steps=") for o in reduced)
    assert reduced_jobs < full_jobs or shorter, reduced


@pytest.mark.parametrize("name", NORM_EXPERIMENTS)
def test_norm_experiment_composes_for_every_family_it_sweeps(compose_cfg, name):
    params = yaml.safe_load((ROOT / "conf" / "experiment" / f"{name}.yaml").read_text())["hydra"]["sweeper"]["params"]
    header = (ROOT / "conf" / "experiment" / f"{name}.yaml").read_text()
    assert "Measured here" in header and f"scripts/{name}.sh" in header
    assert (ROOT / "scripts" / f"{name}.sh").stat().st_mode & 0o111
    for family in params["model.norm"].split(","):
        cfg = compose_cfg([f"experiment={name}", "data=digits", f"model.norm={family}"])
        assert cfg.model.norm == family and cfg.hydra.mode.name == "MULTIRUN"
    cfg = compose_cfg([f"experiment={name}", "data=digits"])
    assert cfg.model._target_ == "normlab.models.MLP" and cfg.model.activation in ("relu", "sigmoid")


def jobs(overrides: list[str]) -> list[list[str]]:
    """The jobs Hydra's basic sweeper makes of ``overrides`` (later values of a key win)."""
    return BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(overrides), None)[0]


def test_ioffe_experiment_without_mnist_says_how_to_get_it(entry, tmp_path):
    proc = entry(
        "train",
        "experiment=ioffe2015_mnist",
        "hydra/launcher=basic",
        "data.download=false",
        f"data.data_dir={tmp_path / 'mnist'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 failed" in proc.stdout
    assert proc.stderr.count("MNIST files missing in") == 2
    assert "train-images-idx3-ubyte.gz" in proc.stderr and "data.data_dir=FOLDER" in proc.stderr


def test_serve_tensorboard_lists_every_run_of_a_sweep_on_loopback(tmp_path):
    runs = write_sweep(tmp_path / "sweep", steps=20)
    server = subprocess.Popen(
        [str(ROOT / "scripts" / "serve_tensorboard.sh"), str(tmp_path / "sweep"), "0"],
        env=script_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = _served_url(server)
        assert url.startswith("http://127.0.0.1:")
        deadline = time.monotonic() + 60
        listed: list = []
        while sorted(listed) != sorted(r.name for r in runs) and time.monotonic() < deadline:
            time.sleep(0.5)  # runs appear as TensorBoard's first scan of the logdir proceeds
            listed = _json(f"{url}data/runs")
        assert sorted(listed) == sorted(r.name for r in runs)
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_serve_tensorboard_needs_a_directory(tmp_path):
    proc = subprocess.run(
        [str(ROOT / "scripts" / "serve_tensorboard.sh"), str(tmp_path / "nowhere")],
        check=False,
        env=script_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "usage: scripts/serve_tensorboard.sh SWEEP_DIR [PORT]" in proc.stderr


def _served_url(server: subprocess.Popen) -> str:
    for line in server.stdout:
        match = re.search(r"TensorBoard \S+ at (http://\S+/)", line)
        if match:
            return match.group(1)
    raise AssertionError("tensorboard exited without serving")


def _json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())
