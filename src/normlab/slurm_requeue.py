"""SLURM's time-limit warning, acted on at the end of a training batch rather than inside the signal handler.

``hydra/launcher=slurm`` asks SLURM for USR1 90 s before a task's time limit. Lightning's own
SLURM handler saves a checkpoint, closes the loggers and requeues the job inside the signal
handler, which Python runs between any two bytecodes of the main thread. When the signal lands
while that thread holds a lock the handler needs again (TensorBoard's writer holds one while it
queues an event, and the handler's flush takes it), the handler waits forever: the job neither
saves nor requeues before SLURM kills it (Lightning-AI/pytorch-lightning#21406). Here the handler
only notes the signal, and ``RequeueAtTimeLimit`` does the work where training is between two
steps: it saves ``hpc_ckpt_N.ckpt`` (the name Lightning's resume and ``normlab.sweep_resume`` look
for), flushes the loggers and runs ``scontrol requeue``. Training goes on until SLURM stops it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn


def time_limit_handling() -> tuple[list[Any], list[L.Callback]]:
    """The Trainer plugins and callbacks of a SLURM job: Lightning's SLURM environment without its
    in-handler requeue, and ``RequeueAtTimeLimit`` in its place. Nothing outside SLURM."""
    if not SLURMEnvironment.detect():
        return [], []
    return [SLURMEnvironment(auto_requeue=False)], [RequeueAtTimeLimit()]


class RequeueAtTimeLimit(L.Callback):
    """On ``signum``, save a checkpoint and requeue the SLURM job at the end of the next training
    batch (on every rank at the same batch under data parallelism).

    Args:
        signum: the signal SLURM sends before the time limit (``sbatch --signal``).
        timeout_s: how long ``scontrol requeue`` may take before the run gives up on it.
    """

    def __init__(self, signum: int = signal.SIGUSR1, timeout_s: float = 60.0) -> None:
        self.signum, self.timeout_s = signum, timeout_s
        self.signalled = False
        self._previous: Any = None
        self._installed = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # in every stage: a signal during testing is then noted and let go, where SIGUSR1's default
        # action would end the process
        if threading.current_thread() is threading.main_thread() and not self._installed:
            self._previous = signal.signal(self.signum, self._note)  # only the main thread may set handlers
            self._installed = True

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._installed:
            signal.signal(self.signum, self._previous)
            self._installed = False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        due = self.signalled
        if trainer.world_size > 1:  # the ranks may get the signal at different batches: agree on one
            due = trainer.strategy.reduce_boolean_decision(due, all=False)
        if due:
            self.signalled = False
            self.save_and_requeue(trainer)

    def save_and_requeue(self, trainer: L.Trainer) -> None:
        path = next_hpc_checkpoint(Path(trainer.default_root_dir))
        trainer.save_checkpoint(path)  # on every rank: a collective under data parallelism
        for logger in trainer.loggers:
            logger.save()  # what is logged so far reaches the disk; the loggers stay open
        if trainer.is_global_zero:
            rank_zero_info(f"normlab: SLURM's time-limit signal: saved {path}")
            requeue(slurm_job_id(), self.timeout_s)

    def _note(self, signum: int, frame: Any) -> None:
        self.signalled = True  # nothing else: the main thread may be anywhere, holding any lock


def next_hpc_checkpoint(folder: Path) -> Path:
    """``hpc_ckpt_N.ckpt`` in ``folder``, ``N`` one more than any there (1 for the first)."""
    taken = [int(m[1]) for p in folder.glob("hpc_ckpt_*.ckpt") if (m := re.fullmatch(r"hpc_ckpt_(\d+)\.ckpt", p.name))]
    return folder / f"hpc_ckpt_{max(taken, default=0) + 1}.ckpt"


def slurm_job_id() -> str:
    """The job to requeue: an array job's task (``JOB_TASK``) or the job itself."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


def requeue(job: str, timeout_s: float) -> None:
    """``scontrol requeue job``; a warning, not an error, when it fails: the checkpoint is saved,
    and starting the sweep again resumes from it."""
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as error:
        rank_zero_warn(f"normlab: could not requeue SLURM job {job} ({error}); start the sweep again to resume it")
        return
    if done.returncode != 0:
        reason = done.stderr.strip() or f"exit status {done.returncode}"
        rank_zero_warn(f"normlab: scontrol requeue {job} failed ({reason}); start the sweep again to resume it")
        return
    rank_zero_info(f"normlab: requeued SLURM job {job}")
