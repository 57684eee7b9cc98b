"""What became of each run: its status and headline numbers, from ``summary.json`` or the event files.

The diagnostics callback writes ``summary.json`` when training ends, and ``normlab-train`` writes
one with status ``failed`` when a sweep's job raises. A run without it (killed, still running, or
trained without diagnostics) is judged from its event files:

- ``completed``: it logged ``test/acc``, so training and testing finished;
- ``partial``: it did not (yet).

A run that learned and then fell back (validation accuracy at chance level, or training loss back
at its first value, to the end; see ``normlab.collapse``) is ``collapsed``, with the step, though
every number is finite. A ``summary.json`` that cannot be read makes the run ``unreadable``.

A trial that normlab's Optuna sweeper pruned says ``pruned`` in its summary.

With or without a summary, a run is ``diverged`` when its summary says so or when its
``train/loss`` became non-finite, or the median of its last tenth ended above the smaller of
``DIVERGENCE_FACTOR`` times where it started (its first value, at least chance level ln(classes))
and ``BLOWUP_FACTOR`` times chance level. A run the sweep asked for that never started is
``missing``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from normlab.collapse import accuracy_collapse_step, loss_collapse_step
from normlab.report.events import Series
from normlab.report.sweep import Run

STATUSES = (
    "completed",
    "collapsed",
    "diverged",
    "pruned",
    "interrupted",
    "failed",
    "unreadable",
    "partial",
    "missing",
)
DIVERGENCE_FACTOR = 1.5
BLOWUP_FACTOR = 10.0
DEFAULT_TARGET = 0.9


@dataclass(frozen=True)
class Outcome:
    """A run's status and numbers; ``None`` where the run did not produce the number.

    ``source`` says where they came from: ``summary`` (``summary.json``, completed from the event
    files where it lacks a field), ``events`` (no summary) or ``none`` (nothing on disk).
    """

    status: str
    source: str
    final_val_acc: float | None = None
    best_val_acc: float | None = None
    test_acc: float | None = None
    steps_to_target: int | None = None
    divergence_step: int | None = None
    collapse_step: int | None = None
    max_grad_norm: float | None = None
    global_step: int | None = None
    error: str | None = None
    note: str | None = None  # how the status was decided, when the sources disagree

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "collapsed", "diverged", "pruned")

    def converged(self, target: float) -> bool:
        """Finished without diverging, with a final validation accuracy of at least ``target``."""
        return self.status == "completed" and self.final_val_acc is not None and self.final_val_acc >= target


def outcome(run: Run, target: float) -> Outcome:
    """Judge ``run``; ``target`` is the validation accuracy that ``steps_to_target`` refers to."""
    if run.path is None:
        return Outcome(status="missing", source="none")
    summary = run.summary or {}
    scalars = run.scalars
    from_events = _from_events(scalars, target, run.config.get("num_classes"))
    events_status = from_events.pop("status")
    if not summary:
        status = "diverged" if from_events["divergence_step"] is not None else events_status
        if status == "completed" and from_events["collapse_step"] is not None:
            status = "collapsed"
        return Outcome(status=status, source="events" if run.has_events else "none", **from_events)
    status = str(summary.get("status", "partial"))
    if status not in STATUSES:
        status = "partial"
    note = None
    if status == "completed" and summary.get("diverged"):
        status = "diverged"
    elif status == "completed" and from_events["divergence_step"] is not None:
        status = "diverged"  # the summary's own test may be narrower (non-finite values only)
        note = f"train/loss blew up from step {from_events['divergence_step']}; summary.json says completed"
    elif status == "completed" and from_events["collapse_step"] is not None:
        status = "collapsed"
        note = f"fell back to chance from step {from_events['collapse_step']}; summary.json says completed"
    fields = {
        "final_val_acc": _number(summary.get("final_val_acc")),
        "best_val_acc": _number(summary.get("best_val_acc")),
        "max_grad_norm": _number(summary.get("max_grad_norm")),
        "global_step": _integer(summary.get("global_step")),
        "divergence_step": _integer(summary.get("divergence_step")) if status == "diverged" else None,
        "collapse_step": _integer(summary.get("collapse_step")) if status == "collapsed" else None,
    }
    if _same_target(summary.get("target_acc"), target):
        fields["steps_to_target"] = _integer(summary.get("steps_to_target"))
    else:
        fields["steps_to_target"] = from_events["steps_to_target"]
    merged = {k: v if v is not None else from_events.get(k) for k, v in fields.items()}
    if status == "diverged" and merged["divergence_step"] is None:
        merged["divergence_step"] = from_events["divergence_step"]
    if status != "collapsed":
        merged["collapse_step"] = None
    elif merged["collapse_step"] is None:
        merged["collapse_step"] = from_events["collapse_step"]
    error = summary.get("error")
    return Outcome(
        status=status,
        source="summary",
        test_acc=from_events["test_acc"],
        error=" ".join(str(error).split()) if error else None,
        note=note,
        **merged,
    )


def summary_target(runs: list[Run]) -> float:
    """The accuracy target the runs' summaries agree on, else ``DEFAULT_TARGET``."""
    targets = {_number((r.summary or {}).get("target_acc")) for r in runs if r.summary}
    targets.discard(None)
    return targets.pop() if len(targets) == 1 else DEFAULT_TARGET


