"""LandscapeProbes in real (tiny) training runs: tags, cadences, untouched state, summary, config."""

from __future__ import annotations

import copy
import json
import random
import statistics
from collections import OrderedDict
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from normlab.classifier import Classifier
from normlab.config import validate
from normlab.data import DigitsDataModule
from normlab.data.loader import TensorBatchLoader
from normlab.diagnostics import LandscapeProbes
from normlab.diagnostics.landscape import INSTRUMENTS
from normlab.errors import ConfigError

ALL_AT = dict.fromkeys(INSTRUMENTS, 1)


class Tiny(L.LightningModule):
    """Linear-BN-ReLU-dropout-linear with a metric, a list of predictions, self.log and a dict output;
    SGD with momentum."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(6, 16), bn=nn.BatchNorm1d(16), act=nn.ReLU(), drop=nn.Dropout(0.3), head=nn.Linear(16, 3)
            )
        )
        self.acc = MulticlassAccuracy(3)
        self.predictions: list[torch.Tensor] = []  # Python state a probe must not add to

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.acc.update(logits, y)
        self.predictions.append(logits.detach().argmax(1))
        loss = F.cross_entropy(logits, y)
        self.log("train/loss", loss)
        return {"loss": loss}

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(64, 6, generator=g), torch.randint(0, 3, (64,), generator=g)
        return TensorBatchLoader(x, y, batch_size=16, shuffle=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


class Recorder(Logger):
    """Keeps every log_metrics call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, dict[str, float]]] = []

    name = "recorder"
    version = "0"

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls.append((step, dict(metrics)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        return None


def fit(
    tmp_path: Path,
    *callbacks: L.Callback,
    steps: int = 4,
    module: L.LightningModule | None = None,
    ckpt_path: Path | None = None,
    logger: Recorder | None = None,
):
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    module = module or Tiny()
    logger = logger or Recorder()
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=logger,
        callbacks=list(callbacks),
        default_root_dir=tmp_path,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(module, ckpt_path=ckpt_path)
    return trainer, module, logger


def landscape_calls(logger: Recorder) -> list[tuple[int, dict[str, float]]]:
    return [(s, m) for s, m in logger.calls if any(k.startswith("landscape/") for k in m)]


class StateSpy(L.Callback):
    """Records everything a probe must leave alone, at the two hooks where the probes run."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.seen.append(snapshot(pl_module, optimizer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen.append(snapshot(pl_module, trainer.optimizers[0]))


def snapshot(module: L.LightningModule, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return {
        "params": {k: v.detach().clone() for k, v in module.named_parameters()},
        "grads": {k: None if v.grad is None else v.grad.clone() for k, v in module.named_parameters()},
        "buffers": {k: v.clone() for k, v in module.named_buffers()},
        "metric": {k: v.clone() for k, v in module.acc.metric_state.items()} | {"count": module.acc.update_count},
        "predictions": {str(i): p.clone() for i, p in enumerate(module.predictions)},
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state()[1].copy(),
        "python_rng": random.getstate(),
    }


def assert_identical(a: Any, b: Any, where: str) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    else:
        assert a == b, where


@pytest.mark.parametrize("instrument", INSTRUMENTS)
def test_each_probe_leaves_the_training_state_bit_identical(tmp_path: Path, instrument: str) -> None:
    before, after = StateSpy(), StateSpy()
    _, _, logger = fit(tmp_path, before, LandscapeProbes(**{instrument: 1}), after, steps=3)
    assert len(landscape_calls(logger)) == 3  # the probe did run at every step
    assert len(before.seen) == len(after.seen) == 6
    for i, (a, b) in enumerate(zip(before.seen, after.seen, strict=True)):
        assert_identical(a, b, f"{instrument} hook call {i}")


def test_training_goes_on_as_if_no_probe_had_run(tmp_path: Path) -> None:
    trainer_a, plain, _ = fit(tmp_path / "a", steps=6)
    state_a = snapshot(plain, trainer_a.optimizers[0])
    trainer_b, probed, _ = fit(tmp_path / "b", LandscapeProbes(**ALL_AT), steps=6)
    assert_identical(state_a, snapshot(probed, trainer_b.optimizers[0]), "after 6 steps")


def test_the_template_classifier_trains_the_same_with_every_probe(tmp_path: Path) -> None:
    # Classifier keeps predictions in a list between metric updates: the probes must not add to it.
    def run(*callbacks: L.Callback) -> tuple[dict[str, torch.Tensor], list]:
        L.seed_everything(0, verbose=False)
        net = {"_target_": "normlab.models.MLP", "input_shape": [1, 8, 8], "num_classes": 10, "norm": "batch"}
        module = Classifier(net=net, num_classes=10, optimizer={"_target_": "torch.optim.SGD", "_partial_": True})
        datamodule = DigitsDataModule(batch_size=64, input_shape=[1, 8, 8], num_classes=10)
        logger = Recorder()
        trainer = L.Trainer(
            max_steps=25,
            logger=logger,
            callbacks=list(callbacks),
            default_root_dir=tmp_path,
            limit_val_batches=0,
            log_every_n_steps=4,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(module, datamodule=datamodule)
        logged = [(s, {k: v for k, v in m.items() if not k.startswith("landscape/")}) for s, m in logger.calls]
        return dict(module.state_dict()), [(s, m) for s, m in logged if m]

    plain = run()
    probed = run(LandscapeProbes(**dict.fromkeys(INSTRUMENTS, 10)))
    assert_identical(plain[0], probed[0], "state_dict")
    assert any("train/acc" in m for _, m in plain[1])  # an epoch ended: its accuracy is compared too
    assert plain[1] == probed[1]


def test_each_instrument_logs_its_tags_at_its_cadence_in_one_write_per_step(tmp_path: Path) -> None:
    probes = LandscapeProbes(loss_variation=2, grad_predictiveness=4, sharpness=3, ics=4)
    _, _, logger = fit(tmp_path, probes, steps=7)
    calls = landscape_calls(logger)
    assert [s for s, _ in calls] == [0, 2, 3, 4, 6]
    walk = {"landscape/time_ms/along_update", "landscape/update_norm"}
    variation = {f"landscape/loss_variation/{k}" for k in ("min", "max", "range")}
    predictiveness = {"landscape/grad_predictiveness/min", "landscape/grad_predictiveness/max"}
    sharpness = {
        f"landscape/{k}"
        for k in ("sharpness", "sharpness_threshold", "sharpness_ratio", "sharpness_iterations", "time_ms/sharpness")
    }
    ics = {"landscape/ics/head/l2", "landscape/ics/head/cos", "landscape/time_ms/ics"}  # fc1 has nothing before it
    expected = {
        0: walk | variation | predictiveness | sharpness | ics,
        2: walk | variation,
        3: sharpness,
        4: walk | variation | predictiveness | ics,
        6: walk | variation | sharpness,
    }
    for step, metrics in calls:
        assert set(metrics) == expected[step], step
    first = calls[0][1]
    assert first["landscape/sharpness_threshold"] == pytest.approx((2 + 2 * 0.9) / 0.1)  # heavy-ball momentum 0.9
    assert first["landscape/sharpness_ratio"] == pytest.approx(first["landscape/sharpness"] / 38)
    assert probes.hparam_metrics == [
        "landscape/loss_variation/range",
        "landscape/grad_predictiveness/max",
        "landscape/sharpness",
    ]


def test_final_values_are_merged_into_summary_json(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"diagnostics": {"kept": 1}}))
    probes = LandscapeProbes(beta_smoothness=2, summary_path=str(summary))
    _, _, logger = fit(tmp_path, probes, steps=5)
    data = json.loads(summary.read_text())
    assert data["diagnostics"] == {"kept": 1}
    last_step, last = landscape_calls(logger)[-1]
    assert data["landscape"]["step"] == last_step == 4
    assert data["landscape"]["final"]["beta_smoothness"] == pytest.approx(last["landscape/beta_smoothness"])
    assert [s for s, _ in data["landscape"]["history"]["beta_smoothness"]] == [0, 2, 4]
    assert not list(tmp_path.glob(".summary.json*"))  # no temporary file left behind


def test_history_survives_a_resume(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    trainer, _, _ = fit(tmp_path, LandscapeProbes(sharpness=2, summary_path=str(summary)), steps=3)
    trainer.save_checkpoint(tmp_path / "mid.ckpt")
    resumed = LandscapeProbes(sharpness=2, summary_path=str(summary))
    _, _, logger = fit(tmp_path, resumed, steps=5, ckpt_path=tmp_path / "mid.ckpt")
    assert [s for s, _ in landscape_calls(logger)] == [4]  # the resumed run probes only what is left
    history = json.loads(summary.read_text())["landscape"]["history"]["sharpness"]
    assert [s for s, _ in history] == [0, 2, 4]


def test_summary_defaults_to_the_run_directory(tmp_path: Path) -> None:
    fit(tmp_path, LandscapeProbes(sharpness=10), steps=1)  # Recorder has no directory: default_root_dir
    assert "sharpness" in json.loads((tmp_path / "summary.json").read_text())["landscape"]["final"]


class SharedStore(Recorder):
    """A logger whose files live in a folder that many runs share, as MLflow's and W&B's do."""

    def __init__(self, save_dir: Path) -> None:
        super().__init__()
        self._save_dir = str(save_dir)

    @property
    def save_dir(self) -> str:
        return self._save_dir


def test_summary_stays_out_of_a_loggers_shared_folder(tmp_path: Path) -> None:
    shared = tmp_path / "store"
    for run in ("a", "b"):
        fit(
            tmp_path / run,
            LandscapeProbes(sharpness=10 if run == "a" else 0, ics=10),
            steps=1,
            logger=SharedStore(shared),
        )
    assert not (shared / "summary.json").exists()
    assert "sharpness" in json.loads((tmp_path / "a" / "summary.json").read_text())["landscape"]["final"]
    assert "sharpness" not in json.loads((tmp_path / "b" / "summary.json").read_text())["landscape"]["final"]


def test_a_given_loss_fn_measures_the_same_landscape(tmp_path: Path) -> None:
    def loss_fn(module: Tiny, batch) -> torch.Tensor:
        return F.cross_entropy(module.net(batch[0]), batch[1])

    _, _, by_step = fit(tmp_path / "a", LandscapeProbes(sharpness=1, grad_predictiveness=1), steps=2)
    _, _, by_fn = fit(tmp_path / "b", LandscapeProbes(sharpness=1, grad_predictiveness=1, loss_fn=loss_fn), steps=2)
    for (_, a), (_, b) in zip(landscape_calls(by_step), landscape_calls(by_fn), strict=True):
        for tag in ("landscape/sharpness", "landscape/grad_predictiveness/max"):
            assert a[tag] == pytest.approx(b[tag], rel=1e-5), tag


def test_ics_layers_can_be_named(tmp_path: Path) -> None:
    _, _, logger = fit(tmp_path, LandscapeProbes(ics=1, ics_layers=["net.bn", "net.head"]), steps=1)
    ((_, metrics),) = landscape_calls(logger)
    assert {k for k in metrics if k.startswith("landscape/ics/")} == {
        f"landscape/ics/{layer}/{stat}" for layer in ("bn", "head") for stat in ("l2", "cos")
    }


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ics": -1}, "cadences must be whole numbers"),
        ({"sharpness": 2.5}, "cadences must be whole numbers"),
        ({"step_multiples": [1.0, 0.0]}, "step_multiples must be positive"),
        ({"step_multiples": []}, "step_multiples must be positive"),
        ({"power_iterations": 0}, "power_iterations must be >= 1"),
        ({"tolerance": 0.0}, "tolerance must be > 0"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LandscapeProbes(**kwargs)


def test_unknown_ics_layer_fails_at_setup_naming_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no module named \['net.fc2'\].*'net.fc1', 'net.head'"):
        fit(tmp_path, LandscapeProbes(ics=1, ics_layers=["net.fc2"]), steps=1)


def test_manual_optimization_needs_a_loss_fn(tmp_path: Path) -> None:
    module = Tiny()
    module.automatic_optimization = False
    with pytest.raises(ConfigError, match="give them a loss_fn"):
        fit(tmp_path, LandscapeProbes(sharpness=1), steps=1, module=module)


def test_diagnostics_full_adds_every_probe_to_the_default_callbacks(compose_cfg) -> None:
    cfg = compose_cfg(["callbacks=diagnostics_full"])
    default = compose_cfg(["callbacks=default"])
    assert set(default.callbacks) < set(cfg.callbacks)
    assert set(cfg.callbacks) - set(default.callbacks) == {"landscape"}
    probes = instantiate(cfg.callbacks.landscape)
    assert isinstance(probes, LandscapeProbes)
    assert probes.every == dict.fromkeys(INSTRUMENTS, 500)
    assert cfg.callbacks.landscape.summary_path.endswith("run/summary.json")


def test_landscape_config_is_checked_against_its_schema(compose_cfg) -> None:
    with pytest.raises(Exception, match="callbacks.landscape.sharpnes"):
        compose_cfg(["callbacks=diagnostics_full", "callbacks.landscape.sharpnes=5"])
    with pytest.raises(ConfigError, match=r"callbacks.landscape.ics=-5 is out of range"):
        validate(compose_cfg(["callbacks=diagnostics_full", "callbacks.landscape.ics=-5"]))


def digits_run(norm: str, steps: int, every: int, seed: int) -> list[float]:
    """grad_predictiveness/max over a ReLU MLP's training on digits (the default SGD: lr 0.3, momentum 0.9)."""
    L.seed_everything(seed, verbose=False)
    net = {
        "_target_": "normlab.models.MLP",
        "input_shape": [1, 8, 8],
        "num_classes": 10,
        "activation": "relu",
        "norm": norm,
    }
    optimizer = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.3, "momentum": 0.9}
    module = Classifier(net=net, num_classes=10, optimizer=optimizer)
    datamodule = DigitsDataModule(
        batch_size=64, preprocess="normalize", seed=seed, input_shape=[1, 8, 8], num_classes=10
    )
    probes = LandscapeProbes(grad_predictiveness=every)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        callbacks=[probes],
        limit_val_batches=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=datamodule)
    return [v for _, v in probes.state_dict()["history"]["grad_predictiveness/max"]]


def test_batch_norm_makes_the_gradient_more_predictive_on_digits(tmp_path: Path, monkeypatch) -> None:
    # Santurkar et al. (2018), fig. 4: along the gradient, the baseline's gradient changes more.
    # Seed 1, 200 steps, a probe every 20: mean of grad_predictiveness/max ~5.7 (baseline) against
    # ~0.6 (BN); seeds 0-5 all give 4-23x. With the sigmoid MLP the baseline sits on a plateau
    # where every gradient is tiny, so the comparison needs ReLU.
    monkeypatch.chdir(tmp_path)  # summary.json of these logger-less runs lands here
    baseline = statistics.mean(digits_run("none", steps=200, every=20, seed=1))
    bn = statistics.mean(digits_run("batch", steps=200, every=20, seed=1))
    assert baseline > 2 * bn, (baseline, bn)
