"""Figures that put a swept number on the x axis: one line per compared setting (``model.norm=layer``).

An experiment that sweeps the batch size, the depth or any other number answers its question in
one figure: test accuracy against batch size per normalization, the first layer's gradient norm
at initialization against depth. Seeds are dots, their mean the line; panels split by whatever
else varies.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from normlab.report.figures import PANEL_SIZE, colors, panel_grid, save
from normlab.report.groups import Group, Layout, _sort_value
from normlab.report.outcome import Outcome
from normlab.report.sweep import FIRST_LAYER_TAGS, Run, override_key

BATCH_SIZE_KEY = "data.batch_size"
DEPTH_KEY = "model.depth"


@dataclass(frozen=True)
class Measure:
    """What a figure plots: a number per run (``None`` where the run did not produce it)."""

    name: str
    label: str
    value: Callable[[Run, Outcome], float | None]
    log_y: bool = False


def final_accuracy(run: Run, result: Outcome) -> float | None:
    """Test accuracy of the best checkpoint, else the last validation accuracy."""
    return result.test_acc if result.test_acc is not None else result.final_val_acc


def first_layer_grad_norm(run: Run, result: Outcome) -> float | None:
    """The first layer's gradient norm at the first step logged: at initialization."""
    for tag in FIRST_LAYER_TAGS:
        series = run.scalars.get(tag)
        if series is not None and len(series):
            return float(series.values[0])
    return None


ACCURACY = Measure("accuracy", "test accuracy (else final val/acc)", final_accuracy)
FIRST_GRAD = Measure("first-layer gradient norm", "first layer's gradient norm at step 0", first_layer_grad_norm, True)
#: swept keys that get a figure of their own: its name and what it plots
FIGURES = {BATCH_SIZE_KEY: ("batch_size", ACCURACY), DEPTH_KEY: ("depth", FIRST_GRAD)}


@dataclass(frozen=True)
class Point:
    compared: str
    panel: str
    x: float
    values: list[float]

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else math.nan


def points(groups: list[Group], layout: Layout, key: str, measure: Measure) -> list[Point]:
    """One point per group: ``key``'s value, and ``measure`` over the group's seeds."""
    out = []
    for g in groups:
        by_key = {override_key(o): o.split("=", 1)[1] for o in g.key}
        if key not in by_key or _sort_value(by_key[key])[0]:
            continue
        panel = ", ".join(f"{k}={by_key[k]}" for k in layout.panel_keys if k != key and k in by_key)
        values = [measure.value(r, o) for r, o in zip(g.runs, g.outcomes, strict=True)]
        finite = [v for v in values if v is not None and math.isfinite(v)]
        out.append(Point(g.compared, panel, float(by_key[key]), finite))
    return out


def sweep_figure(groups: list[Group], layout: Layout, key: str, measure: Measure, path: Path) -> Path | None:
    """``measure`` against ``key``, a line per compared setting, a panel per other varying setting."""
    found = points(groups, layout, key, measure)
    if len({p.x for p in found}) < 2 or not any(p.values for p in found):
        return None
    palette = colors(groups)
    panel_names = list(dict.fromkeys(p.panel for p in found))
    fig, axes = panel_grid(len(panel_names), size=(6.4, 3.8) if len(panel_names) == 1 else PANEL_SIZE)
    for ax, panel in zip(axes, panel_names, strict=True):
        for compared in dict.fromkeys(p.compared for p in found):
            line = sorted((p for p in found if p.panel == panel and p.compared == compared), key=lambda p: p.x)
            xs = [p.x for p in line if p.values]
            ax.plot(xs, [p.mean for p in line if p.values], marker="o", ms=4, color=palette[compared], label=compared)
            dots = [(p.x, v) for p in line for v in p.values]
            if dots:
                ax.plot(*zip(*dots, strict=True), ls="none", marker=".", color=palette[compared], alpha=0.4)
        ax.set_xscale("log", base=2)
        xs = sorted({p.x for p in found})
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.minorticks_off()
        if measure.log_y:
            ax.set_yscale("log")
        ax.set_title(panel or "all runs", fontsize=9)
        ax.set_xlabel(key)
        ax.set_ylabel(measure.label, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{measure.name.capitalize()} against {key}", fontsize=11)
    return save(fig, path)


def sweep_table(groups: list[Group], layout: Layout, key: str, measure: Measure) -> list[str]:
    """Markdown: a row per compared setting, a column per value of ``key`` (mean over seeds)."""
    found = points(groups, layout, key, measure)
    xs = sorted({p.x for p in found})
    if len(xs) < 2:
        return []
    rows = [[f"{layout.compared_key} \\ {key}", *(f"{x:g}" for x in xs)], ["---"] * (len(xs) + 1)]
    for panel in dict.fromkeys(p.panel for p in found):
        for compared in dict.fromkeys(p.compared for p in found):
            cells = {p.x: p for p in found if p.panel == panel and p.compared == compared}
            label = ", ".join(x for x in (compared, panel) if x)
            rows.append([label, *(f"{cells[x].mean:.4g}" if x in cells and cells[x].values else "" for x in xs)])
    head = f"**{measure.name.capitalize()} against {key}** (mean over seeds):"
    return [head, "", *("| " + " | ".join(r) + " |" for r in rows), ""]
