"""The report's figures, drawn headless with matplotlib's Agg canvas (no pyplot, no display).

Each function takes the sweep's groups and writes one PNG, or returns ``None`` when the sweep did
not log what the figure needs (the report then says so instead of showing an empty plot). Series
are coloured by the compared setting (``model=...``) the same way in every figure.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from normlab.report.groups import Group, StabilityLine, band, mean_std
from normlab.report.sweep import PERCENTILES

DPI = 110
PANEL_SIZE = (4.6, 3.2)
MAX_COLUMNS = 3
MAX_POINTS = 400


def colors(groups: list[Group]) -> dict[str, str]:
    """A colour per compared setting, in order of first appearance."""
    compared = list(dict.fromkeys(g.compared for g in groups))
    return {c: f"C{i % 10}" for i, c in enumerate(compared)}


def panels(groups: list[Group]) -> dict[str, list[Group]]:
    """Groups by panel label, in the groups' order."""
    out: dict[str, list[Group]] = {}
    for g in groups:
        out.setdefault(g.panel, []).append(g)
    return out


def panel_grid(
    count: int, columns: int | None = None, size: tuple[float, float] = PANEL_SIZE
) -> tuple[Figure, list[Axes]]:
    """A figure of ``count`` panels, ``columns`` to a row. Margins are fixed in inches: matplotlib's
    constrained layout would double the drawing time of a 50-run report."""
    cols = columns or min(count, MAX_COLUMNS)
    rows = math.ceil(count / cols)
    width, height = size[0] * cols, size[1] * rows + 0.4
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(
        left=0.85 / width, right=1 - 0.2 / width, bottom=0.5 / height, top=1 - 0.7 / height, wspace=0.32, hspace=0.5
    )
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, axes[:count]


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def curve_figure(groups: list[Group], tag: str, path: Path, title: str, ylabel: str, log: bool = False) -> Path | None:
    """``tag`` against step, one panel per panel label, mean and min-max band over seeds per group."""
    if not any(g.curves(tag) for g in groups):
        return None
    palette = colors(groups)
    by_panel = panels(groups)
    fig, axes = panel_grid(len(by_panel))
    for ax, (panel, members) in zip(axes, by_panel.items(), strict=True):
        for g in members:
            _draw_band(ax, g, tag, palette[g.compared], log)
        ax.set_title(panel or "all runs", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
            ax.yaxis.set_minor_formatter(NullFormatter())  # labels on every minor tick crowd the axis
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=11)
    return save(fig, path)


def _draw_band(ax: Axes, group: Group, tag: str, color: str, log: bool) -> None:
    stats = band(group.curves(tag))
    diverged = sum(o.diverged for o in group.outcomes)
    label = group.compared + (f" ({diverged}/{len(group.outcomes)} diverged)" if diverged else "")
    if stats is None:
        ax.plot([], [], color=color, label=f"{label}: not logged")
        return
    steps, mean, low, high = _thin(*stats)
    if log:  # a zero or negative value has no place on a log axis
        mean, low, high = (np.where(a > 0, a, np.nan) for a in (mean, low, high))
    ax.plot(steps, mean, color=color, lw=1.4, label=label)
    if len(group.curves(tag)) > 1:
        ax.fill_between(steps, low, high, color=color, alpha=0.2, lw=0)
    for run, result in zip(group.runs, group.outcomes, strict=True):
        point = _divergence_point(run.scalars.get(tag), result.divergence_step)
        if point is not None:
            ax.plot(*point, marker="x", color="red", ms=8, mew=2, ls="none")


def _thin(steps: np.ndarray, mean: np.ndarray, low: np.ndarray, high: np.ndarray, limit: int = MAX_POINTS):
    """At most ``limit`` points per line: the mean sampled, the band's extremes kept per bin.

    A 2000-step loss curve has more points than a figure has pixels across; drawing them all
    only costs time.
    """
    if len(steps) <= limit:
        return steps, mean, low, high
    starts = np.linspace(0, len(steps), limit, endpoint=False).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # bins where every value is NaN
        return steps[starts], mean[starts], np.fmin.reduceat(low, starts), np.fmax.reduceat(high, starts)


