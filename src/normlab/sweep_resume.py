"""What a sweep started again does with each of its runs: skip it, resume it, run it again, or run it anew.

Two places read the run directories the same way: the grid sweeper
(``hydra_plugins.normlab_sweepers.grid``) decides from them which jobs to launch at all, and a
launched sweep job whose directory holds a checkpoint continues from it (``normlab.train``).
Nothing here imports torch or Lightning: deciding must stay cheap.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import yaml

# Statuses of summary.json after which a run is left alone. Any other value (failed, one this
# version does not know) means the run is resumed or run again.
ENDED = frozenset({"completed", "diverged", "collapsed", "pruned"})
SKIPPED, RESUMED, RERUN, NEW = "skipped", "resumed", "rerun", "new"
PLAN_FILE = "sweep_plan.json"


def run_status(run_dir: Path) -> str | None:
    """The ``status`` of the run's ``summary.json``; ``None`` when it has none (or it is unreadable)."""
    try:
        data = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    status = data.get("status") if isinstance(data, dict) else None
    return status if isinstance(status, str) else None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint of a run: ``checkpoints/*.ckpt`` or an ``hpc_ckpt_N.ckpt`` saved on
    SLURM's warning signal (``normlab.slurm_requeue``); ``last.ckpt`` wins a tie (same file-system second)."""
    found = [*run_dir.glob("checkpoints/*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")]
    if not found:
        return None
    return max(found, key=lambda p: (p.stat().st_mtime, p.name == "last.ckpt"))


def next_action(run_dir: Path | None) -> str:
    """``skipped`` (it ended), ``resumed`` (it has a checkpoint), ``rerun`` (it started, nothing to
    continue from: failed early or killed before its first checkpoint) or ``new``."""
    if run_dir is None or not run_dir.is_dir():
        return NEW
    if run_status(run_dir) in ENDED:
        return SKIPPED
    return RESUMED if latest_checkpoint(run_dir) is not None else RERUN


def job_number(run_dir: Path) -> int | None:
    """The job number a run directory's name starts with (``003_model=bn_mlp`` -> 3)."""
    head = run_dir.name.split("_", 1)[0]
    return int(head) if head.isdigit() else None


def existing_runs(sweep_dir: Path) -> dict[frozenset[str], tuple[int, Path]]:
    """The runs already in a sweep directory: their set of overrides -> (job number, directory)."""
    found: dict[frozenset[str], tuple[int, Path]] = {}
    if not sweep_dir.is_dir():
        return found
    for path in sorted(sweep_dir.iterdir()):
        num = job_number(path)
        overrides = _read_overrides(path / ".hydra" / "overrides.yaml")
        if num is not None and overrides is not None:
            found.setdefault(frozenset(overrides), (num, path))
    return found


def _read_overrides(path: Path) -> list[str] | None:
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return [str(o) for o in loaded] if isinstance(loaded, list) else None


def plan(
    jobs: Iterable[list[str]], existing: dict[frozenset[str], tuple[int, Path]]
) -> list[tuple[int, list[str], str]]:
    """Number the jobs of a sweep and say what to do with each: ``(job number, overrides, action)``.

    A job that matches a run on disk (same overrides, in any order) keeps that run's number, so it
    lands in its own directory again. When every such run still sits at its position in the sweep
    (the same command again), new jobs take their positions too; otherwise (a sweep extended with
    more seeds or learning rates) they are numbered after every number in use, in sweep order.
    """
    jobs = [list(j) for j in jobs]
    matched = [existing.get(frozenset(job)) for job in jobs]
    on_disk = {num for num, _ in existing.values()}
    in_place = all(m[0] == i for i, m in enumerate(matched) if m is not None)
    positional = {i for i, m in enumerate(matched) if m is None and i not in on_disk} if in_place else set()
    next_free = max(on_disk | positional, default=-1) + 1
    planned = []
    for i, (job, match) in enumerate(zip(jobs, matched, strict=True)):
        if match is not None:
            planned.append((match[0], job, next_action(match[1])))
        elif i in positional:
            planned.append((i, job, NEW))
        else:
            planned.append((next_free, job, NEW))
            next_free += 1
    return planned


def contiguous(
    planned: list[tuple[int, list[str], str]], max_batch: int | None = None
) -> list[list[tuple[int, list[str], str]]]:
    """The jobs to launch, in runs of consecutive job numbers (a launcher numbers a batch from its
    first job on), each at most ``max_batch`` long."""
    batches: list[list[tuple[int, list[str], str]]] = []
    for job in sorted(planned, key=lambda j: j[0]):
        last = batches[-1] if batches else None
        if last and last[-1][0] + 1 == job[0] and (max_batch is None or len(last) < max_batch):
            last.append(job)
        else:
            batches.append([job])
    return batches
