"""Training steps per second: the template's Lightning loop versus a hand-written PyTorch loop.

Both train the same network with SGD on the same MNIST-shaped random tensors (CPU, shuffled every
epoch), in one process, arms interleaved; the median of the repeats is reported. ``--net mlp`` (the
default) is the 784-100-100-100-10 sigmoid MLP at batch 60, where Lightning's fixed cost per step is
most of the step; ``--net cnn`` is the 16-32 channel CNN of conf/model/baseline_cnn.yaml at batch 128.
The template is timed from its first to its last training step (Trainer setup excluded), with its
own datamodule, LightningModule (metrics, logging to TensorBoard every 50 steps) and loop.

    python scripts/benchmark_throughput.py [--net mlp|cnn] [--steps 1500] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import lightning as L
import torch
import torch.nn.functional as F

from benchmark_common import fit_bare
from normlab.classifier import Classifier
from random_data import RandomDataModule

NETS = {  # name: (network config, batch size)
    "mlp": (
        {"_target_": "normlab.models.MLP", "input_shape": [1, 28, 28], "num_classes": 10, "depth": 3, "width": 100},
        60,
    ),
    "cnn": (
        {"_target_": "normlab.models.CNN", "input_shape": [1, 28, 28], "num_classes": 10, "channels": [16, 32]},
        128,
    ),
}
NET, BATCH = NETS["mlp"]
OPTIMIZER = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01}


class StepClock(L.Callback):
    """Wall time from the first to the last training step: excludes the Trainer's one-off setup."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds = time.perf_counter() - self.start


def template_steps_per_second(datamodule: RandomDataModule, net: dict, steps: int) -> float:
    module = Classifier(net=net, num_classes=10, optimizer=OPTIMIZER)
    clock = StepClock()
    fit_bare(module, datamodule, steps, callbacks=[clock])
    return steps / clock.seconds


def handwritten_steps_per_second(datamodule: RandomDataModule, net_config: dict, steps: int) -> float:
    """The loop one writes by hand: reshuffle every epoch, gather a batch, step; nothing else."""
    net = Classifier(net=net_config, num_classes=10, optimizer=OPTIMIZER).net
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = datamodule.data.x, datamodule.data.y
    batch = datamodule.batch_size
    per_epoch = len(x) // batch
    start = time.perf_counter()
    for step in range(steps):
        if step % per_epoch == 0:
            order = torch.randperm(len(x))
        idx = order[(step % per_epoch) * batch : (step % per_epoch + 1) * batch]
        loss = F.cross_entropy(net(x.index_select(0, idx)), y.index_select(0, idx))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", choices=sorted(NETS), default="mlp")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print a JSON object as the last line")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    net, batch = NETS[args.net]
    datamodule = RandomDataModule(batch_size=batch)
    datamodule.setup()
    handwritten_steps_per_second(datamodule, net, 200)  # warm-up: allocator, thread pool
    ours, ref = [], []
    for _ in range(args.repeats):
        ref.append(handwritten_steps_per_second(datamodule, net, args.steps))
        ours.append(template_steps_per_second(datamodule, net, args.steps))
    result = {
        "template_steps_per_s": round(statistics.median(ours), 1),
        "handwritten_steps_per_s": round(statistics.median(ref), 1),
        "ratio": round(statistics.median(o / r for o, r in zip(ours, ref, strict=True)), 3),
        "net": args.net,
        "batch": batch,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
    }
    print(
        f"template {result['template_steps_per_s']} steps/s, hand-written {result['handwritten_steps_per_s']} steps/s,"
        f" ratio {result['ratio']}x (median of {args.repeats}, {args.steps} steps each)"
    )
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
