"""Runs never lose work, and every routine mistake is one line with exit status 2 (issue 15).

Each numbered item of the issue has its test here, through the command line where a user meets it.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from normlab import checkpoint_io
from normlab.checkpoint_io import CheckpointWriteError, write_atomically
from normlab.collapse import accuracy_collapse_step, loss_collapse_step
from normlab.runs import find_checkpoint


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The error line of a refused command; it exited 2 with no traceback."""
    assert proc.returncode == 2, proc.stdout[-1500:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def step_of(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


def popen_train(run_dir: Path, *overrides: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "normlab.train", f"hydra.run.dir={run_dir}", *overrides]
    log = (run_dir.parent / f"{run_dir.name}.log").open("a")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=run_dir.parent)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path} appeared"
        assert time.monotonic() < deadline, f"no {path}"
        time.sleep(0.05)


# 1 ------------------------------------------------------------------------------------------
def test_last_means_the_highest_step_among_all_last_checkpoints(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.save({"global_step": 72}, folder / "last-v1.ckpt")
    torch.save({"global_step": 36}, folder / "last.ckpt")  # written later, yet older
    torch.save({"global_step": 90}, folder / "best-epoch004-step000090.ckpt")
    assert find_checkpoint("last", tmp_path) == str(folder / "last-v1.ckpt")


def test_resuming_a_moved_run_keeps_one_last_ckpt_and_resumes_the_newest(train, tmp_path):
    _, first = train("trainer.max_steps=36")
    moved = tmp_path / "moved"
    shutil.move(first, moved)
    train("ckpt_path=last", "trainer.max_steps=72", run_dir=moved)
    assert sorted(p.name for p in (moved / "checkpoints").glob("last*.ckpt")) == ["last.ckpt"]
    assert step_of(moved / "checkpoints" / "last.ckpt") == 72
    proc, _ = train("ckpt_path=last", "trainer.max_steps=90", run_dir=moved)
    restart = moved / "checkpoints" / "restart-step000072.ckpt"
    assert f"resuming from {restart} (step 72)" in proc.stdout
    assert step_of(restart) == 72 and step_of(moved / "checkpoints" / "last.ckpt") == 90  # the start point is kept


# 2 ------------------------------------------------------------------------------------------
def test_a_failed_checkpoint_write_leaves_the_old_file_and_no_partial(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    write_atomically(target, b"old and whole")

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io.os, "fsync", full_disk)
    with pytest.raises(CheckpointWriteError) as caught:
        write_atomically(target, b"x" * 3 * 2**20)
    assert target.read_bytes() == b"old and whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    message = str(caught.value)
    assert f"no space left to write checkpoint {target}: it needs 3.0 MiB" in message


@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_only_whole_checkpoints(tmp_path):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    rng = random.Random(15)
    reached = 0
    for attempt in range(4):
        resume = ["ckpt_path=last"] if attempt else []
        proc = popen_train(
            run_dir, "trainer.max_steps=100000", "~callbacks.diagnostics", "~callbacks.progress", *resume
        )
        wait_for_step_above(last, reached, proc)  # this attempt has written a checkpoint of its own
        time.sleep(rng.uniform(0.0, 1.5))  # a checkpoint is written about every 0.1 s
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        for path in (run_dir / "checkpoints").iterdir():
            if path.suffix == ".ckpt":
                assert step_of(path) > 0, path  # loads, whole
        assert step_of(last) > reached  # each resume went on from the last one
        reached = step_of(last)


def wait_for_step_above(path: Path, step: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Wait until ``path`` holds a checkpoint beyond ``step`` (written atomically: always whole)."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and step_of(path) > step):
        assert proc.poll() is None, f"the run ended before {path} went beyond step {step}"
        assert time.monotonic() < deadline, f"{path} stayed at step {step}"
        time.sleep(0.05)


# 3 ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_run_into_a_busy_run_directory_is_refused(entry, tmp_path):
    run_dir = tmp_path / "busy"
    first = popen_train(run_dir, "trainer.max_steps=100000")  # another process holds the directory
    try:
        wait_for(run_dir / "checkpoints" / "last.ckpt", first)
        overrides = (run_dir / ".hydra" / "overrides.yaml").read_text()
        line = one_line_error(entry("train", "trainer.max_steps=5", f"hydra.run.dir={run_dir}", cwd=tmp_path))
        assert line == (
            f"normlab: error: run directory {run_dir} is in use by another run (pid {first.pid}); "
            "wait for it to end, or pass hydra.run.dir=<another folder>"
        )
        assert (run_dir / ".hydra" / "overrides.yaml").read_text() == overrides  # nothing overwritten
    finally:
        first.kill()
        first.wait()
    # The lock went with the killed process: resuming there works at once.
    proc = entry("train", "ckpt_path=last", "trainer.max_steps=40", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_new_run_into_a_directory_with_checkpoints_needs_overwrite(entry, train, tmp_path):
    _, run_dir = train("trainer.max_steps=20")
    proc = entry("train", "trainer.max_steps=20", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert "holds the checkpoints of an earlier run; resume it with ckpt_path=last" in one_line_error(proc)
    train("trainer.max_steps=20", "overwrite=true", run_dir=run_dir)


# 4 ------------------------------------------------------------------------------------------
def test_collapse_is_a_fall_back_to_chance_after_learning():
    steps = [100, 200, 300, 400, 500]
    assert accuracy_collapse_step(steps, [0.5, 0.9, 0.95, 0.11, 0.1], chance=0.1) == 400
    assert accuracy_collapse_step(steps, [0.5, 0.9, 0.11, 0.93, 0.1], chance=0.1) == 500
    assert accuracy_collapse_step(steps, [0.1, 0.1, 0.11, 0.1, 0.1], chance=0.1) is None  # never learned
    assert accuracy_collapse_step(steps, [0.5, 0.9, 0.95, 0.11, 0.9], chance=0.1) is None  # recovered
    assert loss_collapse_step(steps, [2.3, 0.5, 0.3, 2.25, 2.3]) == 400
    assert loss_collapse_step(steps, [2.3, 2.0, 1.9, 2.2, 2.3]) is None  # never dropped below half


def test_test_on_last_tests_the_final_weights_and_the_summary_says_so(train):
    proc, run_dir = train("trainer.max_steps=40", "test_on=last")
    assert "Restoring states from the checkpoint path" not in proc.stdout + proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test_on"] == "last" and summary["status"] == "completed"
    _, run_dir = train("trainer.max_steps=40")
    assert json.loads((run_dir / "summary.json").read_text())["test_on"] == "best"


def test_a_run_that_fell_back_to_chance_is_collapsed_in_the_summary_and_report(train, tmp_path):
    # A ReLU network learns digits at lr 0.1 (val/acc 0.95 by step 144); at step 150 the scheduler
    # raises lr to 1 and the network dies: chance from then on, every number finite.
    proc, run_dir = train(
        "model.activation=relu",
        "optimizer.lr=0.1",
        "scheduler=step",
        "scheduler.scheduler.step_size=150",
        "scheduler.scheduler.gamma=10",
        "seed=0",
        "trainer.max_steps=300",
        "callbacks.diagnostics.on_nonfinite=warn",
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    history = summary["val_history"]
    assert summary["status"] == "collapsed", history
    assert summary["collapse_step"] == next(s for s, a in history if s >= summary["collapse_step"])
    assert f"collapsed: validation accuracy back at chance level from step {summary['collapse_step']}" in proc.stdout
    from normlab.report import build_report

    report = build_report(run_dir.parent, out_dir=tmp_path / "report")
    (result,) = [o for r, o in zip(report.runs, report.outcomes, strict=True) if r.path == run_dir]
    assert result.status == "collapsed" and result.collapse_step == summary["collapse_step"]


# 5 ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ctrl_c_leaves_an_interrupted_summary_and_the_resume_command(tmp_path):
    run_dir = tmp_path / "run"
    proc = popen_train(run_dir, "trainer.max_steps=100000")
    wait_for(run_dir / "checkpoints" / "last.ckpt", proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["global_step"] > 0
    log = (tmp_path / "run.log").read_text()
    assert f"resume         normlab-train ckpt_path=last \"hydra.run.dir='{run_dir}'\"" in log
    assert "Traceback" not in log


# 6 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optimizer.lr=abc", "optimizer.lr=abc: must be a number"),
        ("model.activation=swish", "model.activation=swish: must be one of sigmoid, relu, tanh"),
        ("model=bn_mpl", "model=bn_mpl: no such model config; choose one of baseline_cnn, baseline_mlp, bn_cnn"),
        ("foo=1", "foo is not a setting here; known keys: callbacks, ckpt_path, data"),
    ],
)
def test_hydra_composition_errors_are_one_line(entry, tmp_path, override, expected):
    line = one_line_error(entry("train", override, cwd=tmp_path))
    assert line.startswith(f"normlab: error: {expected}")
    assert not (tmp_path / "outputs").exists()


# 7, 8 ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["seed=-1"], "seed=-1 is out of range: must be >= 0"),
        (["data.val_fraction=0"], "data.val_fraction=0.0 is out of range: must be > 0"),
        (["data.val_fraction=0.5", "data.test_fraction=0.5"], "add up to 1, leaving nothing to train on"),
        (["optimizer=adam", "optimizer.betas=[2,3]"], "optimizer.betas=[2.0, 3.0] is out of range"),
        (["model.hidden=[]"], "model.hidden=[] lists no hidden layer"),
        (["+foo=1"], "foo is not a setting here"),
        (["data.batch_size=100000"], "data.batch_size=100000 is larger than the training split (1168 examples)"),
        (["data=mnist", "data.data_dir=README.md"], "data.data_dir=README.md is a file, not a folder"),
    ],
)
def test_bad_values_are_one_line_before_anything_runs(entry, tmp_path, overrides, expected):
    (tmp_path / "README.md").write_text("a file, not a folder")
    proc = entry("train", *overrides, "trainer.max_steps=5", cwd=tmp_path)
    assert expected in one_line_error(proc)
    assert "config" not in proc.stdout  # the config tree is printed only once the config is valid
    assert not (tmp_path / "outputs").exists()


def test_broken_checkpoints_are_one_line(entry, tmp_path):
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    for name in ("text.ckpt", "empty.ckpt"):
        line = one_line_error(entry("train", f"ckpt_path={tmp_path / name}", cwd=tmp_path))
        assert f"ckpt_path={tmp_path / name} is not a readable checkpoint" in line
    line = one_line_error(entry("evaluate", cwd=tmp_path))
    assert line == "normlab: error: invalid config: ckpt_path has no value: pass ckpt_path=VALUE on the command line"
    assert not (tmp_path / "outputs").exists()


def test_checkpoints_of_another_model_or_data_are_one_line(entry, train, tmp_path):
    _, run_dir = train("trainer.max_steps=20")
    last = run_dir / "checkpoints" / "last.ckpt"
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(last.read_bytes()[:5000])
    line = one_line_error(entry("train", f"ckpt_path={truncated}", cwd=tmp_path))
    assert "is not a readable checkpoint" in line
    line = one_line_error(entry("train", f"ckpt_path={last}", "model.width=50", cwd=tmp_path))
    assert f"ckpt_path={last} holds another model: net.layer1.fc.weight is [100, 64] there, [50, 64] here" in line
    line = one_line_error(entry("train", f"ckpt_path={last}", "optimizer=adam", cwd=tmp_path))
    assert "was trained with optimizer torch.optim.SGD, not torch.optim.Adam" in line
    line = one_line_error(entry("evaluate", f"ckpt_path={last}", "data=synthetic", cwd=tmp_path))
    assert "data.input_shape=[8] does not fit" in line and "takes input_shape=[1, 8, 8]" in line
    assert not (tmp_path / "outputs").exists()


def test_an_unwritable_run_directory_is_one_line(entry, tmp_path):
    (tmp_path / "file").write_text("")
    line = one_line_error(entry("train", f"hydra.run.dir={tmp_path / 'file' / 'run'}", cwd=tmp_path))
    assert f"cannot write the run directory {tmp_path / 'file' / 'run'}" in line


# 9 ------------------------------------------------------------------------------------------
def test_a_failure_after_hydra_created_the_run_directory_leaves_no_folder(entry, tmp_path):
    line = one_line_error(entry("train", "ckpt_path=last", cwd=tmp_path))  # the default, dated run directory
    assert "ckpt_path=last: no checkpoint in" in line
    assert not (tmp_path / "outputs").exists()
    kept = tmp_path / "outputs" / "runs" / "mine"
    kept.mkdir(parents=True)
    one_line_error(entry("train", "ckpt_path=last", f"hydra.run.dir={kept}", cwd=tmp_path))
    assert kept.is_dir()  # there before: not ours to remove


# 10 -----------------------------------------------------------------------------------------
# (tests/test_new_project.py: test_names_git_ignores_or_top_level_folders_are_refused)


# 11 -----------------------------------------------------------------------------------------
def test_report_calls_a_garbage_summary_unreadable_and_names_the_layers(tmp_path, capsys):
    from normlab.report import build_report
    from normlab.report.cli import main as report_main
    from synthetic_sweep import write_sweep

    sweep = tmp_path / "sweep"
    write_sweep(sweep, steps=60, diverge=[("baseline_mlp", 1.0, 1)])
    (run,) = sweep.glob("003_*")  # the diverging run
    (run / "summary.json").write_text("{garbage")
    report = build_report(sweep)
    (result,) = [o for r, o in zip(report.runs, report.outcomes, strict=True) if r.path == run]
    assert result.status == "unreadable" and "summary.json unreadable" in result.error
    assert report_main([str(sweep), "--layer", "layer9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "normlab-report: error: --layer layer9: no run has that layer with logged percentiles; "
        "the layers are layer1, layer2, layer3"
    ]
    (tmp_path / "file").write_text("")
    assert report_main([str(sweep), "--out", str(tmp_path / "file" / "out")]) == 2
    assert "normlab-report: error: cannot write" in capsys.readouterr().err
