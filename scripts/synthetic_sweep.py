"""A sweep made up on disk, shaped like ``normlab-train -m`` output: for tests and the report benchmark.

Each run gets ``.hydra/{config,hydra,overrides}.yaml``, one event file with the tags the template
and the diagnostics callback write (``train/loss`` every step, ``val/*`` every epoch, activation
statistics, gradient norms and activation histograms every ``diagnostics_every`` steps) and a
``summary.json``. BN runs learn faster than baseline runs; a run listed in ``diverge`` has its loss
turn to NaN halfway through.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import yaml
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary
from tensorboard.summary.writer.record_writer import RecordWriter

MODULES = ("fc", "bn", "act")
STATS = ("p15", "p50", "p85", "mean", "std")
STEPS_PER_EPOCH = 19  # digits' 1222 training images in batches of 64


def write_sweep(
    sweep_dir: Path,
    models: Iterable[str] = ("baseline_mlp", "bn_mlp"),
    lrs: Iterable[float] = (0.1, 1.0),
    seeds: Iterable[int] = (0, 1),
    steps: int = 200,
    diagnostics_every: int = 10,
    depth: int = 3,
    diverge: Iterable[tuple[str, float, int]] = (),
) -> list[Path]:
    """Write one run per (model, lr, seed) under ``sweep_dir`` plus its ``multirun.yaml``; return the run dirs.

    Args:
        sweep_dir: created if needed.
        models: ``baseline_mlp`` (no BN) and/or ``bn_mlp`` (BN before each sigmoid).
        lrs, seeds: the other two swept overrides.
        steps: training steps per run.
        diagnostics_every: cadence of the activation and gradient statistics; 0: none logged.
        depth: hidden layers of the MLP.
        diverge: ``(model, lr, seed)`` triples whose runs diverge.
    """
    models, lrs, seeds, diverging = list(models), list(lrs), list(seeds), set(diverge)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    sweep = [
        f"model={','.join(models)}",
        f"optimizer.lr={','.join(map(str, lrs))}",
        f"seed={','.join(map(str, seeds))}",
    ]
    multirun = {
        "hydra": {
            "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "params": None},
            "overrides": {"task": sweep},
        }
    }
    (sweep_dir / "multirun.yaml").write_text(yaml.safe_dump(multirun))
    dirs = []
    for num, (model, lr, seed) in enumerate((m, lr, s) for m in models for lr in lrs for s in seeds):
        overrides = [f"model={model}", f"optimizer.lr={lr}", f"seed={seed}"]
        run_dir = sweep_dir / f"{num:03d}_{','.join(overrides)}"
        write_run(run_dir, overrides, model, lr, seed, steps, diagnostics_every, depth, (model, lr, seed) in diverging)
        dirs.append(run_dir)
    return dirs


def write_run(
    run_dir: Path,
    overrides: list[str],
    model: str,
    lr: float,
    seed: int,
    steps: int,
    diagnostics_every: int,
    depth: int,
    diverges: bool,
) -> None:
    bn = model.startswith("bn")
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "seed": seed,
        "model": {"_target_": "normlab.models.MLP", "depth": depth, "width": 100, "hidden": None,
                  "norm": "batch" if bn else "none", "norm_position": "pre", "norm_layers": None},
        "data": {"num_classes": 10},
        "optimizer": {"_target_": "torch.optim.SGD", "lr": lr},
    }  # fmt: skip
    (hydra_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (hydra_dir / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {"model": model}}}}))
    (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    curves = _curves(bn, lr, seed, steps, diverges)
    _write_events(
        run_dir / f"events.out.tfevents.{int(time.time())}.synthetic.{seed}.0",
        curves,
        steps,
        diagnostics_every,
        depth,
        bn,
        seed,
    )
    summary = {
        "status": "diverged" if diverges else "completed",
        "diverged": diverges,
        "divergence_step": curves["divergence_step"],
        "divergence_layer": f"layer{depth}" if diverges else None,
        "max_grad_norm": float(np.nanmax(curves["grad_norm"])) if not diverges else float("inf"),
        "final_grad_norm": float(curves["grad_norm"][-1]),
        "final_val_acc": float(curves["val_acc"][-1]),
        "best_val_acc": float(np.max(curves["val_acc"])),
        "target_acc": 0.9,
        "steps_to_target": _first(curves["val_steps"], curves["val_acc"], 0.9),
        "global_step": steps,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))


def _curves(bn: bool, lr: float, seed: int, steps: int, diverges: bool) -> dict:
    rng = np.random.default_rng(seed + int(lr * 1000) + 7919 * bn)
    t = np.arange(steps, dtype=np.float64)
    rate = (0.03 if bn else 0.006) * min(lr, 1.0) / 1.0 + 1e-4
    loss = 2.3 * np.exp(-rate * t) + 0.05 + 0.02 * rng.standard_normal(steps) ** 2
    val_steps = np.arange(STEPS_PER_EPOCH - 1, steps, STEPS_PER_EPOCH)
    val_acc = 0.1 + 0.87 * (1 - np.exp(-rate * val_steps)) + 0.005 * rng.standard_normal(len(val_steps))
    grad_norm = 1.0 + 0.5 * np.exp(-rate * t) + 0.05 * rng.random(steps)
    divergence_step = None
    if diverges:
        divergence_step = steps // 2
        loss[divergence_step:] = np.nan
        grad_norm[divergence_step:] = np.inf
        val_acc[val_steps >= divergence_step] = 0.0980
    return {"loss": loss, "val_steps": val_steps, "val_acc": np.clip(val_acc, 0, 1), "grad_norm": grad_norm,
            "divergence_step": divergence_step}  # fmt: skip


def _first(steps: np.ndarray, values: np.ndarray, target: float) -> int | None:
    hits = np.flatnonzero(values >= target)
    return int(steps[hits[0]]) if len(hits) else None


def _write_events(path: Path, curves: dict, steps: int, every: int, depth: int, bn: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    val_at = {int(s): i for i, s in enumerate(curves["val_steps"])}
    best = np.maximum.accumulate(curves["val_acc"])
    edges = np.linspace(-4, 4, 31)
    with path.open("wb") as f:
        writer = RecordWriter(f)
        writer.write(Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
        for step in range(steps):
            values = [Summary.Value(tag="train/loss", simple_value=curves["loss"][step])]
            if every and step % every == 0:
                values += _diagnostics(step, depth, bn, curves["grad_norm"][step], rng)
            if step in val_at:
                i = val_at[step]
                values += [
                    Summary.Value(tag="val/acc", simple_value=curves["val_acc"][i]),
                    Summary.Value(tag="val/acc_best", simple_value=best[i]),
                    Summary.Value(tag="val/loss", simple_value=1.0 - curves["val_acc"][i]),
                ]
            writer.write(Event(wall_time=time.time(), step=step, summary=Summary(value=values)).SerializeToString())
            if every and step % every == 0:
                histograms = [
                    Summary.Value(tag=f"act/layer{layer}.{m}", histo=_histogram(edges, rng))
                    for layer in range(1, depth + 1)
                    for m in MODULES
                ]
                writer.write(
                    Event(wall_time=time.time(), step=step, summary=Summary(value=histograms)).SerializeToString()
                )
        test = Summary(value=[Summary.Value(tag="test/acc", simple_value=curves["val_acc"][-1])])
        writer.write(Event(wall_time=time.time(), step=steps, summary=test).SerializeToString())


def _diagnostics(step: int, depth: int, bn: bool, grad_norm: float, rng: np.random.Generator) -> list:
    # baseline pre-activations drift and spread as training goes on; BN keeps them centred
    shift = 0.0 if bn else 0.002 * step
    spread = 1.0 if bn else 1.0 + 0.001 * step
    values = [Summary.Value(tag="grad_norm/global", simple_value=grad_norm)]
    for layer in range(1, depth + 1):
        values.append(Summary.Value(tag=f"grad_norm/layer{layer}", simple_value=grad_norm / depth))
        for m in MODULES:
            center = shift + 0.05 * rng.standard_normal()
            stats = {"p15": center - spread, "p50": center, "p85": center + spread, "mean": center, "std": spread}
            values += [Summary.Value(tag=f"act/layer{layer}.{m}/{s}", simple_value=stats[s]) for s in STATS]
    return values


def _histogram(edges: np.ndarray, rng: np.random.Generator) -> HistogramProto:
    counts = rng.integers(0, 50, len(edges))
    return HistogramProto(min=float(edges[0]), max=float(edges[-1]), num=float(counts.sum()), sum=0.0,
                          sum_squares=float(counts.sum()), bucket_limit=edges.tolist(), bucket=counts.tolist())  # fmt: skip
