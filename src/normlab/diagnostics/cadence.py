"""When the diagnostics measure: the logging steps, counted in optimizer steps."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cadence:
    """Every ``every`` optimizer steps (step 0 included), and every ``dense_every`` steps below
    ``dense_until``, where instability shows first (``dense_until=0`` turns that off)."""

    every: int = 50
    dense_every: int = 10
    dense_until: int = 50

    def __post_init__(self) -> None:
        if self.every < 1 or self.dense_every < 1 or self.dense_until < 0:
            raise ValueError(
                "log_every_n_steps and dense_every_n_steps must be >= 1 and dense_until_step >= 0, got "
                f"{self.every}, {self.dense_every}, {self.dense_until}"
            )

    def is_logging_step(self, step: int) -> bool:
        dense = step < self.dense_until and step % self.dense_every == 0
        return dense or step % self.every == 0

    def longest_gap(self) -> int:
        """The most optimizer steps from one logging step to the next."""
        return max(self.every, self.dense_every if self.dense_until else 1)
