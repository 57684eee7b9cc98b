"""End to end: normlab-train learns, resumes, reproduces, evaluates, and logs what it says it does."""

from __future__ import annotations

import contextlib
import json
import shlex
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from helpers import read_scalars, run_entry


@pytest.mark.slow
@pytest.mark.parametrize("model", ["baseline_mlp", "bn_mlp"])
def test_default_budget_reaches_90_percent_on_digits(train, model):
    proc, run_dir = train(f"model={model}")
    test_acc = read_scalars(run_dir)["test/acc"][-1][1]
    assert test_acc >= 0.90, proc.stdout[-1500:]
    assert f"run directory  {run_dir}" in proc.stdout
    assert f"tensorboard --logdir '{run_dir}'" in proc.stdout
    assert list((run_dir / "checkpoints").glob("best-*.ckpt")) and (run_dir / "checkpoints" / "last.ckpt").exists()


def test_same_seed_gives_identical_metrics(train):
    runs = [train("seed=3", "trainer.max_steps=60")[1] for _ in range(2)]
    a, b = (read_scalars(r) for r in runs)
    for tag in ("train/loss", "val/acc", "test/acc"):
        assert a[tag] == b[tag]
    other = read_scalars(train("seed=4", "trainer.max_steps=60")[1])
    assert other["train/loss"] != a["train/loss"]


def test_resume_from_last_continues_the_step_count_and_the_curves(entry, tmp_path):
    # A run directory named after its overrides holds ',' and '=': the printed command quotes it.
    first = entry("train", "trainer.max_steps=54", "optimizer.lr=0.2", cwd=tmp_path)  # 3 epochs of 18
    assert first.returncode == 0, first.stderr[-2000:]
    resume = next(line for line in first.stdout.splitlines() if line.strip().startswith("resume"))
    words = shlex.split(resume.replace("trainer.max_steps=N", "trainer.max_steps=90"))[2:]
    assert "optimizer.lr=0.2" in words  # the run's own overrides: the config is not in the checkpoint
    run_dir = Path(next(w for w in words if w.startswith("hydra.run.dir=")).split("=", 1)[1].strip("'"))
    before = read_scalars(run_dir)["train/loss"]
    proc = entry("train", *words, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Restoring states from the checkpoint" in proc.stdout + proc.stderr
    steps = [s for s, _ in read_scalars(run_dir)["train/loss"]]
    assert steps[: len(before)] == [s for s, _ in before]
    assert min(steps[len(before) :]) > max(s for s, _ in before)  # continued, not restarted
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 90


def test_resume_last_without_checkpoint_is_a_clear_error(entry, tmp_path):
    proc = entry("train", "ckpt_path=last", f"hydra.run.dir={tmp_path / 'empty'}", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no checkpoint in" in proc.stderr


def test_hparams_tab_gets_real_metrics_and_no_placeholder(train):
    _, run_dir = train("model=bn_mlp", "trainer.max_steps=40")
    tags = read_scalars(run_dir)
    assert "hp_metric" not in tags
    plugin = None
    for path in run_dir.glob("events.out.tfevents*"):
        acc = EventAccumulator(str(path))
        acc.Reload()
        with contextlib.suppress(KeyError):  # the test stage writes a second event file, without hparams
            plugin = plugin or acc.PluginTagToContent("hparams").get("_hparams_/experiment")
    data = plugin_data_pb2.HParamsPluginData.FromString(plugin)
    metrics = {m.name.tag for m in data.experiment.metric_infos}
    hparams = {h.name for h in data.experiment.hparam_infos}
    assert {"val/acc_best", "test/acc"} <= metrics and metrics <= set(tags) | {"val/loss", "train/loss", "test/loss"}
    assert {"model", "model.norm", "optimizer.lr", "seed"} <= hparams


@pytest.mark.parametrize("logger", ["csv", "none"])
def test_other_loggers(train, logger):
    _, run_dir = train(f"logger={logger}", "trainer.max_steps=20")
    assert not list(run_dir.glob("events.out.tfevents*"))
    assert (run_dir / "metrics.csv").exists() == (logger == "csv")


def test_eval_reproduces_the_test_accuracy_of_the_best_checkpoint(entry, train, tmp_path):
    _, run_dir = train("trainer.max_steps=60")
    best = next((run_dir / "checkpoints").glob("best-*.ckpt"))
    proc = entry("evaluate", f"ckpt_path={best}", f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["test/acc"] == pytest.approx(read_scalars(run_dir)["test/acc"][-1][1])
    assert "val/acc" in metrics


def test_synthetic_and_cnn_train(train):
    train("data=synthetic", "model=keras_tutorial", "data.preprocess=standardize", "trainer.max_steps=30")
    train("model=bn_cnn", "trainer.max_steps=20")


@pytest.mark.slow
def test_ddp_cpu_writes_one_run_directory(tmp_path):
    run_dir = tmp_path / "run"  # a process of its own: DDP starts its workers from the command line
    proc = run_entry("train", "trainer=ddp_cpu", "trainer.max_steps=20", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "finished 20 steps" in proc.stdout
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [run_dir.name]
    assert len(list(run_dir.glob("events.out.tfevents*"))) >= 1
