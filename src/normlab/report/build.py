"""``build_report``: read a sweep, judge and group its runs, draw the figures, write ``report.md``."""

from __future__ import annotations

from pathlib import Path

from normlab.errors import UserError
from normlab.report import compare, figures
from normlab.report.contents import Report
from normlab.report.groups import group_runs, lr_stability
from normlab.report.landscape import landscape_figure
from normlab.report.markdown import render
from normlab.report.outcome import outcome, summary_target
from normlab.report.study import study_lines
from normlab.report.sweep import known_layers, load_runs

REPORT_FILE = "report.md"
FIGURE_DIR = "figures"


def build_report(
    sweep_dir: str | Path,
    target: float | None = None,
    layer: str | None = None,
    out_dir: str | Path | None = None,
) -> Report:
    """Write ``report.md`` and its figures for the sweep in ``sweep_dir``; return what it shows.

    Args:
        sweep_dir: a multirun directory (``hydra.sweep.dir``), or a single run directory.
        target: validation accuracy that "steps to target" and "converged" refer to; ``None``:
            the target the runs' ``summary.json`` files agree on, else 0.9.
        layer: hidden layer for the percentile figure (``layer2``); ``None``: the last one.
        out_dir: where ``report.md`` and ``figures/`` go; ``None``: ``sweep_dir``.

    Raises:
        UserError: ``sweep_dir`` does not exist or holds no run directory.

    Example::

        report = build_report("outputs/sweeps/lr_stability")
        print(report.path, report.status_counts())
    """
    sweep = Path(sweep_dir).expanduser()
    if not sweep.is_dir():
        raise UserError(f"sweep directory {sweep} does not exist; pass the hydra.sweep.dir of a multirun")
    runs = load_runs(sweep, layer=layer)
    if not runs:
        raise UserError(
            f"no runs in {sweep}: a run directory holds .hydra/overrides.yaml; "
            "pass the hydra.sweep.dir of a multirun (normlab-train -m ...)"
        )
    if layer is not None and not any(r.activation_module for r in runs):
        known = sorted(set().union(*(known_layers(r) for r in runs)), key=lambda n: (len(n), n))
        raise UserError(
            f"--layer {layer}: no run has that layer with logged percentiles; "
            f"the layers are {', '.join(known) or 'none (no run logged act/ percentiles)'}"
        )
    goal = summary_target(runs) if target is None else target
    outcomes = [outcome(r, goal) for r in runs]
    groups, layout = group_runs(runs, outcomes)
    report = Report(sweep, goal, runs, outcomes, groups, layout, lr_stability(groups, layout, goal))
    out = Path(out_dir).expanduser() if out_dir is not None else sweep
    _draw(report, out / FIGURE_DIR)
    report.notes += data_notes(report)
    report.study = study_lines(sweep)
    report.path = out / REPORT_FILE
    report.path.write_text(render(report, out))
    return report


def _draw(report: Report, where: Path) -> None:
    groups = report.groups
    wanted = {
        "val_acc": lambda p: figures.curve_figure(
            groups, "val/acc", p, "Validation accuracy (mean over seeds, band: min to max)", "val/acc"
        ),
        "train_loss": lambda p: figures.curve_figure(
            groups, "train/loss", p, "Training loss (mean over seeds, band: min to max)", "train/loss", log=True
        ),
        "grad_norm": lambda p: figures.curve_figure(
            groups,
            "grad_norm/global",
            p,
            "Global gradient norm (mean over seeds, band: min to max)",
            "grad_norm/global",
            log=True,
        ),
        "activations": lambda p: figures.activation_figure(groups, p),
        "lr_stability": lambda p: figures.lr_stability_figure(report.stability, report.target, p),
        "landscape": lambda p: landscape_figure(groups, p),
    }
    for key, (name, measure) in compare.FIGURES.items():  # a figure per swept number: batch size, depth
        wanted[name] = lambda p, key=key, measure=measure: compare.sweep_figure(groups, report.layout, key, measure, p)
    for name, draw in wanted.items():
        path = draw(where / f"{name}.png")
        if path is not None:
            report.figures[name] = path


def data_notes(report: Report) -> list[str]:
    """What the sweep did not provide, and so what the report could not show."""
    notes = []
    present = [r for r in report.runs if r.path is not None]
    without = [r for r in present if r.summary is None]
    if without:
        notes.append(
            f"{len(without)} of {len(present)} runs have no summary.json (trained without the diagnostics "
            "callback, killed, or still running): their status and numbers come from their event files."
        )
    if "activations" not in report.figures:
        notes.append(
            "No run logged pre-activation percentiles (act/<module>/p15, p50, p85): the percentile figure is "
            "left out. The diagnostics callback logs them."
        )
    if "grad_norm" not in report.figures:
        notes.append("No run logged grad_norm/global: the gradient-norm figure is left out.")
    if not report.stability:
        notes.append("Fewer than two learning rates in this sweep: the learning-rate stability figure is left out.")
    if any(r.path is not None and not r.has_events for r in report.runs):
        notes.append("Some runs wrote no event files: they failed or were stopped before logging anything.")
    return notes
