"""What the diagnostics watch on models like real ones, and what they cost at the default cadence.

Trains, on the CPU with random data, a tiny Hugging Face GPT-2 (built from its config; skipped
without ``transformers``), a transformer from torch's own modules, and a residual CNN with
BatchNorm2d + ReLU(inplace=True), each once with ``TrainingDiagnostics()`` taken out of the Trainer
for every other block of steps (``benchmark_diagnostics.Alternate``), and prints per model the
watched modules and the median ratio of step time with the diagnostics to without.

    python scripts/benchmark_realmodels.py [--blocks 6] [--block-steps 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import warnings

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmark_diagnostics import Alternate
from normlab.diagnostics import TrainingDiagnostics

V, D = 512, 64


class Task(L.LightningModule):
    def __init__(self, net: nn.Module, kind: str) -> None:
        super().__init__()
        self.net, self.kind = net, kind

    def training_step(self, batch, batch_idx):
        if self.kind == "cnn":
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)
        x = batch[0]
        out = self.net(x[:, :-1])
        logits = out.logits if self.kind == "gpt2" else out
        return nn.functional.cross_entropy(logits.reshape(-1, V), x[:, 1:].reshape(-1))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-4)


class TorchLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, D)
        layer = nn.TransformerEncoderLayer(D, 4, 4 * D, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(D)
        self.head = nn.Linear(D, V, bias=False)
        self.head.weight = self.emb.weight  # tied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.ln(self.blocks(self.emb(x))))


def residual_cnn() -> nn.Module:
    def block(c: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True))

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
        block(16), block(16), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )  # fmt: skip


def models() -> dict[str, tuple[nn.Module, str, TensorDataset]]:
    tokens = TensorDataset(torch.randint(0, V, (4096, 33)))
    images = TensorDataset(torch.randn(4096, 3, 16, 16), torch.randint(0, 10, (4096,)))
    out = {"torch transformer": (TorchLM(), "lm", tokens), "residual CNN": (residual_cnn(), "cnn", images)}
    try:
        import transformers

        config = transformers.GPT2Config(vocab_size=V, n_positions=64, n_embd=D, n_layer=2, n_head=4)
        config.bos_token_id = config.eos_token_id = 0
        out = {"tiny GPT-2": (transformers.GPT2LMHeadModel(config), "gpt2", tokens), **out}
    except ImportError:
        pass
    return out


def measure(net: nn.Module, kind: str, data: TensorDataset, blocks: int, steps: int) -> dict:
    diagnostics = TrainingDiagnostics()
    alternate = Alternate(diagnostics, steps)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = L.Trainer(
            max_steps=steps * (2 * blocks + 2),
            accelerator="cpu",
            logger=L.pytorch.loggers.TensorBoardLogger(tmp, name="", version=""),
            callbacks=[diagnostics, alternate],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(Task(net, kind), DataLoader(data, batch_size=16, shuffle=True))
    selection = diagnostics.activations.selection
    roles: dict[str, int] = {}
    for watched in selection.watched:
        roles[watched.role] = roles.get(watched.role, 0) + 1
    return {
        "overhead": round(statistics.median(alternate.ratios(0)[2]), 3),
        "watched": len(selection.watched),
        "roles": roles,
        "left_out": {reason: len(names) for reason, names in selection.left_out.items()},
        "parameter_layers": len(diagnostics.parameters.layers),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--block-steps", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    results = {}
    for name, (net, kind, data) in models().items():
        results[name] = result = measure(net, kind, data, args.blocks, args.block_steps)
        roles = ", ".join(f"{n} {role}" for role, n in result["roles"].items())
        print(f"{name}: {result['watched']} modules watched ({roles}); default cadence {result['overhead']:.3f}x")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
