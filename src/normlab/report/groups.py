"""Runs grouped by their overrides except the seed, and statistics over each group's seeds.

Overrides shared by every run (``trainer.max_steps=40``) are left out of the labels. Of the ones
that vary, the *compared* key is ``model.norm`` when it varies (one line per normalization), else
``model`` (baseline beside BN), else the first varying key; the others (the learning rate, say) pick the figure *panel* a group is drawn in.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from normlab.report.events import Series
from normlab.report.outcome import Outcome
from normlab.report.sweep import Run, override_key

LR_KEY = "optimizer.lr"
#: keys that make the figures' colours when they vary, first one first
COMPARED_KEYS = ("model.norm", "model")


@dataclass
class Group:
    """The seeds of one setting. ``compared`` and ``panel`` are labels (``model=bn_mlp``, ``optimizer.lr=0.1``)."""

    key: tuple[str, ...]
    label: str
    compared: str
    panel: str
    runs: list[Run] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def lr(self) -> float | None:
        """The learning rate every run of the group used, or ``None``."""
        lrs = {r.lr for r in self.runs if r.lr is not None}
        return lrs.pop() if len(lrs) == 1 else None

    def curves(self, tag: str) -> list[Series]:
        return [r.scalars[tag] for r in self.runs if tag in r.scalars and len(r.scalars[tag])]


@dataclass(frozen=True)
class Layout:
    """Which overrides vary across the sweep and how they map to figure series and panels."""

    common: tuple[str, ...]
    varying: tuple[str, ...]
    compared_key: str | None

    @property
    def panel_keys(self) -> tuple[str, ...]:
        return tuple(k for k in self.varying if k != self.compared_key)


def group_runs(runs: list[Run], outcomes: list[Outcome]) -> tuple[list[Group], Layout]:
    """Groups in a stable order (compared value, then panel values, numbers by value)."""
    keys = [tuple(sorted(o for o in r.overrides if override_key(o) != "seed")) for r in runs]
    layout = sweep_layout(keys)
    groups: dict[tuple[str, ...], Group] = {}
    for run, result, key in zip(runs, outcomes, keys, strict=True):
        if key not in groups:
            groups[key] = _new_group(key, layout)
        groups[key].runs.append(run)
        groups[key].outcomes.append(result)
    for g in groups.values():
        order = sorted(range(len(g.runs)), key=lambda i: _sort_value(str(g.runs[i].seed)))
        g.runs, g.outcomes = [g.runs[i] for i in order], [g.outcomes[i] for i in order]
    ordered = sorted(groups.values(), key=lambda g: (_label_order(g.compared), _label_order(g.panel)))
    return ordered, layout


def sweep_layout(keys: list[tuple[str, ...]]) -> Layout:
    values: dict[str, set[str]] = {}
    for key in keys:
        for o in key:
            values.setdefault(override_key(o), set()).add(o)
    seen_everywhere = [k for k in values if all(any(override_key(o) == k for o in key) for key in keys)]
    varying = tuple(k for k in values if len(values[k]) > 1 or k not in seen_everywhere)
    common = tuple(sorted(next(iter(values[k])) for k in values if k not in varying))
    preferred = [k for k in COMPARED_KEYS if k in varying]
    compared = preferred[0] if preferred else (varying[0] if varying else None)
    return Layout(common=common, varying=varying, compared_key=compared)


def _new_group(key: tuple[str, ...], layout: Layout) -> Group:
    by_key = {override_key(o): o for o in key}
    shown = [by_key[k] for k in (layout.compared_key, *layout.panel_keys) if k in by_key]
    panel = ", ".join(by_key[k] for k in layout.panel_keys if k in by_key)
    compared = by_key.get(layout.compared_key, "") if layout.compared_key else ""
    return Group(key=key, label=", ".join(shown) or "all runs", compared=compared or "all runs", panel=panel)


def _label_order(label: str) -> tuple:
    return tuple(_sort_value(part.split("=", 1)[-1]) for part in label.split(", "))


def _sort_value(text: str) -> tuple:
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


def band(curves: list[Series]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(steps, mean, min, max) over ``curves`` at every step any of them logged; NaN-aware."""
    if not curves:
        return None
    steps = np.unique(np.concatenate([c.steps for c in curves]))
    table = np.full((len(curves), len(steps)), np.nan)
    for row, c in zip(table, curves, strict=True):
        row[np.searchsorted(steps, c.steps)] = c.values
    table[np.isinf(table)] = np.nan  # a blown-up value ends the line instead of squashing the axis
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # steps where every value is NaN
        return steps, np.nanmean(table, axis=0), np.nanmin(table, axis=0), np.nanmax(table, axis=0)


def mean_std(values: list[float | None]) -> tuple[float, float, int] | None:
    """Mean, sample std (0 for one value) and count of the finite ``values``; ``None`` if there are none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return float(np.mean(finite)), std, len(finite)


@dataclass(frozen=True)
class StabilityLine:
    """Final accuracy against learning rate for one compared setting.

    ``points`` holds ``(lr, seed, final_val_acc, status)`` per finished run; ``largest_stable_lr``
    is the largest learning rate at which every seed converged (``None``: at none).
    """

    label: str
    points: list[tuple[float, object, float | None, str]]
    largest_stable_lr: float | None


def lr_stability(groups: list[Group], layout: Layout, target: float) -> list[StabilityLine]:
    """One line per setting other than the learning rate; ``[]`` when fewer than two rates were tried."""
    if len({g.lr for g in groups if g.lr is not None}) < 2:
        return []
    lines: dict[str, list[Group]] = {}
    for g in groups:
        if g.lr is None:
            continue
        others = [o for o in g.key if override_key(o) in layout.varying and override_key(o) != LR_KEY]
        lines.setdefault(", ".join(others) or "all runs", []).append(g)
    out = []
    for label, members in lines.items():
        points = [
            (g.lr, run.seed, result.final_val_acc, result.status)
            for g in members
            for run, result in zip(g.runs, g.outcomes, strict=True)
        ]
        stable = [g.lr for g in members if g.outcomes and all(o.converged(target) for o in g.outcomes)]
        out.append(StabilityLine(label, sorted(points, key=lambda p: p[0]), max(stable) if stable else None))
    return out
