"""TrainingDiagnostics in tiny real runs: tags, steps and histograms read back from the event files,
hooks only on logging steps, divergence found at the right step and layer, the run summary, config."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins import MixedPrecision
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar.layout_pb2 import Layout as CustomScalarsLayout
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from normlab.classifier import Classifier
from normlab.config import DiagnosticsSchema, validate
from normlab.data import DigitsDataModule
from normlab.diagnostics import TrainingDiagnostics
from normlab.errors import ConfigError


class PlainNet(L.LightningModule):
    """Not ours: a conv + batch norm + ReLU feature block and a linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.classifier = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(96, 1, 6, 6, generator=g), torch.randint(0, 3, (96,), generator=g)), 16)


def fit(tmp_path: Path, module: L.LightningModule, steps: int, *callbacks: L.Callback, **trainer) -> L.Trainer:
    run = L.Trainer(
        max_steps=steps,
        logger=TensorBoardLogger(tmp_path, name="", version=""),
        callbacks=list(callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **{"enable_checkpointing": False, **trainer},
    )
    run.fit(module, train_dataloaders=loader(), val_dataloaders=loader())
    return run


def events(run_dir: Path) -> EventAccumulator:
    files = sorted(run_dir.glob("events.out.tfevents*"))
    assert len(files) == 1, files
    acc = EventAccumulator(str(files[0]), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


class HookProbe(L.Callback):
    """Counts the steps on which the diagnostics recorded the forward pass (a module's ``forward``
    set on the instance), and checks that nothing is left on any other step (it runs before the
    diagnostics' hooks)."""

    def __init__(self) -> None:
        self.hooked_steps: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        assert not recording(pl_module)
        assert not torch.nn.modules.module._global_forward_hooks
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in pl_module.modules())

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if recording(pl_module):
            self.hooked_steps.append(trainer.global_step)


def recording(module: torch.nn.Module) -> bool:
    return any("forward" in m.__dict__ for m in module.modules())


def test_plain_module_gets_every_tag_at_the_logging_steps(tmp_path: Path) -> None:
    probe = HookProbe()
    diagnostics = TrainingDiagnostics(log_every_n_steps=10, dense_every_n_steps=5, dense_until_step=10)
    module = PlainNet()
    fit(tmp_path, module, 25, probe, diagnostics, val_check_interval=6)
    logging_steps = [0, 5, 10, 20]
    assert probe.hooked_steps == logging_steps
    assert not recording(module)

    acc = events(tmp_path)
    scalars, histograms = set(acc.Tags()["scalars"]), set(acc.Tags()["histograms"])
    modules = {"features.0": "Conv2d", "features.1": "BatchNorm2d", "features.2": "ReLU", "classifier": "Linear"}
    expected = {f"act/{m}/{s}" for m in modules for s in ("p15", "p50", "p85", "mean", "std", "nonfinite")}
    expected |= {"act/features.2/dead"}
    expected |= {f"bn/features.1/{s}" for s in ("batch_mean_drift", "batch_var_drift", "gamma_mean", "beta_mean")}
    layers = ["features.0", "features.1", "classifier"]
    expected |= {
        f"{s}/{layer}" for layer in layers for s in ("weight_norm", "grad_norm", "update_ratio", "grad_nonfinite")
    }
    expected |= {"grad_norm/global", "diag/loss", "diag/time_ms", "summary/diverged", "summary/max_grad_norm"}
    assert expected <= scalars, sorted(expected - scalars)
    assert not {t for t in scalars if t.endswith("/saturated")}  # no sigmoid or tanh here
    assert histograms == {f"act/{m}" for m in modules}
    layout = CustomScalarsLayout.FromString(acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {chart.title: chart for category in layout.category for chart in category.chart}
    assert charts["features.1"].margin.series[0].value == "act/features.1/p50"
    assert charts["grad_norm per layer"].multiline.tag == [f"^{re.escape(f'grad_norm/{layer}')}$" for layer in layers]
    for tag in ("act/features.0/p50", "grad_norm/classifier", "bn/features.1/batch_var_drift", "diag/time_ms"):
        assert [e.step for e in acc.Scalars(tag)] == logging_steps, tag
    for event in acc.Histograms("act/features.1"):
        assert len(event.histogram_value.bucket) == 80 and event.histogram_value.num == 16 * 4 * 6 * 6
        assert (event.histogram_value.min, event.histogram_value.max) == (-8.0, 8.0)
    p15, p50, p85 = (acc.Scalars(f"act/features.1/{p}")[-1].value for p in ("p15", "p50", "p85"))
    assert p15 < p50 < p85
    assert acc.Scalars("grad_norm/global")[0].value > 0

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["diverged"] is False and summary["global_step"] == 25
    assert summary["max_grad_norm"] >= summary["final_grad_norm"] > 0
    assert 0 <= summary["best_val_acc"] <= 1 and summary["target_acc"] == 0.9
    assert set(diagnostics.hparam_metrics) >= {"summary/diverged", "summary/max_grad_norm", "summary/steps_to_target"}

    restored = TrainingDiagnostics()
    restored.load_state_dict(diagnostics.state_dict())
    assert restored.summary.as_dict() == diagnostics.summary.as_dict()


def sigmoid_input_std(tmp_path: Path, model: str) -> list[float]:
    """The std of the third hidden layer's sigmoid input over a short digits run: the linear
    layer's output without batch norm, the batch norm's output with it."""
    net = {"_target_": "normlab.models.MLP", "input_shape": [1, 8, 8], "num_classes": 10, "norm": model}
    module = Classifier(
        net=net, num_classes=10, optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.5}
    )
    data = DigitsDataModule(batch_size=64, preprocess="normalize", input_shape=[1, 8, 8], num_classes=10)
    torch.manual_seed(0)
    run_dir = tmp_path / model
    trainer = L.Trainer(
        max_steps=300,
        logger=TensorBoardLogger(run_dir, name="", version=""),
        callbacks=[TrainingDiagnostics(log_every_n_steps=30, dense_until_step=0, include=["layer3.*"])],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=data)
    tag = "act/layer3.bn/std" if model == "batch" else "act/layer3.fc/std"
    return [e.value for e in events(run_dir).Scalars(tag)]


@pytest.mark.parametrize("every", [1, 2], ids=["update-with-next-step", "update-at-batch-end"])
def test_sgd_update_ratio_is_lr_times_grad_over_weight(tmp_path: Path, every: int) -> None:
    """Plain SGD moves each layer by lr times its gradient: whether a step's update is taken with the
    next logging step's norms (every step) or at the end of its batch, the ratios must agree."""
    diagnostics = TrainingDiagnostics(log_every_n_steps=every, dense_until_step=0)
    fit(tmp_path, PlainNet(), 12, diagnostics, val_check_interval=5)  # validation writes mid-run
    acc = events(tmp_path)
    for layer in ("features.0", "features.1", "classifier"):
        ratio, grad, weight = (acc.Scalars(f"{s}/{layer}") for s in ("update_ratio", "grad_norm", "weight_norm"))
        assert [e.step for e in ratio] == list(range(0, 12, every))
        for r, g, w in zip(ratio, grad, weight, strict=True):
            assert r.value == pytest.approx(0.05 * g.value / w.value, rel=1e-4), (layer, r.step)


def test_batch_norm_keeps_the_sigmoid_input_std_near_one_while_the_baseline_drifts(tmp_path: Path) -> None:
    bn, baseline = sigmoid_input_std(tmp_path, "batch"), sigmoid_input_std(tmp_path, "none")
    assert len(bn) == len(baseline) == 10
    assert all(0.75 < s < 1.5 for s in bn), bn  # normalized, then only gamma moves it
    drift = max(baseline) / min(baseline)
    assert drift > 2 and drift > 1.5 * max(bn) / min(bn) and min(baseline) < 0.5, baseline


class InjectNaN(L.Callback):
    """Puts NaN into what a module computes (through its input), or into a parameter's gradient, at one step."""

    def __init__(self, step: int, module: str | None = None, grad_of: str | None = None) -> None:
        self.step, self.module, self.grad_of = step, module, grad_of
        self.now = -1

    def on_train_start(self, trainer, pl_module) -> None:
        if self.module:
            pl_module.get_submodule(self.module).register_forward_pre_hook(self._input)
        if self.grad_of:
            pl_module.get_parameter(self.grad_of).register_hook(self._grad)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.now = trainer.global_step

    def _input(self, module, args):
        return (args[0] * float("nan"),) if module.training and self.now == self.step else args

    def _grad(self, grad):
        return grad * float("nan") if self.now == self.step else grad


@pytest.mark.parametrize(
    ("inject", "step", "layer", "source"),
    [
        (InjectNaN(10, module="features.1"), 10, "features.1", "activation"),  # a logging step: outputs recorded
        # a NaN gradient at step 9 corrupts the weights that logging step 10 starts from
        (InjectNaN(9, grad_of="classifier.weight"), 10, "classifier", "weights"),
        (InjectNaN(5, grad_of="classifier.weight"), 5, "classifier", "gradient"),  # a logging step
    ],
)
def test_injected_nan_is_reported_at_its_step_and_layer(tmp_path, capsys, inject, step, layer, source) -> None:
    diagnostics = TrainingDiagnostics(log_every_n_steps=10, dense_every_n_steps=5, dense_until_step=10)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)
    trainer = fit(tmp_path, PlainNet(), 40, inject, diagnostics, checkpoint, enable_checkpointing=True)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["status"], summary["divergence_step"], summary["divergence_layer"]) == ("diverged", step, layer)
    assert summary["divergence_source"] == source
    assert trainer.global_step < 40  # stopped cleanly, long before max_steps
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert f"diverged at step {step} in layer {layer}" in capsys.readouterr().out
    acc = events(tmp_path)
    assert acc.Scalars("summary/diverged")[0].value == 1
    assert acc.Scalars("summary/divergence_step")[0].value == step
    assert [e.step for e in acc.Scalars("act/features.0/p50")][:2] == [0, 5]  # the logs before it are intact
    if source == "activation":
        assert {e.step: e.value for e in acc.Scalars("act/features.0/nonfinite")}[step] == 0
        recorded = {e.step: e.value for e in acc.Scalars("act/features.1/nonfinite")}
        assert recorded[step] == 16 * 4 * 6 * 6 and recorded[5] == 0


