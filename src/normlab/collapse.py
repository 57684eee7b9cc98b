"""Collapse: a run that learned, then fell back to where it started, with every number finite.

A ReLU network at a large learning rate can fall to chance accuracy and stay there for the rest
of training; nothing is NaN, so divergence checks pass it as finished. These pure functions spot
it in a series of (step, value) points: the summary (validation accuracy) and the sweep report
(validation accuracy and training loss) share them.
"""

from __future__ import annotations

from collections.abc import Sequence

# Accuracy at most this far above chance counts as chance; "well above" is at least this far
# above it, as a fraction of the distance from chance to perfect.
CHANCE_MARGIN = 0.1
LEARNED_MARGIN = 0.5
# Loss: back within this fraction of its first value after having dropped below half of it.
LOSS_MARGIN = 0.1


def accuracy_collapse_step(steps: Sequence[int], accuracies: Sequence[float], chance: float) -> int | None:
    """The step from which accuracy stayed at chance to the end, after having been well above
    it; ``None`` when it did not collapse."""
    span = 1.0 - chance
    return _trailing_run_start(
        steps,
        [a <= chance + CHANCE_MARGIN * span for a in accuracies],
        [a >= chance + LEARNED_MARGIN * span for a in accuracies],
    )


def loss_collapse_step(steps: Sequence[int], losses: Sequence[float]) -> int | None:
    """The step from which the loss stayed back at its first value to the end, after having
    dropped below half of it; ``None`` when it did not collapse."""
    if not len(losses) or not losses[0] > 0:
        return None
    start = losses[0]
    return _trailing_run_start(
        steps, [v >= (1 - LOSS_MARGIN) * start for v in losses], [v <= start / 2 for v in losses]
    )


def _trailing_run_start(steps: Sequence[int], back: list[bool], learned: list[bool]) -> int | None:
    """The first step of the final run of ``back`` points, when something before it ``learned``."""
    if not back or not back[-1]:
        return None
    first = len(back) - 1
    while first > 0 and back[first - 1]:
        first -= 1
    return int(steps[first]) if any(learned[:first]) else None
