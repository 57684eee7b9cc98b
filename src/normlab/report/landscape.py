"""The report's landscape section: the probes' instruments over training, baseline beside BN.

Reads what ``LandscapeProbes`` leaves in each run's ``summary.json`` under ``landscape`` (the
latest value of every instrument and its history), so the sweep's event files are not read again.
Runs trained without the probes add nothing, and a sweep without any gets no section.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from normlab.report.events import Series
from normlab.report.figures import colors, panel_grid
from normlab.report.format import mean_pm_std, row
from normlab.report.groups import Group, band, mean_std
from normlab.report.sweep import Run

# summary key -> (panel title, log scale)
PANELS = {
    "grad_predictiveness/max": ("Gradient predictiveness: max ||grad(w + m u) - g||", True),
    "beta_smoothness": ("Effective beta-smoothness", True),
    "loss_variation/range": ("Loss variation along the update u: range", True),
    "sharpness": ("Sharpness: top Hessian eigenvalue (dotted: SGD thresholds)", False),
    "sharpness_ratio": ("Sharpness / the optimizer's threshold (dotted: the edge)", False),
}
TABLE = {
    "sharpness": "sharpness",
    "preconditioned_sharpness": "preconditioned sharpness",
    "sharpness_threshold": "stability threshold",
    "sharpness_ratio": "sharpness / threshold",
    "grad_predictiveness/max": "grad predictiveness (max)",
    "beta_smoothness": "beta-smoothness",
    "loss_variation/range": "loss variation (range)",
}
CAPTION = (
    "Landscape probes on the training batch, along each optimizer's own update (Santurkar et al. 2018; "
    "Cohen et al. 2021, 2022): mean over seeds, band from min to max. The ratio compares the sharpness "
    "that fits the optimizer (preconditioned for Adam) with its stability threshold."
)
# Summaries written before the thresholds fitted the optimizer logged plain gradient descent's.
_OLD_THRESHOLD = "sharpness_2_over_lr"


def landscape(run: Run) -> dict:
    return (run.summary or {}).get("landscape") or {}


def history(run: Run, key: str) -> Series | None:
    points = landscape(run).get("history", {}).get(key)
    if not points:
        return None
    steps, values = zip(*points, strict=True)
    return Series(np.asarray(steps), np.asarray([math.nan if v is None else v for v in values], dtype=float))


def landscape_figure(groups: list[Group], path: Path) -> Path | None:
    """One panel per instrument, one line per group; ``None`` when no run carries probe histories."""
    if not any(history(r, key) for g in groups for r in g.runs for key in PANELS):
        return None
    palette = colors(groups)
    styles = {panel: ("-", "--", ":", "-.")[i % 4] for i, panel in enumerate(dict.fromkeys(g.panel for g in groups))}
    fig, axes = panel_grid(len(PANELS), columns=2)
    for ax, (key, (title, log)) in zip(axes, PANELS.items(), strict=True):
        for g in groups:
            stats = band([s for s in (history(r, key) for r in g.runs) if s is not None])
            if stats is None:
                continue
            steps, mean, low, high = stats
            if log:  # a zero has no place on a log axis
                mean, low, high = (np.where(a > 0, a, np.nan) for a in (mean, low, high))
            ax.plot(steps, mean, color=palette[g.compared], ls=styles[g.panel], marker=".", label=g.label)
            ax.fill_between(steps, low, high, color=palette[g.compared], alpha=0.15, lw=0)
        if key == "sharpness":
            for limit in stability_limits(groups):
                ax.axhline(limit, color="grey", ls=":", lw=1)
        if key == "sharpness_ratio":
            ax.axhline(1.0, color="grey", ls=":", lw=1)
        if log:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Optimization landscape, baseline beside BN", fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def stability_limits(groups: list[Group]) -> list[float]:
    """The distinct thresholds that apply to the plain sharpness (not Adam's, which is for the
    preconditioned one): (S)GD on a quadratic diverges above them."""
    finals = [landscape(r).get("final", {}) for g in groups for r in g.runs]
    limits = {
        f.get("sharpness_threshold", f.get(_OLD_THRESHOLD)) for f in finals if "preconditioned_sharpness" not in f
    }
    return sorted(v for v in limits if v is not None)


def landscape_table(groups: list[Group]) -> list[str]:
    """A ``## Landscape`` section: each group's last probe values, mean over seeds; ``[]`` without probes."""
    if not any(landscape(r) for g in groups for r in g.runs):
        return []
    everything = [landscape(r).get("final", {}) for g in groups for r in g.runs]
    keys = [k for k in TABLE if any(k in f for f in everything)]  # no empty column for Adam's quantity
    header = ["group", "runs probed", *(TABLE[k] for k in keys), "ICS cosine (mean over layers)"]
    rows = [header, ["---"] * len(header)]
    for g in groups:
        finals = [landscape(r).get("final", {}) for r in g.runs if landscape(r)]
        cells = [mean_pm_std([f.get(key) for f in finals], ".4g", ".2g") for key in keys]
        ics = [_mean([v for k, v in f.items() if k.startswith("ics/") and k.endswith("/cos")]) for f in finals]
        rows.append([g.label, f"{len(finals)}/{len(g.runs)}", *cells, mean_pm_std(ics, ".4g", ".2g")])
    lines = [row(r) for r in rows]
    intro = (
        "Each instrument's value at the last probe of a run, mean ± std over seeds (`landscape` in `summary.json`); "
        "the threshold is the optimizer's own (Adam's applies to the preconditioned sharpness)."
    )
    return ["## Landscape", "", intro, "", *lines, ""]


def _mean(values: list[float | None]) -> float | None:
    stats = mean_std(values)
    return None if stats is None else stats[0]