def test_warn_records_the_divergence_and_trains_on(tmp_path: Path) -> None:
    diagnostics = TrainingDiagnostics(log_every_n_steps=10, on_nonfinite="warn")
    # the NaN gradient of step 3 gives step 4 a NaN loss, found by logging step 10 at its own step
    with pytest.warns(UserWarning, match=r"non-finite loss at step 4 \(layer not seen\): going on"):
        trainer = fit(tmp_path, PlainNet(), 12, InjectNaN(3, grad_of="classifier.weight"), diagnostics)
    assert trainer.global_step == 12
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["diverged"] and summary["divergence_step"] == 4 and summary["final_grad_norm"] is None


# ----------------------------------------------------------------------------- configuration
def test_steps_that_do_not_log_call_only_the_loss_history(tmp_path: Path) -> None:
    """On a step that does not log, the bundle calls only the parts' work of every batch (the
    divergence monitor's loss history); on a logging step, every part's hooks."""
    diagnostics = TrainingDiagnostics(log_every_n_steps=4, dense_until_step=0)
    calls: dict[int, set[str]] = {}

    class BatchStep(L.Callback):  # the step of the batch under way (global_step moves on before it ends)
        step = 0

        def on_train_batch_start(self, trainer, *args) -> None:
            BatchStep.step = trainer.global_step

    def counted(part: L.Callback, hook: str):
        inner = getattr(part, hook)

        def call(trainer, *args):
            calls.setdefault(BatchStep.step, set()).add(f"{type(part).__name__}.{hook}")
            return inner(trainer, *args)

        return call

    for part in (diagnostics.activations, diagnostics.parameters, diagnostics.divergence):
        hooks = ("on_train_batch_start", "on_before_backward", "on_before_optimizer_step", "on_train_batch_end")
        for hook in (*hooks, "on_every_backward"):
            if hook in type(part).__dict__:
                setattr(part, hook, counted(part, hook))
    fit(tmp_path, PlainNet(), 9, BatchStep(), diagnostics)
    assert calls[1] == calls[2] == calls[3] == calls[5] == {"DivergenceMonitor.on_every_backward"}
    assert calls[0] == calls[4] == calls[8]  # logging steps: every part's hooks
    assert {"ParameterHealth.on_train_batch_end", "ActivationStatistics.on_train_batch_start"} <= calls[4]
    assert "DivergenceMonitor.on_every_backward" in calls[4]  # from its own on_before_backward
    assert len(calls[4]) == 10  # ActivationStatistics 3, ParameterHealth 2, DivergenceMonitor 5


