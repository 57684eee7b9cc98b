"""Cost of the landscape probes: training time with each instrument, and all of them, at a cadence.

Trains the 784-100-100-100-10 sigmoid MLP, without and with batch norm, with SGD (lr 0.1) or
Adam (lr 1e-3, ``--optimizer adam``: the probes then copy Adam's state to preview its step and
compute a second, preconditioned sharpness) on MNIST-shaped random tensors (batch 60, CPU). Every arm carries the standard diagnostics
(``normlab.diagnostics.TrainingDiagnostics``) when the package has them, else nothing, and the
printed reference says which; the other arms add the probes. Each arm runs right after a
reference run, and its overhead is the median over repeats of its time over that reference's.
Times are the process's CPU seconds in the training loop (without the Trainer's setup), which
other jobs on a shared machine disturb far less than wall-clock time; the probes' own timings
(``landscape/time_ms/*``) are printed beside.

    python scripts/benchmark_landscape.py [--steps 1500] [--every 500] [--repeats 3] [--optimizer sgd] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
import warnings
from typing import Any

import lightning as L
import torch

from benchmark_common import fit_bare
from normlab import diagnostics
from normlab.classifier import Classifier
from normlab.diagnostics import LandscapeProbes
from normlab.diagnostics.landscape import INSTRUMENTS
from random_data import RandomDataModule

BATCH = 60
OPTIMIZERS = {
    "sgd": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
    "adam": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3},
}


def net(norm: str) -> dict[str, Any]:
    return {"_target_": "normlab.models.MLP", "input_shape": [1, 28, 28], "num_classes": 10, "norm": norm}


class LoopTimer(L.Callback):
    """CPU seconds of this process in the training loop, without the Trainer's setup."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.process_time()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds = time.process_time() - self.start


def reference_callbacks() -> list[L.Callback]:
    standard = getattr(diagnostics, "TrainingDiagnostics", None)
    return [standard()] if standard is not None else []


def train_seconds(
    norm: str, datamodule: RandomDataModule, steps: int, probes: LandscapeProbes | None, optimizer: str
) -> float:
    L.seed_everything(0, verbose=False)
    module = Classifier(net=net(norm), num_classes=10, optimizer=OPTIMIZERS[optimizer])
    timer = LoopTimer()
    callbacks = [*reference_callbacks(), *([probes] if probes else []), timer]
    fit_bare(module, datamodule, steps, callbacks)
    return timer.seconds


def arms(every: int) -> dict[str, dict[str, int]]:
    """Arm name -> probe cadences: each instrument alone, then all of them."""
    return {name: {name: every} for name in INSTRUMENTS} | {"all": dict.fromkeys(INSTRUMENTS, every)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--every", type=int, default=500, help="cadence of the probes, in optimizer steps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="sgd")
    parser.add_argument("--json", action="store_true", help="print a JSON object as the last line")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    datamodule = RandomDataModule(batch_size=BATCH)
    datamodule.setup()
    reference = "standard diagnostics" if reference_callbacks() else "plain training (no TrainingDiagnostics yet)"
    result: dict[str, Any] = {
        "reference": reference,
        "optimizer": args.optimizer,
        "steps": args.steps,
        "every": args.every,
        "threads": args.threads,
    }
    for norm, label in (("none", "baseline"), ("batch", "bn")):
        train_seconds(norm, datamodule, 100, None, args.optimizer)  # warm-up: allocator, thread pool
        ratios: dict[str, list[float]] = {}
        reference_seconds: list[float] = []
        probe_ms: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for name, cadences in arms(args.every).items():
                reference_seconds.append(train_seconds(norm, datamodule, args.steps, None, args.optimizer))
                probes = LandscapeProbes(**cadences)
                seconds = train_seconds(norm, datamodule, args.steps, probes, args.optimizer)
                ratios.setdefault(name, []).append(seconds / reference_seconds[-1])
                if name != "all":
                    probe_ms.setdefault(name, []).extend(_probe_ms(probes))
        result[label] = {
            "reference_ms_per_step": round(1000 * statistics.median(reference_seconds) / args.steps, 3),
            "overhead": {name: round(statistics.median(r), 3) for name, r in ratios.items()},
            "ms_per_probe": {name: round(statistics.median(ms), 1) for name, ms in probe_ms.items()},
        }
        _print(label, result[label], reference, args)
    if args.json:
        print(json.dumps(result))


def _probe_ms(probes: LandscapeProbes) -> list[float]:
    history = probes.state_dict()["history"]
    return [ms for tag, points in history.items() if tag.startswith("time_ms/") for _, ms in points]


def _print(label: str, figures: dict[str, Any], reference: str, args: argparse.Namespace) -> None:
    print(
        f"{label} ({args.optimizer}): {figures['reference_ms_per_step']} CPU ms/step with {reference}; overhead at every "
        f"{args.every} steps (median of {args.repeats}, {args.steps} steps each, {args.threads} thread(s)):"
    )
    for name, ratio in figures["overhead"].items():
        ms = figures["ms_per_probe"].get(name)
        print(f"  {name:<20} {ratio:.3f}x" + (f"   {ms} ms per probe" if ms is not None else ""))


if __name__ == "__main__":
    main()
