"""How the report writes numbers and table rows: one helper each, shared by every section."""

from __future__ import annotations

import math

from normlab.report.groups import mean_std


def number(value: float | None) -> str:
    """Four significant digits; ``""`` for no value; ``inf``/``nan`` as themselves."""
    if value is None:
        return ""
    if math.isinf(value) or math.isnan(value):
        return str(value)
    return f"{value:.4g}"


def mean_pm_std(values: list[float | None], mean_format: str = ".4f", std_format: str = ".4f") -> str:
    """``mean ± std`` of the finite ``values`` (just the mean for one value); ``n/a`` for none."""
    stats = mean_std(values)
    if stats is None:
        return "n/a"
    mean, std, n = stats
    return f"{mean:{mean_format}} ± {std:{std_format}}" if n > 1 else f"{mean:{mean_format}}"


def row(cells: list[str]) -> str:
    """A markdown table row; a ``|`` inside a cell is escaped."""
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
