"""Where the diagnostics' time goes: each phase of a training step, with and without them.

The benchmark's model and data (``benchmark_diagnostics.py``) train with ``TrainingDiagnostics``
logging every ``--every`` steps and without them, in alternating runs. Two marker callbacks, one
before the diagnostics in the Trainer's callbacks and one after, split each step into the
diagnostics' own hooks (between the two markers of one hook) and Lightning's work between hooks
(the forward pass, which includes the recording of the watched outputs, the backward pass, the
optimizer step, and the loop and data loading between steps). A phase's time is the main thread's
CPU time (TensorBoard's writer thread is left out), the median over the logging steps of a run and
then over the runs. Figures move by 10-20% from run to run on shared cores; read the differences.

    python scripts/diagnostics_phases.py [--every 1] [--steps 400] [--runs 2]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
import warnings
from collections import defaultdict

import lightning as L
import torch

from benchmark_common import fit_bare
from benchmark_diagnostics import BATCH, NET, OPTIMIZER
from normlab.classifier import Classifier
from normlab.diagnostics import TrainingDiagnostics
from normlab.diagnostics.output import use_fast_checksums
from random_data import RandomDataModule

HOOKS = ("on_train_batch_start", "on_before_backward", "on_before_optimizer_step", "on_train_batch_end")
BETWEEN = {  # Lightning's work from the end of one hook to the start of the next
    "on_train_batch_start": "forward pass (with the recording)",
    "on_before_backward": "backward pass",
    "on_before_optimizer_step": "optimizer step",
    "on_train_batch_end": "loop and data loading",
}


class Marker(L.Callback):
    """Notes the main thread's CPU time at each hook of the steps from ``warmup`` on, with the step
    of the batch (``global_step`` moves on with the optimizer step, before the batch ends)."""

    def __init__(self, marks: list, side: str, warmup: int) -> None:
        self.marks, self.side, self.warmup = marks, side, warmup
        self.step = -1

    def _mark(self, hook: str) -> None:
        if self.step >= self.warmup:
            self.marks.append((self.step, hook, self.side, time.thread_time()))

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        self.step = trainer.global_step
        self._mark("on_train_batch_start")

    def on_before_backward(self, trainer: L.Trainer, *args) -> None:
        self._mark("on_before_backward")

    def on_before_optimizer_step(self, trainer: L.Trainer, *args) -> None:
        self._mark("on_before_optimizer_step")

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        self._mark("on_train_batch_end")


def phases(marks: list, every: int) -> dict[str, float]:
    """Median microseconds per phase of the logging steps (``step % every == 0``)."""
    found: dict[str, list[float]] = defaultdict(list)
    for (step, hook, side, t0), (_, _, _, t1) in itertools.pairwise(marks):
        if step % every == 0:
            found[f"diagnostics: {hook}" if side == "before" else BETWEEN[hook]].append((t1 - t0) * 1e6)
    return {name: statistics.median(values) for name, values in found.items()}


def run(datamodule: RandomDataModule, steps: int, every: int, diagnostics: bool) -> dict[str, float]:
    """The phases of the steps ``step % every == 0`` (with or without the diagnostics logging on
    them): Lightning does more on some steps (its own logging every 50), so both sides take the same."""
    torch.manual_seed(0)
    marks: list = []
    module = Classifier(net=NET, num_classes=10, optimizer=OPTIMIZER)
    callbacks = [TrainingDiagnostics(log_every_n_steps=every, dense_until_step=0)] if diagnostics else []
    fit_bare(
        module, datamodule, steps, [Marker(marks, "before", warmup=20), *callbacks, Marker(marks, "after", warmup=20)]
    )
    return phases(marks, every)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=1, help="the diagnostics' log_every_n_steps")
    parser.add_argument("--steps", type=int, default=400, help="steps per run")
    parser.add_argument("--runs", type=int, default=2, help="runs with and without, alternating")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    use_fast_checksums()
    datamodule = RandomDataModule(batch_size=BATCH)
    datamodule.setup()
    run(datamodule, 100, 1, diagnostics=False)  # warm-up
    without, with_them = [], []
    for _ in range(args.runs):
        without.append(run(datamodule, args.steps, args.every, diagnostics=False))
        with_them.append(run(datamodule, args.steps, args.every, diagnostics=True))
    names = list(with_them[0])
    rows = [
        (n, statistics.median(r.get(n, 0.0) for r in without), statistics.median(r[n] for r in with_them))
        for n in names
    ]
    print(f"main-thread CPU per logging step (us), diagnostics every {args.every} steps, median of {args.runs} runs")
    print(f"{'phase':42s} {'without':>9s} {'with':>9s} {'added':>9s}")
    for name, a, b in rows:
        print(f"{name:42s} {a:9.0f} {b:9.0f} {b - a:9.0f}")
    total_a, total_b = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"{'step':42s} {total_a:9.0f} {total_b:9.0f} {total_b - total_a:9.0f}")


if __name__ == "__main__":
    main()