def test_bad_arguments_fail_at_once_naming_the_value() -> None:
    with pytest.raises(ValueError, match="on_nonfinite can be .*got 'explode'"):
        TrainingDiagnostics(on_nonfinite="explode")
    with pytest.raises(ValueError, match=r"percentiles must lie in \[0, 100\], got \[50, 150\]"):
        TrainingDiagnostics(percentiles=[50, 150])
    with pytest.raises(ValueError, match=r"hist_range must be \[low, high\] with low < high, got \[3, -3\]"):
        TrainingDiagnostics(hist_range=[3, -3])


def test_schema_mirrors_the_constructor() -> None:
    defaults = {n: p.default for n, p in inspect.signature(TrainingDiagnostics).parameters.items()}
    schema = DiagnosticsSchema()
    assert set(defaults) == {f for f in schema.__dataclass_fields__ if f != "_target_"}
    for name, default in defaults.items():
        value = getattr(schema, name)
        value = value.value if hasattr(value, "value") else value
        assert (list(value) if isinstance(value, list | tuple) else value) == (
            list(default) if isinstance(default, list | tuple) else default
        ), name


def test_training_runs_have_the_diagnostics_and_their_ranges_are_checked(compose_cfg) -> None:
    cfg = compose_cfg(["model=bn_mlp"])
    assert cfg.callbacks.diagnostics._target_ == "normlab.diagnostics.TrainingDiagnostics"
    assert cfg.callbacks.diagnostics.summary_path.endswith("summary.json")
    with pytest.raises(ConfigError, match="callbacks.diagnostics.bins=0 is out of range"):
        validate(compose_cfg(["callbacks.diagnostics.bins=0"]))
    with pytest.raises(Exception, match="on_nonfinite"):
        compose_cfg(["callbacks.diagnostics.on_nonfinite=explode"])
    assert "diagnostics" not in compose_cfg(["~callbacks.diagnostics"]).callbacks


