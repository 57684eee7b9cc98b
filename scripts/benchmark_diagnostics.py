"""Cost of the diagnostics: training step time with TrainingDiagnostics, relative to none.

The 784-100-100-100-10 sigmoid MLP with batch norm trains with SGD on MNIST-shaped random tensors
(batch 60, CPU) in a Lightning Trainer (TensorBoardLogger in a temporary directory, no progress
bar, no checkpoints). Arms: no diagnostics; ours every 1, 10 and 50 steps (50 is the default,
with every 10 steps before step 50); and a naive reference that writes ``add_histogram`` of CPU
copies of every module output, weight and gradient at the same cadences.

Ours is timed in blocks of ``--block-steps`` steps within one training run per cadence: the
callback is taken out of the Trainer's callbacks for every other block, so that blocks with and
without it alternate every fraction of a second. The machine's cores are shared, and the load of
other processes changes within seconds: a block's time is compared with the mean of the two
blocks without the callback on either side of it, and the ratio is the median over ``--blocks``
such blocks. The first block (the dense cadence's steps, the first layout) is not timed. A
block's time is the process's CPU time (all threads, TensorBoard's writer included), and CPU time
does not count the time another process held the core; wall-clock ratios are printed beside it.
The naive reference runs separately, ``--naive-steps`` steps per cadence after a run without it.

    python scripts/benchmark_diagnostics.py [--blocks 40] [--block-steps 200] [--threads 1] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import torch

from benchmark_common import fit_bare
from normlab.classifier import Classifier
from normlab.diagnostics import TrainingDiagnostics
from normlab.diagnostics.output import use_fast_checksums
from random_data import RandomDataModule

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


class Alternate(L.Callback):
    """Times blocks of ``steps`` steps and takes ``callback`` out of the Trainer's callbacks for the
    odd-numbered blocks (block 0 has it). Goes after ``callback``, so that the callback has
    finished a step before it is taken out."""

    def __init__(self, callback: L.Callback, steps: int) -> None:
        self.callback, self.steps = callback, steps
        self.marks: list[tuple[float, float]] = []  # CPU and wall time at the end of each block
        self.place = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.steps:
            return
        self.marks.append((time.process_time(), time.perf_counter()))
        # a new list: Lightning is iterating over the one it has to call this hook
        callbacks = list(trainer.callbacks)
        if self.callback in callbacks:  # the next block is odd: without it
            self.place = callbacks.index(self.callback)
            callbacks.remove(self.callback)
        else:
            callbacks.insert(self.place, self.callback)
        trainer.callbacks = callbacks

    def ratios(self, clock: int) -> tuple[list[float], list[float], list[float]]:
        """Per timed block with the callback: seconds per step with it, the mean of the blocks
        without it on either side, and their ratio."""
        times = [(b[clock] - a[clock]) / self.steps for a, b in itertools.pairwise(self.marks)]  # blocks 1, 2, ...
        without, with_it = times[0::2], times[1::2]
        beside = [(before + after) / 2 for before, after in itertools.pairwise(without)]
        with_it = with_it[: len(beside)]
        return with_it, beside, [w / b for w, b in zip(with_it, beside, strict=True)]


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


def alternating(datamodule: RandomDataModule, every: int, blocks: int, steps: int) -> Alternate:
    """One run with ``TrainingDiagnostics(log_every_n_steps=every)`` in the even blocks: the
    untimed first block, then ``blocks`` timed blocks with it, each between two without it."""
    torch.manual_seed(0)
    module = Classifier(net=NET, num_classes=10, optimizer=OPTIMIZER)
    diagnostics = TrainingDiagnostics(log_every_n_steps=every)
    alternate = Alternate(diagnostics, steps)
    fit_bare(module, datamodule, steps * (2 * blocks + 2), callbacks=[diagnostics, alternate])
    return alternate


def peak_memory_mb(every: int, steps: int) -> float:
    """Peak resident memory (MiB) of a fresh process training ``steps`` steps, with the diagnostics
    every ``every`` steps (0: none): each arm in a process of its own, since the peak never falls."""
    code = (
        "import resource, sys, warnings; warnings.filterwarnings('ignore'); sys.argv = ['x'];"
        "import benchmark_diagnostics as b, torch; torch.set_num_threads(1);"
        "from random_data import RandomDataModule; from normlab.diagnostics import TrainingDiagnostics;"
        f"d = RandomDataModule(batch_size=b.BATCH); d.setup(); e = {every};"
        f"b.step_seconds(d, {steps}, 1, [TrainingDiagnostics(log_every_n_steps=e)] if e else []);"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    here = str(Path(__file__).resolve().parent)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=here, check=True)
    return round(int(out.stdout.split()[-1]) / 1024, 1)  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=40, help="timed blocks with the diagnostics, per cadence")
    parser.add_argument("--block-steps", type=int, default=200, help="steps per block (a multiple of 50)")
    parser.add_argument("--naive-steps", type=int, default=150, help="steps per run of the (slow) naive reference")
    parser.add_argument("--warmup", type=int, default=5, help="first steps of a naive run left out of the timing")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the cores are shared)")
    parser.add_argument("--memory-steps", type=int, default=300, help="steps of each peak-memory run (0: none)")
    parser.add_argument("--json", action="store_true", help="print a JSON object as the last line")
    args = parser.parse_args()
    if args.blocks < 1 or args.block_steps < 1 or args.block_steps % max(CADENCES):
        parser.error(f"--blocks must be >= 1 and --block-steps a positive multiple of {max(CADENCES)}")
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

    runs = {n: alternating(datamodule, n, args.blocks, args.block_steps) for n in CADENCES}

    def ratio(n: int, clock: int) -> float:
        return round(statistics.median(runs[n].ratios(clock)[2]), 3)

    def quartiles(n: int) -> list[float]:
        return [round(q, 3) for q in statistics.quantiles(runs[n].ratios(0)[2], n=4)[::2]] if args.blocks > 1 else []

    def median_ms(blocks: list[float]) -> float:
        return round(statistics.median(blocks) * 1000, 3)

    result = {
        "overhead": {str(n): ratio(n, 0) for n in CADENCES},
        "overhead_wall": {str(n): ratio(n, 1) for n in CADENCES},
        "overhead_quartiles": {str(n): quartiles(n) for n in CADENCES},
        "naive": {str(n): round(v, 2) for n, v in naive.items()},
        "step_ms": {
            "none": median_ms([t for n in CADENCES for t in runs[n].ratios(0)[1]]),
            **{str(n): median_ms(runs[n].ratios(0)[0]) for n in CADENCES},
        },
        "peak_memory_mb": (
            {k: peak_memory_mb(n, args.memory_steps) for k, n in (("none", 0), ("1", 1), ("50", 50))}
            if args.memory_steps
            else {}
        ),
        "blocks": args.blocks,
        "block_steps": args.block_steps,
        "threads": args.threads,
    }
    print(
        f"CPU time per step without diagnostics: {result['step_ms']['none']} ms (median over the blocks of "
        f"{args.block_steps} steps without it; {args.blocks} blocks with it per cadence; {args.threads} thread)"
    )
    for n in CADENCES:
        key = str(n)
        spread = "-".join(f"{q:.3f}" for q in result["overhead_quartiles"][key])
        print(
            f"every {n:>2} steps: ours {result['overhead'][key]:.3f}x (half the blocks in {spread}; wall "
            f"{result['overhead_wall'][key]:.3f}x)   naive add_histogram {result['naive'][key]:.2f}x"
        )
    if result["peak_memory_mb"]:
        memory = result["peak_memory_mb"]
        print(
            f"peak resident memory ({args.memory_steps} steps, a process each): without {memory['none']} MiB, "
            f"every 50 steps {memory['50']} MiB, every step {memory['1']} MiB"
        )
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
