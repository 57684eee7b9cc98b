"""Fault tolerance: a run killed with SIGKILL resumes from ``ckpt_path=last`` as if it had never stopped."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import read_scalars

MAX_STEPS = 300  # about 16 epochs of digits: still running when the second has been saved
METRICS = ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/loss", "test/acc")


def start(run_dir: Path, *overrides: str) -> subprocess.Popen:
    budget = f"trainer.max_steps={MAX_STEPS}"
    cmd = [sys.executable, "-m", "normlab.train", "seed=1", budget, f"hydra.run.dir={run_dir}"]
    with (run_dir.parent / f"{run_dir.name}.log").open("a") as log:  # the child keeps its own handle
        return subprocess.Popen([*cmd, *overrides], stdout=log, stderr=subprocess.STDOUT, cwd=run_dir.parent)


def finish(proc: subprocess.Popen, run_dir: Path) -> None:
    code = proc.wait(timeout=300)
    assert code == 0, (run_dir.parent / f"{run_dir.name}.log").read_text()[-3000:]


def wait_for_checkpoints(last: Path, proc: subprocess.Popen, count: int) -> None:
    """Return once ``last`` has been written ``count`` times (count epochs done)."""
    seen: set[int] = set()
    deadline = time.monotonic() + 240
    while len(seen) < count:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, f"no checkpoint #{count} at {last}"
        with contextlib.suppress(FileNotFoundError):  # not written yet
            seen.add(last.stat().st_mtime_ns)
        time.sleep(0.01)


def curves(run_dir: Path) -> dict[str, dict[int, float | None]]:
    """tag -> {step: value} of every scalar but wall-clock timings (the diagnostics' included);
    where a resumed run wrote a step twice, the later value counts. NaN (a summary value that does
    not exist) becomes None, which compares equal to itself."""
    scalars = read_scalars(run_dir)
    return {
        tag: {step: None if math.isnan(value) else value for step, value in points}
        for tag, points in scalars.items()
        if "time" not in tag
    }


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(entry, tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    ref_proc = start(reference)  # in parallel: the two runs share nothing but the seed
    proc = start(killed)
    last = killed / "checkpoints" / "last.ckpt"
    wait_for_checkpoints(last, proc, count=2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_at = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert 0 < killed_at < MAX_STEPS
    before_kill = sorted(killed.glob("events.out.tfevents*"))
    assert before_kill, "the killed run wrote no event file"

    # the resume, in this process while the reference goes on in its own
    budget = f"trainer.max_steps={MAX_STEPS}"
    resume = entry("train", "seed=1", budget, f"hydra.run.dir={killed}", "ckpt_path=last", cwd=tmp_path)
    assert resume.returncode == 0, resume.stdout[-2000:] + resume.stderr[-3000:]
    finish(ref_proc, reference)

    expected, resumed = curves(reference), curves(killed)
    assert max(resumed["train/loss"]) > killed_at and resumed["test/acc"]  # went on to the end and tested
    assert set(METRICS) <= set(expected)
    assert sorted(resumed) == sorted(expected)
    for tag in expected:
        assert resumed[tag] == expected[tag], tag  # every logged step, the final metrics included

    for path in before_kill:  # cut off mid-write by the kill, yet readable up to the last whole record
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        losses = {e.step: e.value for e in acc.Scalars("train/loss")}
        assert losses and all(expected["train/loss"][s] == v for s, v in losses.items())