@pytest.mark.slow  # four processes: the benchmark's and its three peak-memory runs
def test_benchmark_prints_the_overhead_ratios_as_json() -> None:
    script = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_diagnostics.py"
    args = [
        "--blocks",
        "2",
        "--block-steps",
        "50",
        "--naive-steps",
        "12",
        "--warmup",
        "2",
        "--memory-steps",
        "20",
        "--json",
    ]
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("overhead", "overhead_wall", "naive"):
        assert set(result[key]) == {"1", "10", "50"} and all(v > 0 for v in result[key].values())
    assert "every  1 steps: ours" in proc.stdout
    assert set(result["peak_memory_mb"]) == {"none", "1", "50"} and all(
        v > 0 for v in result["peak_memory_mb"].values()
    )


ALTERNATE = """
import lightning as L
from benchmark_common import fit_bare
from benchmark_diagnostics import BATCH, NET, OPTIMIZER, Alternate
from random_data import RandomDataModule
from normlab.classifier import Classifier

class Steps(L.Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append(trainer.global_step)

steps = Steps()
alternate = Alternate(steps, 5)
datamodule = RandomDataModule(batch_size=BATCH)
datamodule.setup()
fit_bare(Classifier(net=NET, num_classes=10, optimizer=OPTIMIZER), datamodule, 30, [steps, alternate])
print(steps.seen, len(alternate.marks), [len(x) for x in alternate.ratios(0)])
"""


