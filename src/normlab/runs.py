"""Run directories: where configs live, how runs are named, and how checkpoints are found."""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import shutil
from pathlib import Path

from omegaconf import OmegaConf

from normlab.errors import ConfigError, UserError

# One token per process: every name this process resolves agrees, two processes started in the
# same second (or on two cluster nodes with the same pid) never collide.
RUN_TOKEN = f"{os.getpid():x}{secrets.token_hex(2)}"
_MAX_NAME = 120
LOCK_FILE = ".normlab.lock"
PARTIAL_SUFFIX = ".partial"  # a checkpoint being written (see normlab.checkpoint_io)
_locks: dict[Path, int] = {}  # run directory -> the open lock file, held until the process ends
_created: dict[Path, Path | None] = {}  # run directory -> the outermost folder its creation added


def config_dir() -> str:
    """The YAML configs: ``normlab/conf`` in an installed wheel, the repository's ``conf/`` in a checkout."""
    packaged = Path(__file__).with_name("conf")
    return str(packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "conf")


def safe_name(text: str) -> str:
    """A path component: no separators, bounded length (a long one ends in a hash of the whole, so
    that the same overrides give the same name again, which a resumed sweep relies on)."""
    text = text.replace(os.sep, "_").strip(".") or "run"
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    return text if len(text) <= _MAX_NAME else text[: _MAX_NAME - 9] + "~" + digest


def run_label(model: str, data: str, overrides: str = "") -> str:
    """``bn_mlp-digits`` followed by the command-line overrides other than model and data."""
    rest = [o for o in overrides.split(",") if o and not o.startswith(("model=", "data="))]
    return safe_name(",".join([f"{model}-{data}", *rest]))


def job_subdir(num: int, overrides: str) -> str:
    """A sweep job's directory: its overrides, after a job number that keeps repeats apart."""
    return safe_name(f"{int(num):03d}_{overrides or 'defaults'}")


def optuna_storage(storage: str | None, sweep_dir: str) -> str:
    """An Optuna study's storage: ``storage`` as given, or SQLite in ``SWEEP_DIR/optuna.db`` (an
    absolute path: trials may run in another working directory)."""
    return str(storage) if storage else f"sqlite:///{(Path(sweep_dir) / 'optuna.db').resolve()}"


def register_resolvers() -> None:
    resolvers = {
        "run_label": run_label,
        "job_subdir": job_subdir,
        "run_token": lambda: RUN_TOKEN,
        "optuna_storage": optuna_storage,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def find_checkpoint(ckpt_path: str | None, run_dir: Path) -> str | None:
    """Resolve ``ckpt_path``: ``None``, ``last`` (the newest ``last*.ckpt`` under ``run_dir``, else
    the newest checkpoint there) or a file."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        folder = run_dir / "checkpoints"
        found = sorted(folder.glob("last*.ckpt")) or sorted(folder.glob("*.ckpt"))
        if not found:
            raise ConfigError(
                f"ckpt_path=last: no checkpoint in {folder}; "
                "pass hydra.run.dir=<the run directory to resume> or ckpt_path=<file.ckpt>"
            )
        return str(max(found, key=_recency))
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    return str(path.resolve())


def keep_restart_point(path: str, step: int) -> str:
    """A hard link ``restart-stepNNNNNN.ckpt`` to the checkpoint a run resumes from, to resume from.

    The resumed run replaces ``last.ckpt`` as it goes (atomically, so the link keeps the old
    file): the state it started from stays on disk, and the path Lightning reports restoring
    stays that state. Where hard links are not supported the checkpoint is resumed in place.
    """
    source = Path(path)
    link = source.with_name(f"restart-step{step:06d}.ckpt")
    if source.parent.name != "checkpoints" or source.name == link.name:
        return path
    try:
        link.unlink(missing_ok=True)
        os.link(source, link)
    except OSError:
        return path
    return str(link)


def _recency(path: Path) -> tuple[int, int]:
    """Newest first by training step, then by write time: a copied folder's mtimes say nothing."""
    return checkpoint_step(path), path.stat().st_mtime_ns


def checkpoint_step(path: Path) -> int:
    """The ``global_step`` stored in a checkpoint, -1 when it cannot be read."""
    # torch and Lightning are imported where used: normlab-report imports this module, and starts
    # in about 1 s without them instead of 7.
    import torch

    try:  # mmap: only the few bytes of the step are read, not the weights
        return int(torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("global_step", -1))
    except Exception:  # a foreign or broken file ranks last; loading it later says what is wrong
        return -1


# What Hydra and the entry point write before a run starts; a folder holding only these is unused.
_BOOKKEEPING = (".hydra", "config_tree.txt", LOCK_FILE)


def claim_run_dir(run_dir: Path, resuming: bool, overwrite: bool = False) -> None:
    """Make ``run_dir`` this process's: create it, lock it, and refuse one that holds another run.

    The lock is an ``fcntl`` lock on ``.normlab.lock``: the system frees it when the process ends,
    however it ends, so a crashed run leaves no stale lock. Only the first process of a
    distributed run claims the folder (the others run with a rank in their environment).
    """
    run_dir = run_dir.resolve()
    from lightning.pytorch.utilities import rank_zero_only  # here, not at the top: see checkpoint_step

    if run_dir in _locks or rank_zero_only.rank != 0:
        return
    _created.setdefault(run_dir, _first_missing(run_dir))
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(
            f"cannot write the run directory {run_dir}: {e.strerror}; pass hydra.run.dir=<a writable folder>"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise UserError(
            f"run directory {run_dir} is in use by another run (pid {owner}); wait for it to end, "
            "or pass hydra.run.dir=<another folder>"
        ) from None
    _locks[run_dir] = fd
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _refuse_foreign_checkpoints(run_dir, resuming, overwrite)
    for partial in run_dir.glob(f"checkpoints/.*{PARTIAL_SUFFIX}"):  # cut off by a killed run: never whole
        partial.unlink(missing_ok=True)


def release_run_dirs() -> None:
    """Unlock every run directory this process claimed, for a process that starts one run after
    another in itself (the tests' in-process entry points, a notebook)."""
    for fd in _locks.values():
        os.close(fd)
    _locks.clear()
    _created.clear()


def _refuse_foreign_checkpoints(run_dir: Path, resuming: bool, overwrite: bool) -> None:
    old = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    if not old or resuming:
        return
    if not overwrite:
        raise UserError(
            f"run directory {run_dir} holds the checkpoints of an earlier run; resume it with ckpt_path=last, "
            "start over there with overwrite=true (its checkpoints are deleted), or pass hydra.run.dir=<another folder>"
        )
    for path in old:
        path.unlink()


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet: what creating it would add."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def discard_if_unused(run_dir: Path) -> None:
    """Remove a run directory that holds nothing but what Hydra and the entry point wrote before
    the run failed, and the empty folders above it that this process created (a label folder
    under ``outputs/runs``); nothing that was there before goes."""
    run_dir = run_dir.resolve()
    created = _created.get(run_dir)
    if created is None or not run_dir.is_dir():  # not made by this process: not ours to remove
        return
    if not all(p.name in _BOOKKEEPING or p.suffix == ".log" for p in run_dir.iterdir()):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    folder = run_dir.parent
    while folder != created.parent and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent
