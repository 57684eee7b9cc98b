"""The run summary: a few numbers that compare runs, kept during training and written at its end."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunSummary:
    """Divergence, gradient-norm extremes and validation accuracy of one run.

    ``max_grad_norm`` and ``final_grad_norm`` are the global gradient norm over every optimizer
    step (the largest finite one, and the last one, ``None`` when it is not finite);
    ``steps_to_target`` is the optimizer step of the first validation at or above ``target_acc``.
    """

    target_acc: float
    status: str = "completed"
    diverged: bool = False
    divergence_step: int | None = None
    divergence_layer: str | None = None
    divergence_source: str | None = None  # activation | parameter | gradient | input | loss
    max_grad_norm: float | None = None
    final_grad_norm: float | None = None
    final_val_acc: float | None = None
    best_val_acc: float | None = None
    steps_to_target: int | None = None
    global_step: int = 0
    val_history: list[list[float]] = field(default_factory=list)  # [step, accuracy] per validation

    def observe_grad_norm(self, value: float) -> None:
        finite = math.isfinite(value)
        self.final_grad_norm = value if finite else None
        if finite and (self.max_grad_norm is None or value > self.max_grad_norm):
            self.max_grad_norm = value

    def observe_validation(self, accuracy: float, step: int) -> None:
        if not math.isfinite(accuracy):
            return
        self.final_val_acc = accuracy
        self.val_history.append([step, accuracy])
        self.best_val_acc = accuracy if self.best_val_acc is None else max(self.best_val_acc, accuracy)
        if self.steps_to_target is None and accuracy >= self.target_acc:
            self.steps_to_target = step

    def mark_diverged(self, step: int, layer: str, source: str) -> None:
        self.status, self.diverged = "diverged", True
        self.divergence_step, self.divergence_layer, self.divergence_source = step, layer, source

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def hparam_scalars(self) -> dict[str, float]:
        """The ``summary/*`` scalars for the HParams tab; NaN where there is no such number (not
        diverged, target not reached), so that every metric the tab lists has a value."""
        values = {
            "diverged": float(self.diverged),
            "divergence_step": self.divergence_step,
            "max_grad_norm": self.max_grad_norm,
            "final_grad_norm": self.final_grad_norm,
            "final_val_acc": self.final_val_acc,
            "best_val_acc": self.best_val_acc,
            "steps_to_target": self.steps_to_target,
        }
        return {f"summary/{k}": float("nan") if v is None else float(v) for k, v in values.items()}

    def load(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            if hasattr(self, key):
                setattr(self, key, value)


HPARAM_METRICS = [
    f"summary/{k}"
    for k in (
        "diverged",
        "divergence_step",
        "max_grad_norm",
        "final_grad_norm",
        "final_val_acc",
        "best_val_acc",
        "steps_to_target",
    )
]


def merge_json(path: Path, updates: dict[str, Any]) -> None:
    """Update the JSON object in ``path`` with ``updates``, keeping its other keys; replaced atomically.

    Other writers (the landscape probes, a failed sweep job) add their own keys to the same file.
    """
    data: dict[str, Any] = {}
    try:
        loaded = json.loads(path.read_text())
        data = loaded if isinstance(loaded, dict) else {}
    except (OSError, ValueError):
        pass
    data.update(updates)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=False))
    os.replace(tmp, path)
