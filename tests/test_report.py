"""normlab-report on sweeps written to disk: event reading, run outcomes, groups, figures, tables."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from normlab.report import Report, build_report, load_runs, read_scalars
from normlab.report.cli import main as report_main
from normlab.report.events import Series
from normlab.report.groups import lr_stability
from normlab.report.outcome import divergence_step, first_step_at, outcome
from normlab.report.sweep import activation_module
from synthetic_sweep import write_sweep

FIGURES = {"val_acc", "train_loss", "grad_norm", "activations", "lr_stability"}


def _write(where: Path) -> Path:
    """2 models x 2 learning rates x 2 seeds; the baseline at lr 1.0, seed 1 diverges."""
    write_sweep(where, steps=120, diverge=[("baseline_mlp", 1.0, 1)])
    return where


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    return _write(tmp_path / "sweep")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Report:
    """One report on the sweep above, shared by the tests that only read it."""
    return build_report(_write(tmp_path_factory.mktemp("built") / "sweep"))


def test_read_scalars_matches_what_summary_writer_wrote(tmp_path):
    writer = SummaryWriter(tmp_path)
    for step in range(5):
        writer.add_scalar("train/loss", 1.0 / (step + 1), step)
        writer.add_scalar("other/tag", 7.0, step)
    writer.add_scalar("train/loss", 42.0, 3)  # a resumed run writes step 3 again: the later value wins
    writer.close()
    scalars = read_scalars(tmp_path, tags=["train/loss"])
    assert set(scalars) == {"train/loss"}
    assert scalars["train/loss"].steps.tolist() == [0, 1, 2, 3, 4]
    assert scalars["train/loss"].values.tolist() == pytest.approx([1.0, 0.5, 1 / 3, 42.0, 0.2])
    assert set(read_scalars(tmp_path, prefixes=["other/"])) == {"other/tag"}


def test_read_scalars_keeps_the_complete_records_of_a_file_cut_short(tmp_path):
    writer = SummaryWriter(tmp_path)
    for step in range(10):
        writer.add_scalar("train/loss", float(step), step)
    writer.close()
    (path,) = tmp_path.glob("events.out.tfevents.*")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])  # the last record loses its tail, as when a run is killed
    steps = read_scalars(tmp_path, tags=["train/loss"])["train/loss"].steps.tolist()
    assert steps == list(range(9))


def test_report_has_a_row_per_group_every_figure_and_the_diverged_seed(built):
    report, sweep = built, built.sweep_dir
    assert [g.label for g in report.groups] == [
        "model=baseline_mlp, optimizer.lr=0.1",
        "model=baseline_mlp, optimizer.lr=1.0",
        "model=bn_mlp, optimizer.lr=0.1",
        "model=bn_mlp, optimizer.lr=1.0",
    ]
    assert all(len(g.runs) == 2 for g in report.groups)
    assert set(report.figures) == FIGURES
    assert all(p.stat().st_size > 10_000 and p.read_bytes()[:4] == b"\x89PNG" for p in report.figures.values())
    assert report.status_counts() == {"completed": 7, "diverged": 1}

    text = (sweep / "report.md").read_text()
    groups = _table(text, "## Groups")
    assert [row[0] for row in groups] == [g.label for g in report.groups]
    assert groups[1][6] == "1/2 (seed 1)" and groups[0][6] == "0/2"
    assert len(_table(text, "## Runs")) == 8
    for name in FIGURES:
        assert f"](figures/{name}.png)" in text
    assert "model=baseline_mlp, optimizer.lr=1.0: 1/2 seeds diverged, first at step 60" in text


def test_group_numbers_are_mean_and_std_over_seeds(built):
    group = built.groups[2]  # bn_mlp at lr 0.1
    finals = [json.loads((r.path / "summary.json").read_text())["final_val_acc"] for r in group.runs]
    row = _table(built.path.read_text(), "## Groups")[2]
    assert row[2] == f"{np.mean(finals):.4f} ± {np.std(finals, ddof=1):.4f}"


def test_lr_stability_finds_the_largest_rate_where_every_seed_converged(built):
    stable = {line.label: line.largest_stable_lr for line in lr_stability(built.groups, built.layout, 0.8)}
    # bn converges at both rates; the baseline reaches 0.8 only at lr 1.0, where one seed diverged
    assert stable == {"model=baseline_mlp": None, "model=bn_mlp": 1.0}
    points = {line.label: line.points for line in built.stability}["model=baseline_mlp"]
    assert [(lr, seed, status) for lr, seed, _, status in points] == [
        (0.1, 0, "completed"), (0.1, 1, "completed"), (1.0, 0, "completed"), (1.0, 1, "diverged"),
    ]  # fmt: skip


def test_missing_partial_and_failed_runs_show_as_such(sweep):
    runs = sorted(p for p in sweep.iterdir() if p.is_dir())
    shutil.rmtree(runs[0])  # never started
    (runs[1] / "summary.json").unlink()  # killed mid-run: no summary, events cut before test/acc
    (events,) = runs[1].glob("events.out.tfevents.*")
    events.write_bytes(events.read_bytes()[: events.stat().st_size // 2])
    (runs[2] / "summary.json").write_text(json.dumps({"status": "failed", "error": "DataError: no MNIST"}))
    for f in runs[2].glob("events.out.tfevents.*"):
        f.unlink()

    report = build_report(sweep)
    status = {r.name[:3]: o.status for r, o in zip(report.runs, report.outcomes, strict=True)}
    assert (status["000"], status["001"], status["002"]) == ("missing", "partial", "failed")
    rows = {row[0]: row for row in _table((sweep / "report.md").read_text(), "## Runs")}
    assert rows["000"][3] == "missing" and rows["000"][9] == "never started"
    assert rows["002"][3] == "failed" and rows["002"][9] == "DataError: no MNIST"
    partial = report.outcomes[1]
    assert partial.source == "events" and partial.global_step is not None and partial.global_step < 120


def test_a_blown_up_loss_overrules_a_summary_that_says_completed(sweep):
    (run,) = sweep.glob("003_*")  # the diverging baseline run
    summary = json.loads((run / "summary.json").read_text())
    summary.update(status="completed", diverged=False, divergence_step=None)
    (run / "summary.json").write_text(json.dumps(summary))
    (loaded,) = [r for r in load_runs(sweep) if r.path == run]
    result = outcome(loaded, target=0.9)
    assert (result.status, result.divergence_step, result.source) == ("diverged", 60, "summary")
    assert result.note == "train/loss blew up from step 60; summary.json says completed"


def test_without_diagnostics_the_report_says_what_it_left_out(tmp_path):
    sweep = tmp_path / "sweep"
    for run in write_sweep(sweep, lrs=[0.1], seeds=[0], steps=60, diagnostics_every=0):
        (run / "summary.json").unlink()
    report = build_report(sweep)
    assert set(report.figures) == {"val_acc", "train_loss"}
    assert all(o.status == "completed" and o.source == "events" for o in report.outcomes)
    notes = " ".join(report.notes)
    for expected in ("2 of 2 runs have no summary.json", "act/<module>/p15", "grad_norm/global", "two learning rates"):
        assert expected in notes
    assert "## Missing data" in (sweep / "report.md").read_text()


def test_percentiles_come_from_bn_for_the_bn_run_and_fc_for_the_baseline(built):
    modules = {g.compared: {r.activation_module for r in g.runs} for g in built.groups}
    assert modules == {"model=baseline_mlp": {"layer3.fc"}, "model=bn_mlp": {"layer3.bn"}}
    run = built.groups[0].runs[0]
    assert run.scalars["act/layer3.fc/p85"].values[-1] > run.scalars["act/layer3.fc/p15"].values[-1]
    assert {r.activation_module for r in load_runs(built.sweep_dir, layer="layer1")} == {"layer1.fc", "layer1.bn"}


@pytest.mark.parametrize(
    ("model", "layer", "expected"),
    [
        ({"norm": "batch", "norm_position": "pre", "depth": 3}, None, "layer3.bn"),
        ({"norm": "none", "depth": 3}, None, "layer3.fc"),
        ({"norm": "batch", "norm_position": "post", "depth": 3}, None, "layer3.fc"),
        ({"norm": "batch", "norm_position": "pre", "hidden": [16, 32], "norm_layers": [2]}, None, "layer2.bn"),
        ({"norm": "batch", "norm_position": "pre", "hidden": [16, 32], "norm_layers": [2]}, "layer1", "layer1.fc"),
        ({"norm": "layer", "norm_position": "pre", "depth": 2}, None, "layer2.ln"),
        ({"norm": "group", "norm_position": "post", "depth": 2}, None, "layer2.fc"),
        ({"norm": "batch_renorm", "depth": 2}, None, "layer2.brn"),
        ({"norm": "weight", "depth": 2}, None, "layer2.fc"),  # no layer of its own
        ({"norm": "batch", "bn_position": "post", "depth": 3}, None, "layer3.fc"),  # a run from before norm_position
    ],
)
def test_activation_module_is_the_sigmoid_input(model, layer, expected):
    assert activation_module({"model": {"_target_": "normlab.models.MLP", **model}}, layer) == expected


def test_activation_module_is_left_to_the_logged_tags_for_other_networks():
    assert activation_module({"model": {"_target_": "normlab.models.CNN"}}, None) is None


def _series(values: list[float]) -> Series:
    return Series(np.arange(len(values)) * 10, np.array(values, dtype=float))


@pytest.mark.parametrize(
    ("loss", "expected"),
    [
        ([2.3, 1.0, 0.5, 0.3, 0.2], None),  # learns
        ([2.3, 1.0, math.nan, math.nan], 20),  # non-finite from step 20
        ([2.3, 2.0, 50.0, 400.0, 900.0], 20),  # blows up to far beyond chance level
        ([30.0, 20.0, 5.0, 1.0, 0.5], None),  # a bad init starts high but learns
        ([2.31, 2.30, 2.30, 2.30], None),  # stuck at chance: not learning, yet not diverging
    ],
)
def test_divergence_rule_on_the_training_loss(loss, expected):
    assert divergence_step(_series(loss), num_classes=10) == expected


def test_first_step_at_target():
    assert first_step_at(_series([0.1, 0.5, 0.91, 0.85, 0.95]), 0.9) == 20
    assert first_step_at(_series([0.1, 0.5]), 0.9) is None


def test_the_report_command_starts_without_torch_or_lightning():
    # Their imports take seconds; the report reads event files and JSON, and needs neither.
    code = "import sys, normlab.report.cli; print(sorted({'torch', 'lightning'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_cli_writes_the_report_and_reports_a_bad_directory_in_one_line(sweep, tmp_path, capsys):
    assert report_main([str(sweep), "--target", "0.8"]) == 0
    out = capsys.readouterr().out
    assert "8 runs (7 completed, 1 diverged) in 4 groups, 5 figures" in out
    assert "model=bn_mlp: 1 (tried 0.1, 1)" in (sweep / "report.md").read_text()

    assert report_main([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err
    (tmp_path / "empty").mkdir()
    assert report_main([str(tmp_path / "empty")]) == 2
    assert "no runs in" in capsys.readouterr().err


def _table(text: str, heading: str) -> list[list[str]]:
    """The body rows of the first markdown table after ``heading``, as lists of cells."""
    section = text.split(heading, 1)[1]
    rows = re.findall(r"^\| (.*) \|$", section.split("\n## ", 1)[0], flags=re.MULTILINE)
    return [row.split(" | ") for row in rows[2:]]