def _from_events(scalars: dict[str, Series], target: float, num_classes: Any) -> dict[str, Any]:
    val, loss, grad = scalars.get("val/acc"), scalars.get("train/loss"), scalars.get("grad_norm/global")
    best = scalars.get("val/acc_best")
    steps = [int(s.steps[-1]) for s in scalars.values() if len(s)]
    collapse = None
    if val is not None and isinstance(num_classes, int) and num_classes > 1:
        collapse = accuracy_collapse_step(val.steps, val.values, 1 / num_classes)
    if collapse is None and loss is not None and np.isfinite(loss.values).all():
        collapse = loss_collapse_step(loss.steps, loss.values)
    return {
        "status": "completed" if "test/acc" in scalars else "partial",
        "final_val_acc": val.last() if val is not None else None,
        "best_val_acc": best.last() if best is not None else (float(np.max(val.values)) if val else None),
        "test_acc": scalars["test/acc"].last() if "test/acc" in scalars else None,
        "steps_to_target": first_step_at(val, target) if val is not None else None,
        "divergence_step": divergence_step(loss, num_classes) if loss is not None else None,
        "collapse_step": collapse,
        "max_grad_norm": _max(grad) if grad is not None else None,
        "global_step": max(steps) if steps else None,
    }


def first_step_at(series: Series, target: float) -> int | None:
    """The first step at which ``series`` reached ``target``."""
    hits = np.flatnonzero(series.values >= target)
    return int(series.steps[hits[0]]) if len(hits) else None


def divergence_step(loss: Series, num_classes: Any) -> int | None:
    """For a loss that diverged by the module's rule, the first step it went past the limit; else ``None``."""
    values = loss.values
    if not len(values):
        return None
    bad = ~np.isfinite(values)
    if bad.any():
        return int(loss.steps[np.argmax(bad)])
    chance = math.log(num_classes) if isinstance(num_classes, int) and num_classes > 1 else 0.0
    limit = DIVERGENCE_FACTOR * max(float(values[0]), chance)
    if chance:
        limit = min(limit, BLOWUP_FACTOR * chance)
    tail = values[-max(1, len(values) // 10) :]
    if float(np.median(tail)) <= limit:
        return None
    return int(loss.steps[np.argmax(values > limit)])


def _max(series: Series) -> float:
    values = series.values
    return math.inf if np.isinf(values).any() else float(np.nanmax(values)) if len(values) else math.nan


def _same_target(value: Any, target: float) -> bool:
    number = _number(value)
    return number is not None and abs(number - target) < 1e-9


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _integer(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and math.isfinite(number) else None