def test_benchmark_takes_the_callback_out_for_every_other_block() -> None:
    """The benchmark's ``Alternate``, run from the scripts folder as the benchmark itself is."""
    scripts = Path(__file__).resolve().parents[1] / "scripts"
    env = {**os.environ, "PYTHONPATH": str(scripts)}
    proc = subprocess.run([sys.executable, "-c", ALTERNATE], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # blocks 0, 2 and 4 have it; 6 block ends, so 2 timed blocks with it between blocks without
    assert proc.stdout.strip().splitlines()[-1] == f"{[*range(5), *range(10, 15), *range(20, 25)]} 6 [2, 2, 2]"


def test_a_data_parallel_submodule_is_left_unwatched_with_a_warning(tmp_path: Path) -> None:
    module = PlainNet()
    module.classifier = nn.DataParallel(module.classifier)  # on a CPU it runs the module itself
    with pytest.warns(UserWarning, match="under nn.DataParallel are not watched"):
        fit(tmp_path, module, 4, TrainingDiagnostics(log_every_n_steps=2))
    scalars = set(events(tmp_path).Tags()["scalars"])
    watched = {t.split("/")[1] for t in scalars if t.startswith("act/")}
    assert watched == {"0", "1", "2"}  # features.0-2, named without the first component they share
    assert "grad_norm/classifier.module" in scalars


class FailingNet(PlainNet):
    """Raises in the training step of step 5, a logging step, after its forward pass."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        if self.trainer.global_step == 5:
            raise RuntimeError("a bug in the training step")
        return loss


def test_an_exception_in_a_logging_step_leaves_the_modules_as_they_were(tmp_path: Path) -> None:
    module = FailingNet()
    with pytest.raises(RuntimeError, match="a bug in the training step"):
        fit(tmp_path, module, 12, TrainingDiagnostics(log_every_n_steps=5))
    assert not recording(module)


class SigmoidNet(PlainNet):
    """PlainNet's shapes, with a sigmoid where it has a ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.features[2] = nn.Sigmoid()


def test_a_callback_fit_again_on_another_model_lays_out_that_model(tmp_path: Path) -> None:
    diagnostics = TrainingDiagnostics(log_every_n_steps=2)
    fit(tmp_path / "relu", PlainNet(), 4, diagnostics)
    fit(tmp_path / "sigmoid", SigmoidNet(), 4, diagnostics)
    tags = set(events(tmp_path / "sigmoid").Tags()["scalars"])
    assert "act/features.2/saturated" in tags and "act/features.2/dead" not in tags


def scaled_fp16() -> dict:
    """float16 autocast with a GradScaler, which scales the loss and the gradients by 1024 (on the
    CPU, ``precision="16-mixed"`` falls back to bfloat16 without one)."""
    return {"plugins": [MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=1024.0))]}


