"""``report.md``: the answers first (which trains faster, which tolerates higher learning rates,
which diverges), then a table per group, the figures, every run, and what data was missing."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from normlab.report import compare
from normlab.report.format import mean_pm_std, number, row
from normlab.report.groups import Group, mean_std
from normlab.report.landscape import CAPTION as LANDSCAPE_CAPTION
from normlab.report.landscape import landscape_table

if TYPE_CHECKING:
    from normlab.report.contents import Report

CAPTIONS = {
    "val_acc": "Validation accuracy against step, per group: mean over seeds, band from min to max.",
    "train_loss": "Training loss against step (log scale); red crosses mark where a run diverged.",
    "grad_norm": "Global gradient norm against step (log scale).",
    "activations": "Ioffe & Szegedy's Figure 1(b, c): 15th, 50th and 85th percentile of the chosen layer's "
    "pre-activation (the sigmoid's input) over training, baseline beside BN.",
    "lr_stability": "Final validation accuracy against learning rate; red crosses are diverged runs, dashed "
    "lines the largest rate at which every seed converged.",
    "landscape": LANDSCAPE_CAPTION,
    "batch_size": "Test accuracy (else the final val/acc) against batch size, one line per compared setting "
    "(the normalization): the mean over seeds, seeds as dots.",
    "depth": "The first layer's gradient norm at the first step (at initialization) against depth, one line per "
    "compared setting (the normalization), log scale: growth with depth is a gradient explosion.",
}


def render(report: Report, out_dir: Path) -> str:
    counts = report.status_counts()
    status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    lines = [
        f"# Sweep report: {report.sweep_dir.name}",
        "",
        f"- sweep: `{report.sweep_dir.resolve()}`",
        f"- runs: {len(report.runs)} in {len(report.groups)} groups ({status})",
        f"- shared by every run: {_code(report.layout.common) or 'nothing'}",
        (
            f"- accuracy target: {report.target:g} (steps to target; converged = finished without "
            f"diverging with final val/acc >= {report.target:g})"
        ),
        "",
        "## Answers",
        "",
        *answers(report),
        "",
        *report.study,
        "## Groups",
        "",
        *group_table(report.groups, report.target),
        "",
        *landscape_table(report.groups),
        "## Figures",
        "",
    ]
    for name, path in report.figures.items():
        lines += [f"![{name}]({Path(os.path.relpath(path, out_dir)).as_posix()})", "", CAPTIONS[name], ""]
    lines += ["## Runs", "", *run_table(report), ""]
    if report.notes:
        lines += ["## Missing data", "", *(f"- {n}" for n in report.notes), ""]
    return "\n".join(lines)


def answers(report: Report) -> list[str]:
    return [
        "**Which trains faster** (mean steps to reach the target over seeds that reached it):",
        *(f"- {line}" for line in faster(report.groups, report.target)),
        "",
        "**Which tolerates higher learning rates** (largest rate at which every seed converged):",
        *(f"- {line}" for line in tolerance(report)),
        "",
        "**Which diverges:**",
        *(f"- {line}" for line in divergences(report.groups)),
        "",
        *swept_numbers(report),
    ]


def swept_numbers(report: Report) -> list[str]:
    """A table per swept number with a figure of its own (batch size, depth)."""
    out = []
    for key, (_, measure) in compare.FIGURES.items():
        out += compare.sweep_table(report.groups, report.layout, key, measure)
    return out


def faster(groups: list[Group], target: float) -> list[str]:
    by_panel: dict[str, list[Group]] = {}
    for g in groups:
        by_panel.setdefault(g.panel, []).append(g)
    out = []
    for panel, members in by_panel.items():
        timed = []
        for g in members:
            stats = mean_std([o.steps_to_target for o in g.outcomes])
            if stats is not None:
                timed.append((stats[0], f"{g.compared} in {stats[0]:.0f} steps ({stats[2]}/{len(g.outcomes)} seeds)"))
        where = f"{panel}: " if panel else ""
        if not timed:
            out.append(f"{where}no run reached val/acc {target:g}")
            continue
        timed.sort()
        missed = [g.compared for g in members if mean_std([o.steps_to_target for o in g.outcomes]) is None]
        tail = f"; never: {', '.join(missed)}" if missed else ""
        out.append(f"{where}" + ", then ".join(text for _, text in timed) + tail)
    return out


def tolerance(report: Report) -> list[str]:
    if not report.stability:
        return ["only one learning rate in this sweep"]
    return [
        f"{line.label}: {number(line.largest_stable_lr) if line.largest_stable_lr is not None else 'none'}"
        f" (tried {', '.join(number(lr) for lr in sorted({p[0] for p in line.points}))})"
        for line in report.stability
    ]


def divergences(groups: list[Group]) -> list[str]:
    out = []
    for g in groups:
        steps = [o.divergence_step for o in g.outcomes if o.diverged]
        if steps:
            known = [s for s in steps if s is not None]
            first = f", first at step {min(known)}" if known else ""
            out.append(f"{g.label}: {len(steps)}/{len(g.outcomes)} seeds diverged{first}")
    return out or ["no run diverged"]


def group_table(groups: list[Group], target: float) -> list[str]:
    header = [
        "group", "runs", "final val/acc", "best val/acc", "test/acc", f"steps to {target:g}",
        "diverged seeds", "max grad norm",
    ]  # fmt: skip
    rows = [header, ["---"] * len(header)]
    for g in groups:
        o = g.outcomes
        diverged = [str(r.seed) for r, x in zip(g.runs, o, strict=True) if x.diverged]
        reached = mean_std([x.steps_to_target for x in o])
        norms = [x.max_grad_norm for x in o if x.max_grad_norm is not None and not math.isnan(x.max_grad_norm)]
        rows.append([
            g.label,
            _counts(o),
            mean_pm_std([x.final_val_acc for x in o]),
            mean_pm_std([x.best_val_acc for x in o]),
            mean_pm_std([x.test_acc for x in o]),
            f"{reached[0]:.0f} ({reached[2]}/{len(o)})" if reached else f"never (0/{len(o)})",
            f"{len(diverged)}/{len(o)}" + (f" (seed {', '.join(diverged)})" if diverged else ""),
            number(max(norms)) if norms else "not logged",
        ])  # fmt: skip
    return [row(r) for r in rows]


def run_table(report: Report) -> list[str]:
    header = ["job", "run", "seed", "status", "final val/acc", "best val/acc", "steps", "diverged at", "from", "note"]
    rows = [header, ["---"] * len(header)]
    for run, o in zip(report.runs, report.outcomes, strict=True):
        rows.append([
            "" if run.job is None else f"{run.job:03d}",
            ", ".join(run.overrides),
            str(run.seed) if run.seed is not None else "",
            o.status,
            number(o.final_val_acc),
            number(o.best_val_acc),
            "" if o.global_step is None else str(o.global_step),
            "" if o.divergence_step is None else str(o.divergence_step),
            o.source,
            o.error or o.note or ("never started" if o.status == "missing" else ""),
        ])  # fmt: skip
    return [row(r) for r in rows]


def _counts(outcomes) -> str:
    done = sum(o.status == "completed" for o in outcomes)
    others = [o.status for o in outcomes if o.status != "completed"]
    extra = ", ".join(f"{others.count(s)} {s}" for s in dict.fromkeys(others))
    return f"{len(outcomes)}" + (f" ({done} completed, {extra})" if extra else "")


def _code(items) -> str:
    return ", ".join(f"`{i}`" for i in items)
