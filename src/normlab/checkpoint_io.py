"""The one writer of checkpoints: a file on disk is either a whole checkpoint or not there.

Lightning's ``TorchCheckpointIO`` writes straight into the final path, so a full disk or a kill
mid-write leaves a truncated ``.ckpt`` that looks like any other. ``AtomicCheckpointIO`` is a
``CheckpointIO`` plugin (Lightning's public extension point for how checkpoints are stored): it
serializes in memory, writes a hidden temporary file in the same folder, flushes it to disk and
renames it over the target, which is atomic on POSIX file systems.
"""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from normlab.errors import UserError
from normlab.runs import PARTIAL_SUFFIX


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (full disk, read-only folder); nothing half-written is left."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose writes are atomic; a failed write stops the run with one line.

    Example::

        Trainer(plugins=[AtomicCheckpointIO()])
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomically(Path(path), buffer.getbuffer())


def write_atomically(path: Path, data: memoryview | bytes) -> None:
    """Put ``data`` at ``path`` all at once: temporary file beside it, fsync, rename, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.{os.getpid()}{PARTIAL_SUFFIX}")
    try:
        with open(partial, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except OSError as e:
        partial.unlink(missing_ok=True)
        raise CheckpointWriteError(_failure(path, len(data), e)) from None
    folder = os.open(path.parent, os.O_RDONLY)
    try:  # the rename itself survives a power cut only once the folder is on disk
        os.fsync(folder)
    finally:
        os.close(folder)


def _failure(path: Path, size: int, error: OSError) -> str:
    need = f"{size / 2**20:.1f} MiB"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        free = os.statvfs(path.parent)
        left = free.f_bavail * free.f_frsize / 2**20
        return (
            f"no space left to write checkpoint {path}: it needs {need}, {left:.1f} MiB are free; free some space "
            "and resume with ckpt_path=last (the checkpoints already written are whole)"
        )
    return f"cannot write checkpoint {path} ({need}): {error.strerror}"
