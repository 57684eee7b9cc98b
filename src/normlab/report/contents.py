"""``Report``: what ``report.md`` shows, as numbers; built by ``build.py``, written out by ``markdown.py``."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from normlab.report.groups import Group, Layout, StabilityLine
from normlab.report.outcome import Outcome
from normlab.report.sweep import Run


@dataclass
class Report:
    """Everything ``report.md`` shows, for code that wants the numbers rather than the page.

    ``figures`` maps a figure's name (``val_acc``, ``train_loss``, ``grad_norm``, ``activations``,
    ``lr_stability``, ``landscape``, ``batch_size``, ``depth``) to its PNG; ``notes`` say what the sweep lacked and what was left out.
    """

    sweep_dir: Path
    target: float
    runs: list[Run]
    outcomes: list[Outcome]
    groups: list[Group]
    layout: Layout
    stability: list[StabilityLine]
    figures: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    path: Path | None = None
    study: list[str] = field(default_factory=list)  # the Optuna study's section, for an Optuna sweep

    def status_counts(self) -> Counter:
        return Counter(o.status for o in self.outcomes)
