"""The diagnostics with every kind of logger, end to end, and no host reads on steps that do not log."""

from __future__ import annotations

import collections
import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from normlab.diagnostics import TrainingDiagnostics

WATCHED = {"act/0/p50", "act/1/std", "grad_norm/global", "weight_norm/0", "diag/loss"}


class Net(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=generator)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16)


def fit(root: Path, logger, steps: int = 6, extra: tuple[L.Callback, ...] = (), **diagnostics) -> TrainingDiagnostics:
    callback = TrainingDiagnostics(log_every_n_steps=2, dense_until_step=0, **diagnostics)
    trainer = L.Trainer(
        max_steps=steps,
        logger=logger,
        callbacks=[callback, *extra],
        default_root_dir=root,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Net(), loader())
    return callback


def test_tensorboard_gets_scalars_and_histograms_and_the_summary_lands_in_the_version_dir(tmp_path) -> None:
    fit(tmp_path, TensorBoardLogger(tmp_path, name="tb"))
    run = tmp_path / "tb" / "version_0"
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    assert set(acc.Tags()["scalars"]) >= WATCHED
    assert [e.step for e in acc.Scalars("grad_norm/global")] == [0, 2, 4]
    assert {"act/0", "act/1", "act/2"} <= set(acc.Tags()["histograms"])
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


