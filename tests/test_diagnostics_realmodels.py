"""The diagnostics on models like real ones, with default settings, against exact values computed here:
a tiny Hugging Face GPT-2 (built from its config), a transformer from torch's modules, residual
convolutions with BatchNorm2d + ReLU(inplace=True) and with GroupNorm, gradient accumulation, and
a non-finite weight in a layer the outputs do not watch."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from normlab.diagnostics import TrainingDiagnostics

V = 50


class Task(L.LightningModule):
    """Next-token prediction for a language model, classification otherwise; keeps each
    micro-batch's loss by optimizer step."""

    def __init__(self, net: nn.Module, lm: bool, hf: bool = False) -> None:
        super().__init__()
        self.net, self.lm, self.hf = net, lm, hf
        self.losses: dict[int, list[float]] = {}

    def training_step(self, batch, batch_idx):
        if self.lm:
            x = batch[0]
            out = self.net(x[:, :-1])
            logits = out.logits if self.hf else out
            loss = nn.functional.cross_entropy(logits.reshape(-1, V), x[:, 1:].reshape(-1))
        else:
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
        self.losses.setdefault(self.trainer.global_step, []).append(loss.item())
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class Exact(L.Callback):
    """Each named module's output at step 0, copied as it leaves the module (the hook returns
    nothing, so the module's output stays its own), and the exact global gradient norm."""

    def __init__(self, names: list[str]) -> None:
        self.names, self.outputs, self.grad_norm = names, {}, None

    def on_train_start(self, trainer, pl_module) -> None:
        modules = dict(pl_module.net.named_modules())
        self.handles = [modules[n].register_forward_hook(self._keep(n)) for n in self.names]

    def _keep(self, name: str):
        def hook(module, inputs, output) -> None:
            first = output[0] if isinstance(output, tuple) else output
            self.outputs.setdefault(name, first.detach().clone())

        return hook

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == 0:
            unique = {id(p): p for p in pl_module.parameters() if p.grad is not None}
            self.grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in unique.values()])).item()
            for handle in self.handles:
                handle.remove()


def fit(root: Path, task: Task, data: DataLoader, *callbacks: L.Callback, steps: int = 2, **trainer):
    run = L.Trainer(
        max_steps=steps,
        logger=TensorBoardLogger(root, name="", version=""),
        callbacks=list(callbacks),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run.fit(task, data)
    events = EventAccumulator(str(root), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    scalars = {t: {e.step: e.value for e in events.Scalars(t)} for t in events.Tags()["scalars"]}
    return run, scalars, set(events.Tags()["histograms"])


def assert_percentiles_exact(scalars: dict, output: torch.Tensor, name: str) -> None:
    values = output.flatten().double()
    exact = {p: torch.quantile(values, p / 100).item() for p in (15, 50, 85)}
    spread = exact[85] - exact[15]
    for p, value in exact.items():
        assert abs(scalars[f"act/{name}/p{p}"][0] - value) <= 0.02 * spread, (name, p)
    assert scalars[f"act/{name}/std"][0] == pytest.approx(values.std(correction=0).item(), rel=1e-3)


def lm_data() -> DataLoader:
    return DataLoader(TensorDataset(torch.randint(0, V, (64, 17), generator=torch.Generator().manual_seed(0))), 8)


def test_tiny_gpt2_is_watched_by_role_and_its_tied_head_counted_once(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    config.bos_token_id = config.eos_token_id = 0
    model = transformers.GPT2LMHeadModel(config)
    exact = Exact(["transformer.wte", "transformer.h.0.attn.c_attn", "transformer.h.1.ln_2"])
    _, scalars, histograms = fit(tmp_path, Task(model, lm=True, hf=True), lm_data(), exact, TrainingDiagnostics())
    for name in ("transformer.wte", "transformer.h.0.attn.c_attn", "transformer.h.0.mlp.act", "transformer.h.0"):
        assert f"act/{name}/p50" in scalars and f"act/{name}" in histograms, name  # Conv1D, NewGELU, a block
    assert {"norm/transformer.h.1.ln_2/input_std", "norm/transformer.h.1.ln_2/gamma_mean"} <= scalars.keys()
    for name, output in exact.outputs.items():
        assert_percentiles_exact(scalars, output, name)
    assert scalars["grad_norm/global"][0] == pytest.approx(exact.grad_norm, rel=1e-4)  # lm_head is wte
    assert "grad_norm/lm_head" not in scalars


class TorchLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, 32)
        nn.init.normal_(self.emb.weight, std=0.01)  # activations a hundred times smaller than the default range
        self.block = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(32, V)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.emb(x)))


