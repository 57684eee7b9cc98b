"""A grid sweep started again: runs that ended are skipped, the others resumed or run again, each
under its own job number and directory; a sweep extended with more values runs only the new ones."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from normlab.report.sweep import load_runs
from normlab.sweep_resume import NEW, RERUN, RESUMED, SKIPPED, contiguous, existing_runs, latest_checkpoint, plan
from test_sweep import STATUS_LINE, multirun

GRID = ["model=baseline_mlp,bn_mlp", "optimizer.lr=0.05,0.5"]
# About a second of training per run: long enough to be killed in the middle of the third.
STEPS = [
    "trainer.max_steps=150",
    "trainer.log_every_n_steps=10",
    "~callbacks.progress",
    "trainer.enable_progress_bar=false",
]
ACTION = re.compile(r"^  (\d{3})  +\w+ .*?  (skipped|resumed|rerun|new) ", flags=re.MULTILINE)


def make_run(sweep: Path, num: int, overrides: list[str], status: str | None = None, ckpt: bool = False) -> Path:
    run = sweep / f"{num:03d}_{','.join(sorted(overrides))}"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if status:
        (run / "summary.json").write_text(json.dumps({"status": status}))
    if ckpt:
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    return run


def test_plan_keeps_job_numbers_and_decides_from_the_run_directories(tmp_path):
    jobs = [["m=a", "lr=1"], ["m=a", "lr=2"], ["m=b", "lr=1"], ["m=b", "lr=2"]]
    make_run(tmp_path, 0, jobs[0], status="completed")
    make_run(tmp_path, 1, ["lr=2", "m=a"], status="diverged")  # the same overrides in another order
    make_run(tmp_path, 2, jobs[2], status="failed", ckpt=True)
    make_run(tmp_path, 3, jobs[3], status="some status from a newer version")
    existing = existing_runs(tmp_path)
    assert plan(jobs, existing) == [
        (0, jobs[0], SKIPPED),
        (1, jobs[1], SKIPPED),
        (2, jobs[2], RESUMED),
        (3, jobs[3], RERUN),
    ]
    # killed before job 3 started: it keeps its position
    assert plan(jobs, {k: v for k, v in existing.items() if v[0] != 3})[3] == (3, jobs[3], NEW)
    # extended with lr=3: the old runs keep their numbers, the new ones come after them in sweep order
    wider = [["m=a", "lr=1"], ["m=a", "lr=2"], ["m=a", "lr=3"], ["m=b", "lr=1"], ["m=b", "lr=2"], ["m=b", "lr=3"]]
    assert [(num, action) for num, _, action in plan(wider, existing)] == [
        (0, SKIPPED), (1, SKIPPED), (4, NEW), (2, RESUMED), (3, RERUN), (5, NEW),
    ]  # fmt: skip
    assert [[j[0] for j in b] for b in contiguous(plan(wider, existing), max_batch=2)] == [[0, 1], [2, 3], [4, 5]]


def ended(sweep: Path) -> list[Path]:
    out = []
    for path in sweep.glob("*/summary.json"):
        try:
            if json.loads(path.read_text()).get("status") in ("completed", "diverged"):
                out.append(path.parent)
        except ValueError:  # being written
            pass
    return sorted(out)


def event_digests(runs: list[Path]) -> dict[str, str]:
    return {
        str(p.relative_to(p.parent.parent)): hashlib.sha256(p.read_bytes()).hexdigest()
        for run in runs
        for p in run.glob("events.out.tfevents*")
    }


def actions(stdout: str) -> dict[str, str]:
    return dict(ACTION.findall(stdout.split("normlab: sweep of", 1)[1]))


@pytest.mark.slow
def test_a_killed_grid_sweep_started_again_trains_only_what_did_not_end(entry, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *GRID, *STEPS, f"hydra.sweep.dir={sweep}"]
    command = [sys.executable, "-m", "normlab.train", *args]  # a process of its own, to be killed
    with (tmp_path / "first.log").open("w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    deadline = time.monotonic() + 240
    while len(ended(sweep)) < 2:
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "two runs did not finish"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    first = ended(sweep)
    before = event_digests(first)
    assert len(first) == 2 and before

    again = entry("train", *args, cwd=tmp_path)  # started again, and extended below: in this process
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(ended(sweep)) == 4
    assert event_digests(first) == before  # not trained again
    runs = sorted(p.name for p in sweep.iterdir() if (p / ".hydra").is_dir())
    assert [r[:3] for r in runs] == ["000", "001", "002", "003"]  # no run got a second directory
    done = actions(again.stdout)
    assert {done["000"], done["001"]} == {SKIPPED}
    assert {done["002"], done["003"]} <= {RESUMED, RERUN, NEW}
    assert "4 completed" in again.stdout and "2 skipped" in again.stdout

    # extended by one learning rate: only its two runs train, numbered after the old ones
    wider = [c if not c.startswith("optimizer.lr=") else "optimizer.lr=0.05,0.5,0.1" for c in args]
    extended = entry("train", *wider, cwd=tmp_path)
    assert extended.returncode == 0, extended.stderr[-3000:]
    done = actions(extended.stdout)
    assert done == {"000": SKIPPED, "001": SKIPPED, "002": SKIPPED, "003": SKIPPED, "004": NEW, "005": NEW}
    assert len(ended(sweep)) == 6 and event_digests(first) == before


@pytest.mark.slow
def test_submitit_local_sweep_resumes_a_run_from_its_checkpoint(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["model=bn_mlp", "seed=0,1", "hydra/launcher=submitit_local"]
    multirun(sweep, *args)
    first, second = sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())
    (second / "summary.json").unlink()  # what a run killed after a checkpoint leaves
    digest = event_digests([first])
    proc = multirun(sweep, *args)
    assert actions(proc.stdout) == {"000": SKIPPED, "001": RESUMED}
    assert dict(STATUS_LINE.findall(proc.stdout.split("normlab: sweep of", 1)[1])) == {
        "000": "completed",
        "001": "completed",
    }
    assert event_digests([first]) == digest
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    assert f"Restored all states from the checkpoint at {second / 'checkpoints' / 'last.ckpt'}" in logs


def test_the_newest_checkpoint_is_resumed_the_slurm_requeue_one_included(tmp_path):
    run = make_run(tmp_path, 0, ["m=a"], ckpt=True)
    last = run / "checkpoints" / "last.ckpt"
    hpc = run / "hpc_ckpt_1.ckpt"
    hpc.write_bytes(b"")
    os.utime(last, (100, 100))
    os.utime(hpc, (200, 200))
    assert latest_checkpoint(run) == hpc
    os.utime(last, (300, 300))
    assert latest_checkpoint(run) == last
    assert latest_checkpoint(make_run(tmp_path, 1, ["m=b"])) is None


@pytest.mark.slow
def test_joblib_sweep_started_again_launches_only_what_did_not_end(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["model=baseline_mlp,bn_mlp", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    first = multirun(sweep, *args)
    assert "this start" not in first.stdout  # a fresh sweep: no column for it
    runs = sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())
    (runs[0] / "summary.json").write_text(json.dumps({"status": "failed", "error": "the node died"}))
    shutil.rmtree(runs[0] / "checkpoints")  # failed before its first checkpoint
    digest = event_digests([runs[1]])
    again = multirun(sweep, *args)
    assert actions(again.stdout) == {"000": RERUN, "001": SKIPPED}
    assert "2 completed (1 rerun, 1 skipped)" in again.stdout
    assert event_digests([runs[1]]) == digest
    assert sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir()) == runs


def test_the_report_lists_jobs_of_a_grid_sweep_that_never_started(tmp_path):
    sweeper = {"_target_": "hydra_plugins.normlab_sweepers.grid.GridSweeper", "params": {"seed": "0,1"}}
    config = {"hydra": {"sweeper": sweeper, "overrides": {"task": ["model=baseline_mlp,bn_mlp"]}}}
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump(config))
    make_run(tmp_path, 0, ["seed=0", "model=baseline_mlp"], status="completed")
    runs = load_runs(tmp_path)
    assert [(r.overrides, r.path is None) for r in runs] == [
        (("seed=0", "model=baseline_mlp"), False),
        (("seed=0", "model=bn_mlp"), True),
        (("seed=1", "model=baseline_mlp"), True),
        (("seed=1", "model=bn_mlp"), True),
    ]
