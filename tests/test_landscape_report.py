"""The report's landscape section: a figure and a table from the probes' ``summary.json`` entries."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from normlab.diagnostics.summary import merge_json
from normlab.report import build_report
from normlab.report.landscape import stability_limits
from synthetic_sweep import write_sweep

PROBES = (0, 20, 40)


def plant_landscape(run_dir: Path, scale: float, adam: bool = False) -> dict[str, float]:
    """Add a probe history to the run's summary.json, as LandscapeProbes writes it; return the final values.
    An SGD run's threshold is 20 on the plain sharpness, an Adam run's 380 on the preconditioned one."""
    threshold = 380.0 if adam else 20.0
    sharpness = [[s, scale * (1 + s / 40)] for s in PROBES]
    fitting = [[s, 10 * v] for s, v in sharpness] if adam else sharpness
    history = {
        "sharpness": sharpness,
        **({"preconditioned_sharpness": fitting} if adam else {}),
        "sharpness_threshold": [[s, threshold] for s in PROBES],
        "sharpness_ratio": [[s, v / threshold] for s, v in fitting],
        "grad_predictiveness/max": [[s, 0.5 * scale] for s in PROBES],
        "beta_smoothness": [[s, 2 * scale] for s in PROBES],
        "loss_variation/range": [[s, 0.1 * scale] for s in PROBES],
        "ics/layer2.fc/cos": [[s, 0.9] for s in PROBES],
        "ics/head/cos": [[s, None] for s in PROBES],  # NaN in the run: left out of the mean
    }
    final = {k: v[-1][1] for k, v in history.items()}
    merge_json(run_dir / "summary.json", {"landscape": {"step": PROBES[-1], "final": final, "history": history}})
    return final


def table(text: str) -> list[list[str]]:
    section = text.split("## Landscape", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in r.strip("|").split(" | ")] for r in rows]


def test_landscape_figure_and_table_baseline_beside_bn(tmp_path: Path) -> None:
    runs = write_sweep(tmp_path, steps=40, lrs=(0.1,), seeds=(0, 1))
    finals = {
        run.name: plant_landscape(run, 10.0, adam=False) if "baseline" in run.name else plant_landscape(run, 1.0 + i)
        for i, run in enumerate(runs)
    }
    report = build_report(tmp_path)
    figure = report.figures["landscape"]
    assert figure.read_bytes()[:4] == b"\x89PNG" and figure.stat().st_size > 10_000
    text = report.path.read_text()
    assert "figures/landscape.png" in text
    header, _, baseline, bn = table(text)
    assert header[:5] == ["group", "runs probed", "sharpness", "stability threshold", "sharpness / threshold"]
    assert baseline[:5] == ["model=baseline_mlp", "2/2", "20 ± 0", "20 ± 0", "1 ± 0"]  # both seeds: 10 * (1 + 40/40)
    bn_sharpness = [finals[r.name]["sharpness"] for r in runs if "bn_mlp" in r.name]
    mean, spread = sum(bn_sharpness) / 2, abs(bn_sharpness[0] - bn_sharpness[1]) / 2**0.5
    assert bn[2] == f"{mean:.4g} ± {spread:.2g}"
    assert baseline[-1] == "0.9 ± 0"  # the head's NaN cosine is left out


def test_no_landscape_section_without_probes(tmp_path: Path) -> None:
    write_sweep(tmp_path, steps=40, lrs=(0.1,), seeds=(0,))
    report = build_report(tmp_path)
    assert "landscape" not in report.figures
    assert "## Landscape" not in report.path.read_text()


@pytest.mark.parametrize("summary", [{"status": "completed"}, {"landscape": {}}])
def test_runs_without_a_history_add_nothing(tmp_path: Path, summary: dict) -> None:
    (run,) = write_sweep(tmp_path, steps=40, models=("bn_mlp",), lrs=(0.1,), seeds=(0,))
    (run / "summary.json").write_text(json.dumps(summary))
    assert "landscape" not in build_report(tmp_path).figures


def test_adam_runs_get_the_preconditioned_column_and_their_threshold_is_not_drawn_on_the_plain_one(
    tmp_path: Path,
) -> None:
    runs = write_sweep(tmp_path, steps=40, lrs=(0.1,), seeds=(0,))
    finals = [plant_landscape(run, 1.0, adam="bn_mlp" in run.name) for run in runs]
    header, _, baseline, bn = table(build_report(tmp_path).path.read_text())
    assert header[2:6] == ["sharpness", "preconditioned sharpness", "stability threshold", "sharpness / threshold"]
    assert bn[2:6] == ["2", "20", "380", "0.05263"]
    assert baseline[2:6] == ["2", "n/a", "20", "0.1"]  # the SGD baseline has no preconditioned sharpness
    groups = [SimpleNamespace(runs=[SimpleNamespace(summary={"landscape": {"final": f}}) for f in finals])]
    assert stability_limits(groups) == [20.0]  # Adam's 380 belongs to the preconditioned sharpness, not this panel
    old = SimpleNamespace(runs=[SimpleNamespace(summary={"landscape": {"final": {"sharpness_2_over_lr": 8.0}}})])
    assert stability_limits([old]) == [8.0]  # summaries from before the optimizer-specific thresholds