def test_a_torch_transformer_gets_exact_percentiles_at_a_small_scale_and_the_loss_of_accumulated_steps(
    tmp_path,
) -> None:
    torch.manual_seed(0)
    task = Task(TorchLM(), lm=True)
    exact = Exact(["emb", "block", "block.self_attn"])
    diagnostics = TrainingDiagnostics(log_every_n_steps=1)
    _, scalars, _ = fit(tmp_path, task, lm_data(), exact, diagnostics, steps=3, accumulate_grad_batches=2)
    assert {"act/block/p50", "act/block.self_attn/p50", "act/block.norm1/p50"} <= scalars.keys()
    for name, output in exact.outputs.items():
        assert_percentiles_exact(scalars, output, name)
    for step in range(3):  # the optimizer step's loss: the mean over its two micro-batches
        assert len(task.losses[step]) == 2
        assert scalars["diag/loss"][step] == pytest.approx(sum(task.losses[step]) / 2, rel=1e-5)


class Residual(nn.Module):
    def __init__(self, norm: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8) if norm == "batch" else nn.GroupNorm(2, 8)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.relu(self.bn(self.conv(x)))


class ResNetlet(nn.Module):
    def __init__(self, norm: str) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = Residual(norm)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(self.stem(x)).mean((2, 3)))


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_a_norm_before_an_inplace_relu_is_measured_as_it_left_the_norm(tmp_path, norm: str) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    data = DataLoader(
        TensorDataset(torch.randn(64, 3, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g)), 16
    )
    exact = Exact(["block.conv", "block.bn", "block.relu"])
    _, scalars, _ = fit(tmp_path, Task(ResNetlet(norm), lm=False), data, exact, TrainingDiagnostics())
    assert_percentiles_exact(scalars, exact.outputs["block.bn"], "block.bn")
    assert scalars["act/block.bn/p15"][0] < -0.5  # not the ReLU's output, whose p15 is 0
    assert abs(scalars["act/block.relu/p15"][0]) < 0.01
    prefix = "bn" if norm == "batch" else "norm"  # what the norm normalizes: the convolution's output
    conv = exact.outputs["block.conv"].double()
    assert scalars[f"{prefix}/block.bn/input_std"][0] == pytest.approx(conv.std(correction=0).item(), rel=1e-4)
    assert scalars[f"{prefix}/block.bn/input_mean"][0] == pytest.approx(conv.mean().item(), abs=1e-5)


class BreakWeight(L.Callback):
    """Puts an inf into one weight when a step begins."""

    def __init__(self, step: int, parameter: str) -> None:
        self.step, self.parameter = step, parameter

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.get_parameter(self.parameter).view(-1)[0] = float("inf")


def test_a_nonfinite_weight_in_an_unwatched_layer_is_named(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    diagnostics = TrainingDiagnostics(log_every_n_steps=2, exclude=["block.*"])  # the block's outputs unwatched
    run, _, _ = fit(
        tmp_path, Task(TorchLM(), lm=True), lm_data(), BreakWeight(4, "net.block.linear1.weight"), diagnostics, steps=20
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["divergence_step"], summary["divergence_layer"], summary["divergence_source"]) == (
        4,
        "block.linear1",
        "weights",
    )
    assert run.global_step == 5 and "diverged at step 4 in layer block.linear1" in capsys.readouterr().out


@pytest.mark.slow
def test_the_real_models_benchmark_prints_what_is_watched_and_the_overhead_as_json() -> None:
    script = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_realmodels.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--blocks", "1", "--block-steps", "20", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"torch transformer", "residual CNN"} <= result.keys()
    cnn = result["residual CNN"]
    assert cnn["roles"] == {"weight": 4, "norm": 3, "activation": 3} and cnn["overhead"] > 0
