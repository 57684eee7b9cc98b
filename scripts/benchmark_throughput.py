"""Training steps per second: the template's Lightning loop versus a hand-written PyTorch loop.

Both train the same network with SGD on the same MNIST-shaped random tensors (CPU, shuffled every
epoch), in one process, arms interleaved; the median of the repeats is reported. The MLP is the
784-100-100-100-10 sigmoid MLP at batch 60, where Lightning's fixed cost per step is most of the
step; the CNN is the 16-32 channel CNN of conf/model/baseline_cnn.yaml on 28x28 inputs at batch 128,
where it is a small share. ``--net both`` (the default) measures the MLP, then the CNN: the JSON
keys without a prefix are the MLP's, the ``cnn_`` ones the CNN's. The template is timed from its
first to its last training step (Trainer setup excluded), with its own datamodule,
LightningModule (metrics, ``train/loss`` logged every step and written every 50) and loop.

    python scripts/benchmark_throughput.py [--net both|mlp|cnn] [--steps 1500] [--cnn-steps 300]
                                           [--repeats 3] [--json]
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


def measure(name: str, steps: int, repeats: int) -> dict:
    """Template and hand-written steps per second of one network, and their ratio."""
    torch.manual_seed(0)
    net, batch = NETS[name]
    datamodule = RandomDataModule(batch_size=batch)
    datamodule.setup()
    handwritten_steps_per_second(datamodule, net, min(steps, 200))  # warm-up: allocator, thread pool
    ours, ref = [], []
    for _ in range(repeats):
        ref.append(handwritten_steps_per_second(datamodule, net, steps))
        ours.append(template_steps_per_second(datamodule, net, steps))
    result = {
        "template_steps_per_s": round(statistics.median(ours), 1),
        "handwritten_steps_per_s": round(statistics.median(ref), 1),
        "ratio": round(statistics.median(o / r for o, r in zip(ours, ref, strict=True)), 3),
        "net": name,
        "batch": batch,
        "steps": steps,
    }
    print(
        f"{name}: template {result['template_steps_per_s']} steps/s, hand-written"
        f" {result['handwritten_steps_per_s']} steps/s, ratio {result['ratio']}x"
        f" (median of {repeats}, {steps} steps each, batch {batch})",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", choices=["both", *sorted(NETS)], default="both")
    parser.add_argument("--steps", type=int, default=1500, help="steps per timing of the MLP")
    parser.add_argument("--cnn-steps", type=int, default=300, help="steps per timing of the CNN")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print a JSON object as the last line")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    steps = {"mlp": args.steps, "cnn": args.cnn_steps}
    names = ["mlp", "cnn"] if args.net == "both" else [args.net]
    first, *others = (measure(name, steps[name], args.repeats) for name in names)
    result = {**first, "threads": torch.get_num_threads()}
    for other in others:  # the CNN beside the MLP: the same keys, prefixed
        result |= {f"{other['net']}_{k}": v for k, v in other.items() if k != "net"}
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
