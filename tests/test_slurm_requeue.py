"""SLURM's time-limit warning: the run saves its state, requeues itself, and the requeued job resumes.

No SLURM here: the run gets SLURM's environment variables, a stand-in ``scontrol`` on PATH records
the requeue, and the test sends the warning signal (USR1, as ``--signal=USR1@90`` in
``conf/hydra/launcher/slurm.yaml`` asks SLURM to). Then it kills the job, as SLURM would at the
time limit, and starts the same command again, as the requeued job would. In-process tests send
the signal while a logger holds its write lock, where Lightning's own handler would wait forever.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader, TensorDataset

from normlab.slurm_requeue import next_hpc_checkpoint, time_limit_handling

MAX_STEPS = 800  # the first job gets the signal at its first checkpoint (step 18), with seconds of training left


def slurm_env(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    env.update(
        SLURM_JOB_ID="4242", SLURM_JOB_NAME="normlab", SLURM_NTASKS="1", SLURM_PROCID="0",
        SLURM_LOCALID="0", SLURM_NODEID="0", SLURM_NODELIST="localhost",
    )  # fmt: skip
    return env


@pytest.mark.slow
def test_time_limit_signal_saves_requeues_and_the_requeued_job_resumes(tmp_path):
    sweep = tmp_path / "sweep"
    command = [
        sys.executable, "-m", "normlab.train", "-m", "model=bn_mlp", f"trainer.max_steps={MAX_STEPS}",
        "~callbacks.progress", "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    env = slurm_env(tmp_path)
    with (tmp_path / "first.log").open("w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
    deadline = time.monotonic() + 240
    while not list(sweep.glob("*/checkpoints/last.ckpt")):  # fit has started: Lightning's handler is set
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (run,) = [p for p in sweep.iterdir() if (p / ".hydra").is_dir()]
    proc.send_signal(signal.SIGUSR1)
    hpc = run / "hpc_ckpt_1.ckpt"
    while not (tmp_path / "scontrol.log").is_file():
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no requeue"
        time.sleep(0.05)
    proc.kill()  # the time limit
    proc.wait(timeout=30)
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    first = (tmp_path / "first.log").read_text()
    assert f"saved {hpc}" in first and "requeued SLURM job 4242" in first  # at a batch end, not in the handler
    saved_at = torch.load(hpc, map_location="cpu", weights_only=False)["global_step"]
    assert 0 < saved_at < MAX_STEPS

    again = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    # resumed from the newest checkpoint: the requeue's, or one written while SLURM lets the job run on
    # (last.ckpt, or a best-*.ckpt when the kill came before last.ckpt caught up with it)
    restored = re.search(r"Restored all states from the checkpoint at (.+\.ckpt)", again.stdout + again.stderr)
    assert restored, again.stderr[-3000:]
    path = Path(restored[1])
    assert path == hpc or path.parent == run / "checkpoints"
    assert torch.load(path, map_location="cpu", weights_only=False)["global_step"] >= saved_at
    assert "resumed" in again.stdout  # the sweep's table: the same job, in the same directory
    assert [p.name for p in sweep.iterdir() if (p / ".hydra").is_dir()] == [run.name]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == MAX_STEPS


def test_slurm_preset_asks_for_the_signal_that_the_run_handles(compose_cfg, tmp_path):
    # submitit's private sbatch writer: if it moves, this test fails loudly rather than the preset silently
    from submitit.slurm.slurm import _make_sbatch_string

    launcher = compose_cfg(["hydra/launcher=slurm"]).hydra.launcher
    text = _make_sbatch_string(
        command="true",
        folder=tmp_path,
        signal_delay_s=launcher.signal_delay_s,
        additional_parameters=dict(launcher.additional_parameters),
    )
    assert "#SBATCH --signal=USR1@90" in text.splitlines() and "USR2" not in text


class LockedLogger(Logger):
    """A logger that holds a lock of its own while it writes, as TensorBoard's event writer does,
    and needs it again to flush. At ``signal_at`` it gets SLURM's signal while it holds the lock."""

    name, version = "locked", "0"

    def __init__(self, signal_at: int) -> None:
        super().__init__()
        self.signal_at = signal_at
        self.lock = threading.Lock()
        self.blocked: list[str] = []  # what could not take the lock: a deadlock, but for the timeout

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        with self.lock:
            if step == self.signal_at:
                os.kill(os.getpid(), signal.SIGUSR1)
                time.sleep(0.01)  # the Python handler runs here, in the middle of the write

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        return None

    def save(self) -> None:
        self._flush("save")

    def finalize(self, status: str) -> None:
        self._flush("finalize")

    def _flush(self, caller: str) -> None:
        if not self.lock.acquire(timeout=2):
            self.blocked.append(caller)
            return
        self.lock.release()


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        self.log("loss_seen", float(batch_idx))
        return torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit_with_signal(tmp_path: Path, monkeypatch, normlab_handling: bool) -> LockedLogger:
    for key, value in slurm_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    plugins, callbacks = time_limit_handling() if normlab_handling else ([], [])
    assert len(callbacks) == normlab_handling
    logger = LockedLogger(signal_at=4)
    x = torch.randn(64, 4)
    trainer = L.Trainer(
        max_steps=8, logger=logger, plugins=plugins, callbacks=callbacks, default_root_dir=tmp_path,
        log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(Tiny(), DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=8))
    return logger


def test_a_signal_inside_a_loggers_write_is_handled_after_it(tmp_path, monkeypatch):
    logger = fit_with_signal(tmp_path, monkeypatch, normlab_handling=True)
    assert logger.blocked == []
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    saved = torch.load(tmp_path / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] in (5, 6)  # the next batch end after the write at step 4, not the end of fit
    assert next_hpc_checkpoint(tmp_path).name == "hpc_ckpt_2.ckpt"


def test_lightnings_own_handler_flushes_inside_the_write(tmp_path, monkeypatch):
    # why normlab replaces it (Lightning-AI/pytorch-lightning#21406): if this fails, Lightning no
    # longer does its work inside the signal handler, and RequeueAtTimeLimit may go
    logger = fit_with_signal(tmp_path, monkeypatch, normlab_handling=False)
    assert logger.blocked == ["finalize"]
