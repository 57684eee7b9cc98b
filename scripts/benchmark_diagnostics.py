"""Cost of the diagnostics: training step time with TrainingDiagnostics, relative to none.

The 784-100-100-100-10 sigmoid MLP with batch norm trains with SGD on MNIST-shaped random tensors
(batch 60, CPU) in a Lightning Trainer (TensorBoardLogger in a temporary directory, no progress
bar, no checkpoints). Arms: no diagnostics; ours every 1, 10 and 50 steps (50 is the default,
with every 10 steps before step 50); and a naive reference that writes ``add_histogram`` of CPU
copies of every module output, weight and gradient at the same cadences.

A run's step time is the process's CPU time (all threads, TensorBoard's writer included) over its
steps after the first ``--warmup``: the two cores are shared, and CPU time does not count the time
another process held them; wall-clock ratios are printed beside it. Each cadence of ours runs
``--repeats`` times, each time right before or right after a run without diagnostics (which goes
first alternates), and its ratio is the median over the repeats of (ours / the run beside it): the
load of other processes changes over seconds, so each ratio compares runs seconds apart.

    python scripts/benchmark_diagnostics.py [--steps 1500] [--repeats 7] [--threads 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import lightning as L
import torch
from benchmark_common import fit_bare

from normlab.data import RandomDataModule
from normlab.diagnostics import TrainingDiagnostics
from normlab.diagnostics.writer import use_fast_checksums
from normlab.module import Classifier

NET = {"_target_": "normlab.models.MLP", "input_shape": [1, 28, 28], "num_classes": 10, "norm": "batch"}
OPTIMIZER = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01}
BATCH = 60
CADENCES = (1, 10, 50)


class StepClock(L.Callback):
    """CPU time and wall time per training step, after the first ``warmup`` steps."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = self.end = (0.0, 0.0)
        self.steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self.start = (time.process_time(), time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.end = (time.process_time(), time.perf_counter())
        self.steps = trainer.global_step - self.warmup

    @property
    def seconds_per_step(self) -> tuple[float, float]:
        return tuple((e - s) / self.steps for s, e in zip(self.start, self.end, strict=True))


class NaiveHistograms(L.Callback):
    """The obvious way: ``add_histogram`` of a CPU copy of every module output, weight and gradient."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.handles: list = []

    def on_train_start(self, trainer, pl_module) -> None:
        writer = trainer.logger.experiment

        def hook(name):
            def record(module, args, output):
                if trainer.global_step % self.every == 0 and module.training:
                    writer.add_histogram(f"naive/act/{name}", output.detach().cpu(), trainer.global_step)

            return record

        self.handles = [m.register_forward_hook(hook(n)) for n, m in pl_module.named_modules() if n]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step % self.every:
            return
        writer = trainer.logger.experiment
        for name, p in pl_module.named_parameters():
            writer.add_histogram(f"naive/weight/{name}", p.detach().cpu(), trainer.global_step)
            if p.grad is not None:
                writer.add_histogram(f"naive/grad/{name}", p.grad.detach().cpu(), trainer.global_step)

    def on_train_end(self, trainer, pl_module) -> None:
        for handle in self.handles:
            handle.remove()


def step_seconds(datamodule: RandomDataModule, steps: int, warmup: int, extra: list[L.Callback]) -> float:
    torch.manual_seed(0)
    module = Classifier(net=NET, num_classes=10, optimizer=OPTIMIZER)
    clock = StepClock(warmup)
    fit_bare(module, datamodule, steps, callbacks=[clock, *extra])
    return clock.seconds_per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500, help="optimizer steps per run")
    parser.add_argument("--naive-steps", type=int, default=150, help="steps per run of the (slow) naive reference")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the timing")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the cores are shared)")
    parser.add_argument("--json", action="store_true", help="print a JSON object as the last line")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    datamodule = RandomDataModule(batch_size=BATCH)
    datamodule.setup()
    step_seconds(datamodule, 100, args.warmup, [])  # warm-up: allocator, thread pool, imports

    # The naive reference runs first, with TensorBoard's own pure-Python record checksums, as a
    # user without this callback has them; the first TrainingDiagnostics replaces them for the process.
    naive_base = step_seconds(datamodule, args.naive_steps, args.warmup, [])[0]
    naive = {
        n: step_seconds(datamodule, args.naive_steps, args.warmup, [NaiveHistograms(n)])[0] / naive_base
        for n in CADENCES
    }
    use_fast_checksums()

    ours: dict[int, list[tuple[float, float]]] = {n: [] for n in CADENCES}
    beside: dict[int, list[tuple[float, float]]] = {n: [] for n in CADENCES}  # the run without diagnostics
    for r in range(args.repeats):
        for n in CADENCES[r % len(CADENCES) :] + CADENCES[: r % len(CADENCES)]:  # rotate who goes first
            for arm in ("ours", "none") if r % 2 else ("none", "ours"):
                callbacks = [TrainingDiagnostics(log_every_n_steps=n)] if arm == "ours" else []
                (ours if arm == "ours" else beside)[n].append(
                    step_seconds(datamodule, args.steps, args.warmup, callbacks)
                )

    def ratio(n: int, clock: int) -> float:
        return round(statistics.median(t[clock] / b[clock] for t, b in zip(ours[n], beside[n], strict=True)), 3)

    def median_ms(runs: list[tuple[float, float]]) -> float:
        return round(statistics.median(c for c, _ in runs) * 1000, 3)

    result = {
        "overhead": {str(n): ratio(n, 0) for n in CADENCES},
        "overhead_wall": {str(n): ratio(n, 1) for n in CADENCES},
        "naive": {str(n): round(v, 2) for n, v in naive.items()},
        "step_ms": {"none": median_ms(sum(beside.values(), [])), **{str(n): median_ms(ours[n]) for n in CADENCES}},
        "steps": args.steps,
        "repeats": args.repeats,
        "threads": args.threads,
    }
    print(
        f"CPU time per step without diagnostics: {result['step_ms']['none']} ms (median of "
        f"{args.repeats * len(CADENCES)} runs of {args.steps} steps, each beside a run of ours; {args.threads} thread)"
    )
    for n in CADENCES:
        key = str(n)
        print(
            f"every {n:>2} steps: ours {result['overhead'][key]:.3f}x (wall {result['overhead_wall'][key]:.3f}x)"
            f"   naive add_histogram {result['naive'][key]:.2f}x"
        )
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
