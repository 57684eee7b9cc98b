"""Helpers for tests that run the entry points as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_entry(
    module: str, *overrides: str, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run ``python -m normlab.<module> overrides...`` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", f"normlab.{module}", *overrides],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag in a run directory's event files: tag -> [(step, value), ...] in write order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(run_dir.glob("events.out.tfevents*")):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out