class FinalizeAt(L.Callback):
    """Finalizes the loggers mid-run, as Lightning's SLURM handler does on the time-limit signal."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            for logger in trainer.loggers:
                logger.finalize("finished")


def test_tensorboard_writing_goes_on_after_the_logger_is_finalized_mid_run(tmp_path) -> None:
    fit(tmp_path, TensorBoardLogger(tmp_path, name="tb"), steps=10, extra=(FinalizeAt(3),))
    run = tmp_path / "tb" / "version_0"
    assert len(list(run.glob("events.out.tfevents.*"))) == 2  # a new event file after the close
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("grad_norm/global")] == [0, 2, 4, 6, 8]
    assert [e.step for e in acc.Histograms("act/0")] == [0, 2, 4, 6, 8]
    assert acc.Histograms("act/0")[-1].histogram_value.num == acc.Histograms("act/0")[0].histogram_value.num


def test_csv_gets_the_scalars_and_one_warning_about_histograms(tmp_path) -> None:
    with pytest.warns(UserWarning, match="CSVLogger shows no histograms"):
        fit(tmp_path, CSVLogger(tmp_path, name="csv"))
    run = tmp_path / "csv" / "version_0"
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert set(rows[0]) >= WATCHED
    logged = [r for r in rows if r["grad_norm/global"]]
    assert [int(r["step"]) for r in logged] == [0, 2, 4]
    assert all(float(r["grad_norm/global"]) > 0 for r in logged)
    assert (run / "summary.json").is_file()


def test_mlflow_local_file_store_gets_the_scalars(tmp_path, monkeypatch) -> None:
    pytest.importorskip("mlflow")
    from lightning.pytorch.loggers import MLFlowLogger

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    logger = MLFlowLogger(experiment_name="diag", tracking_uri=f"file:{tmp_path / 'mlruns'}")
    with pytest.warns(UserWarning, match="MLFlowLogger shows no histograms"):
        fit(tmp_path / "root", logger)
    metrics = tmp_path / "mlruns" / logger.experiment_id / logger.run_id / "metrics"
    history = (metrics / "grad_norm" / "global").read_text().split("\n")
    assert [int(line.split()[2]) for line in history if line] == [0, 2, 4]
    assert (metrics / "act" / "0" / "p50").is_file()
    # the summary goes to the run's own directory, not into the store shared by all runs
    assert (tmp_path / "root" / "summary.json").is_file()


def test_wandb_offline_gets_scalars_and_histograms(tmp_path, monkeypatch) -> None:
    wandb = pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged: list[dict] = []
    logger = WandbLogger(project="diag", save_dir=str(tmp_path / "wandb"), offline=True)
    original = logger.experiment.log
    monkeypatch.setattr(logger.experiment, "log", lambda data, *a, **k: (logged.append(data), original(data, *a, **k)))
    fit(tmp_path / "root", logger)
    wandb.finish()
    by_step: dict[int, dict] = {}
    for data in logged:  # each diagnostics part logs its own numbers of a step
        by_step.setdefault(data["trainer/global_step"], {}).update(data)
    steps = {s: d for s, d in by_step.items() if "grad_norm/global" in d}
    assert sorted(steps) == [0, 2, 4]
    assert isinstance(steps[0]["act/0"], wandb.Histogram) and "act/0/p50" in steps[0] and "diag/loss" in steps[0]
    assert (tmp_path / "root" / "summary.json").is_file()


def test_no_host_reads_in_the_hooks_on_steps_that_do_not_log(tmp_path, monkeypatch) -> None:
    """A read from the device (``item``, ``tolist``, ``cpu``, ``bool`` ...) made inside the callback's
    per-step hooks is counted per step: none on steps that do not log."""
    reads: collections.Counter = collections.Counter()
    state = {"step": None, "inside": 0}
    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            if state["inside"]:
                reads[state["step"]] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)

    class Counting(TrainingDiagnostics):
        pass

    hooks = ("on_train_batch_start", "on_before_backward", "on_before_optimizer_step", "on_train_batch_end")
    for hook in hooks:

        def wrapped(self, trainer, *args, _hook=hook, **kwargs):
            if _hook == "on_train_batch_start":
                state["step"] = trainer.global_step
            state["inside"] += 1
            try:
                return getattr(TrainingDiagnostics, _hook)(self, trainer, *args, **kwargs)
            finally:
                state["inside"] -= 1

        setattr(Counting, hook, wrapped)
    callback = Counting(log_every_n_steps=5, dense_until_step=0)
    trainer = L.Trainer(
        max_steps=16,
        logger=TensorBoardLogger(tmp_path),
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Net(), loader())
    assert reads[0] > 0 and reads[5] > 0  # the counting works: logging steps read
    assert {step: n for step, n in reads.items() if step % 5 != 0} == {}


class NaNAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            batch[0][0, 0] = float("nan")


def test_a_nonfinite_loss_between_logging_steps_is_found_at_its_step_and_stops_at_the_next_logging_step(
    tmp_path,
) -> None:
    callback = TrainingDiagnostics(log_every_n_steps=5, dense_until_step=0)
    trainer = L.Trainer(
        max_steps=30,
        logger=TensorBoardLogger(tmp_path, name="", version=""),
        callbacks=[NaNAt(7), callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Net(), loader())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["divergence_step"] == 7
    # step 7 did not log: its step is exact, its origin was not recorded
    assert (summary["divergence_layer"], summary["divergence_source"]) == ("not seen", "loss")
    assert trainer.global_step == 11  # stopped by the logging step 10, which read the flag


def test_the_parts_work_on_their_own_and_together_without_the_bundle(tmp_path) -> None:
    from normlab.diagnostics import ActivationStatistics, DivergenceMonitor, ParameterHealth, RunSummaryWriter

    cadence = {"log_every_n_steps": 2, "dense_until_step": 0}
    parts = [ActivationStatistics(**cadence), ParameterHealth(**cadence), DivergenceMonitor(**cadence)]
    trainer = L.Trainer(
        max_steps=6,
        logger=CSVLogger(tmp_path, name="", version=""),
        callbacks=[*parts, RunSummaryWriter()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Net(), loader())
    with open(tmp_path / "metrics.csv") as f:
        columns = set(next(csv.reader(f)))
    assert {"act/0/p50", "bn/1/batch_var_drift", "grad_norm/global", "update_ratio/3", "diag/loss"} <= columns
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["max_grad_norm"] > 0  # the parts report to the writer

    alone = DivergenceMonitor(log_every_n_steps=5, dense_until_step=0)
    trainer = L.Trainer(
        max_steps=30,
        logger=False,
        callbacks=[NaNAt(7), alone],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.warns(UserWarning, match=r"non-finite loss at step 7 \(layer not seen\): stopping"):
        trainer.fit(Net(), loader())
    assert trainer.global_step == 11 and alone.diverged