@pytest.mark.parametrize("precision", [scaled_fp16, lambda: {"precision": "bf16-true"}], ids=["fp16-scaled", "bf16"])
def test_reduced_precision_logs_the_loss_and_gradients_as_full_precision_does(tmp_path: Path, precision) -> None:
    """The GradScaler's loss and gradients are logged unscaled; a bfloat16 model (its batch norms'
    state too) is measured as it is: either way the first step's numbers match a float32 run's."""

    def first_step(run_dir: Path, **trainer) -> list[float]:
        torch.manual_seed(0)
        fit(run_dir, PlainNet(), 1, TrainingDiagnostics(log_every_n_steps=1), **trainer)
        acc = events(run_dir)
        tags = [
            "diag/loss",
            "grad_norm/global",
            "grad_norm/classifier",
            "act/features.1/std",
            "bn/features.1/gamma_mean",
        ]
        return [acc.Scalars(tag)[0].value for tag in tags]

    assert first_step(tmp_path / "reduced", **precision()) == pytest.approx(first_step(tmp_path / "32"), rel=0.03)


def test_compiled_model_keeps_training_and_its_names(tmp_path: Path) -> None:
    module = PlainNet()
    module.features = torch.compile(module.features, backend="eager")  # names gain `_orig_mod`
    trainer = fit(tmp_path, module, 12, TrainingDiagnostics(log_every_n_steps=5))
    assert trainer.global_step == 12
    scalars = set(events(tmp_path).Tags()["scalars"])
    assert {"act/features.0/p50", "grad_norm/features.0", "grad_norm/classifier"} <= scalars
    assert not any("_orig_mod" in tag for tag in scalars)


class Hot(PlainNet):
    """A learning rate orders of magnitude too high."""

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e4)


def test_an_update_orders_of_magnitude_above_healthy_warns_once_at_its_step(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"at step 0 the update of layer \S+ is \S+ times its weights") as caught:
        fit(tmp_path, Hot(), 4, TrainingDiagnostics(log_every_n_steps=1, on_nonfinite="warn"))
    assert sum("times its weights" in str(w.message) for w in caught) == 1


PHASES = """
import json
from diagnostics_phases import phases
# two steps of marks: (step, hook, marker side, CPU seconds)
marks = []
t = 0.0
for step in (4, 5):
    for hook, diagnostics, lightning in (
        ("on_train_batch_start", 1e-6, 100e-6),
        ("on_before_backward", 200e-6 * (step == 4), 50e-6),
        ("on_before_optimizer_step", 3e-6, 20e-6),
        ("on_train_batch_end", 7e-6, 30e-6),
    ):
        marks.append((step, hook, "before", t)); t += diagnostics
        marks.append((step, hook, "after", t)); t += lightning
print(json.dumps(phases(marks, every=2)))
"""


def test_phases_split_a_step_into_the_diagnostics_hooks_and_lightnings_work_between() -> None:
    scripts = Path(__file__).resolve().parents[1] / "scripts"
    proc = subprocess.run([sys.executable, "-c", PHASES], capture_output=True, text=True, cwd=scripts, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = {k: round(v, 3) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}
    assert found == {  # step 4 only (every=2); the last phase runs to step 5's first mark
        "diagnostics: on_train_batch_start": 1.0,
        "forward pass (with the recording)": 100.0,
        "diagnostics: on_before_backward": 200.0,
        "backward pass": 50.0,
        "diagnostics: on_before_optimizer_step": 3.0,
        "optimizer step": 20.0,
        "diagnostics: on_train_batch_end": 7.0,
        "loop and data loading": 30.0,
    }


@pytest.mark.slow
def test_the_phases_script_prints_a_row_per_phase() -> None:
    script = Path(__file__).resolve().parents[1] / "scripts" / "diagnostics_phases.py"
    args = ["--steps", "30", "--runs", "1"]
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.rsplit(None, 3)[0]: [float(v) for v in line.split()[-3:]] for line in proc.stdout.splitlines()[-9:]}
    assert "forward pass (with the recording)" in rows and "diagnostics: on_before_backward" in rows
    assert rows["diagnostics: on_before_backward"][2] > 0  # the statistics cost something
    phases = [v[1] for k, v in rows.items() if k != "step"]
    # the step is the sum of the phases; each figure is printed rounded to the microsecond
    assert rows["step"][1] == pytest.approx(sum(phases), abs=0.5 * (len(phases) + 1))
