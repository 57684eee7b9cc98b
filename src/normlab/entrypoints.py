"""What the command-line entry points share: logger, hyperparameters, summary, error handling."""

from __future__ import annotations

import errno
import logging
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch.utils.tensorboard.summary import hparams

from normlab.diagnostics.summary import merge_json
from normlab.errors import UserError
from normlab.hydra_errors import describe
from normlab.runs import claim_run_dir, discard_if_unused

# Metrics the HParams tab shows for every run; callbacks add theirs via `hparam_metrics`.
HPARAM_METRICS = ("val/acc_best", "val/acc", "val/loss", "test/acc", "test/loss", "train/loss")


def as_plain(node: Any) -> Any:
    """A resolved plain-Python copy of a config node (enums as strings), fit for checkpoints."""
    if node is None:
        return None
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)


def build_logger(cfg: DictConfig) -> Any:
    node = cfg.get("logger")
    return instantiate(node) if node and node.get("_target_") else False


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """Every leaf of the run's config as ``a.b.c: value`` plus the chosen option of each group."""
    plain = as_plain(cfg)
    for key in ("logger", "callbacks", "hydra"):
        plain.pop(key, None)
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            out[prefix] = node if isinstance(node, int | float | str | bool) else str(node)

    walk(plain, "")
    if HydraConfig.initialized():
        choices = HydraConfig.get().runtime.choices
        out.update({g: str(c) for g, c in choices.items() if not g.startswith("hydra") and c is not None})
    return out


@rank_zero_only
def log_hparams(trainer: L.Trainer, cfg: DictConfig) -> None:
    """Write the run's hyperparameters to TensorBoard's HParams tab, tied to real metric tags.

    No placeholder value is logged: the tab reads each metric from the scalars the run writes.
    """
    logger = trainer.logger
    if not isinstance(logger, TensorBoardLogger):
        return
    metrics = list(HPARAM_METRICS)
    for callback in trainer.callbacks:
        metrics += [m for m in getattr(callback, "hparam_metrics", ()) if m not in metrics]
    writer = logger.experiment.file_writer  # made with the SummaryWriter (the hparams go beside the scalars)
    for summary in hparams(flat_hparams(cfg), dict.fromkeys(metrics, 0.0)):
        writer.add_summary(summary)


@rank_zero_only
def print_summary(trainer: L.Trainer, metrics: dict[str, float], run_dir: Path, seconds: float) -> None:
    shown = {k: v for k, v in sorted(metrics.items()) if k.count("/") == 1 and not k.endswith("_step")}
    lines = [f"normlab: finished {trainer.global_step} steps in {seconds:.1f} s"]
    lines += [f"  {k:<14} {v:.4f}" for k, v in shown.items()]
    where = run_dir.resolve()
    lines += [f"  run directory  {where}", f"  tensorboard    tensorboard --logdir '{where}'"]
    if any(where.glob("checkpoints/*.ckpt")):
        lines.append(f"  resume         {resume_command(where)}")
    print("\n".join(lines), flush=True)


def resume_command(run_dir: Path) -> str:
    """The command that resumes this run: its own overrides (the config comes from the command
    line, not the checkpoint), ``ckpt_path=last`` and the run directory, quoted for shell and Hydra."""
    skip = ("ckpt_path=", "hydra.run.dir=", "trainer.max_steps=")
    own = [o for o in HydraConfig.get().overrides.task if not o.startswith(skip)] if HydraConfig.initialized() else []
    # Run names hold ',' and '=', which a Hydra override value only takes inside quotes.
    words = ["normlab-train", *map(shlex.quote, own), "ckpt_path=last", f"\"hydra.run.dir='{run_dir}'\""]
    return " ".join([*words, "trainer.max_steps=N"])


def hydra_entry_point(hydra_main: Callable[[], Any]) -> Callable[[], None]:
    """A console script around a ``@hydra.main`` function: a mistake Hydra finds while composing
    the config (a wrong type, an unknown option or key) ends in one line and exit status 2.

    Hydra would print it in 5 to 14 lines and exit 1. ``HYDRA_FULL_ERROR=1``, Hydra's public switch,
    makes it raise the error instead, so that it can be described here; a user who set the
    variable keeps Hydra's full report.
    """

    def main() -> None:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            hydra_main()
            return
        os.environ["HYDRA_FULL_ERROR"] = "1"
        try:
            hydra_main()
        except (HydraException, OmegaConfBaseException) as e:
            print(f"normlab: error: {describe(e)}", file=sys.stderr, flush=True)
            sys.exit(2)

    return main


def guarded(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run ``task``; a mistake the user can fix ends in one line on stderr and exit status 2.

    A run directory this process created that holds only what Hydra wrote before the failure is
    removed, with the empty folders above it that it created, so a bad command leaves nothing
    behind. In a multirun a failing job must not stop the sweep: any exception is printed as one
    line, its traceback goes to the job's log file, the run directory keeps a ``summary.json``
    with status ``failed``, and ``None`` is returned.
    """
    try:
        # A single run's directory was claimed before Hydra wrote in it (RunGuard). A sweep's job
        # directory belongs to its sweep, which resumes a job from the checkpoints found there.
        if in_multirun():
            claim_run_dir(Path(HydraConfig.get().runtime.output_dir), resuming=True)
        return task(cfg)
    except (UserError, InstantiationException, OSError) as e:
        if isinstance(e, OSError) and e.errno not in _FILESYSTEM_ERRORS:
            raise
        message = " ".join(str(e).split()) if not isinstance(e, OSError) else _filesystem_message(e)
        if in_multirun():
            return record_failure(message, error=None)
        if HydraConfig.initialized():
            discard_if_unused(Path(HydraConfig.get().runtime.output_dir))
        print(f"normlab: error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)
    except Exception as e:
        if not in_multirun():
            raise
        return record_failure(f"{type(e).__name__}: {' '.join(str(e).split())}", error=e)


# A folder the user pointed at that cannot be written: read-only, not theirs, or full.
_FILESYSTEM_ERRORS = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR)


def _filesystem_message(e: OSError) -> str:
    where = f" {e.filename}" if e.filename else ""
    return f"cannot write{where}: {e.strerror}; free some space or choose a writable folder"


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def record_failure(message: str, error: BaseException | None) -> None:
    """Note a failed sweep job: one line on stderr, the traceback in the job's log, ``summary.json``."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    log_file = run_dir / f"{hydra_cfg.job.name}.log"
    if error is not None:
        exc_info = (type(error), error, error.__traceback__)
        record = logging.LogRecord("normlab", logging.ERROR, __file__, 0, message, None, exc_info)
        for handler in logging.getLogger().handlers:  # the file only: the console gets one line
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)
    merge_json(run_dir / "summary.json", {"status": "failed", "error": message})
    where = f" (traceback in {log_file})" if error is not None else ""
    print(f"normlab: job {hydra_cfg.job.num} failed: {message}{where}", file=sys.stderr, flush=True)