def _divergence_point(series, step: int | None) -> tuple[list[int], list[float]] | None:
    """Where to mark a divergence on ``series``: its last finite value at or before ``step``."""
    if series is None or step is None:
        return None
    finite = np.flatnonzero(np.isfinite(series.values) & (series.steps <= step))
    if not len(finite):
        return None
    return [int(series.steps[finite[-1]])], [float(series.values[finite[-1]])]


def activation_figure(groups: list[Group], path: Path) -> Path | None:
    """Ioffe & Szegedy's Figure 1(b, c): 15th, 50th and 85th percentile of a layer's pre-activation
    over training, one column per compared setting (baseline beside BN), one row per panel label.

    Each cell shows the group's lowest seed that logged the percentiles.
    """
    if not any(r.activation_module for g in groups for r in g.runs):
        return None
    by_panel = panels(groups)
    compared = list(dict.fromkeys(g.compared for g in groups))
    fig, axes = panel_grid(len(by_panel) * len(compared), columns=len(compared))
    cells = iter(axes)
    for panel, members in by_panel.items():
        by_compared = {g.compared: g for g in members}
        for name in compared:
            _draw_percentiles(next(cells), by_compared.get(name), name, panel)
    fig.suptitle("Pre-activation percentiles (15, 50, 85) of the chosen layer", fontsize=11)
    return save(fig, path)


def _draw_percentiles(ax: Axes, group: Group | None, compared: str, panel: str) -> None:
    ax.set_title(", ".join(p for p in (compared, panel) if p), fontsize=9)
    ax.set_xlabel("step")
    run = next((r for r in group.runs if r.activation_module), None) if group else None
    if run is None:
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set_xticks([])
        ax.set_yticks([])
        return
    styles = {"p15": ":", "p50": "-", "p85": "--"}
    for p in PERCENTILES:
        series = run.scalars.get(f"act/{run.activation_module}/{p}")
        if series is not None:
            ax.plot(series.steps, series.values, ls=styles[p], color="k", lw=1.2, label=p)
    ax.set_ylabel(f"{run.activation_module} (seed {run.seed})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def lr_stability_figure(lines: list[StabilityLine], target: float, path: Path) -> Path | None:
    """Final validation accuracy against learning rate: seeds as dots, their mean as a line,
    diverged runs as red crosses, and a dashed line at the largest rate where every seed converged."""
    if not lines:
        return None
    fig, (ax,) = panel_grid(1, size=(7.5, 4.2))
    for i, line in enumerate(lines):
        _draw_stability(ax, line, f"C{i % 10}")
    if any(status == "diverged" for line in lines for *_, status in line.points):
        ax.plot([], [], ls="none", marker="x", color="red", ms=8, mew=2, label="diverged run")
    ax.axhline(target, color="grey", ls=":", lw=1, label=f"target {target:g}")
    ax.set_xscale("log")
    tried = sorted({p[0] for line in lines for p in line.points})
    ax.set_xticks(tried, [f"{lr:g}" for lr in tried])
    ax.minorticks_off()
    ax.set_xlabel("learning rate")
    ax.set_ylabel("final validation accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.suptitle("Learning-rate stability", fontsize=11)
    return save(fig, path)


def _draw_stability(ax: Axes, line: StabilityLine, color: str) -> None:
    finished = [(lr, acc) for lr, _, acc, status in line.points if status == "completed" and acc is not None]
    diverged = [(lr, acc if acc is not None else 0.0) for lr, _, acc, status in line.points if status == "diverged"]
    lrs = sorted({lr for lr, *_ in line.points})
    means = [_mean([acc for x, _, acc, s in line.points if x == lr and s in ("completed", "diverged")]) for lr in lrs]
    stable = line.largest_stable_lr
    label = f"{line.label} (stable up to {stable:g})" if stable is not None else f"{line.label} (never stable)"
    ax.plot(lrs, means, color=color, marker="o", ms=4, label=label)
    if finished:
        ax.plot(*zip(*finished, strict=True), ls="none", marker=".", color=color, alpha=0.5)
    if diverged:
        ax.plot(*zip(*diverged, strict=True), ls="none", marker="x", color="red", ms=8, mew=2)
    if stable is not None:
        ax.axvline(stable, color=color, ls="--", lw=1)


def _mean(values: list[float | None]) -> float:
    stats = mean_std(values)  # the finite values only, as everywhere in the report
    return math.nan if stats is None else stats[0]
