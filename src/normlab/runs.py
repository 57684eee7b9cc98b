"""Run directories: where configs live, how runs are named, and how checkpoints are found."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from pathlib import Path

from omegaconf import OmegaConf

from normlab.errors import ConfigError

# One token per process: every name this process resolves agrees, two processes started in the
# same second (or on two cluster nodes with the same pid) never collide.
RUN_TOKEN = f"{os.getpid():x}{secrets.token_hex(2)}"
_MAX_NAME = 120


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
    """Resolve ``ckpt_path``: ``None``, ``last`` (``last.ckpt`` under ``run_dir``, else the newest
    checkpoint there) or a file."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        folder = run_dir / "checkpoints"
        found = sorted(folder.glob("*.ckpt"), key=lambda p: (p.name == "last.ckpt", p.stat().st_mtime))
        if not found:
            raise ConfigError(
                f"ckpt_path=last: no checkpoint in {folder}; "
                "pass hydra.run.dir=<the run directory to resume> or ckpt_path=<file.ckpt>"
            )
        return str(found[-1])
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    return str(path.resolve())


def discard_if_unused(run_dir: Path) -> None:
    """Remove a run directory that holds nothing but what Hydra and the config print wrote before the run failed."""
    if not run_dir.is_dir():
        return
    if all(p.name in (".hydra", "config_tree.txt") or p.suffix == ".log" for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)
