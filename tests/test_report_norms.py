"""The report compares any number of normalizations: colours by model.norm, a figure and a table per
swept number (test accuracy against batch size, the first layer's gradient norm against depth)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml
from torch.utils.tensorboard import SummaryWriter

from normlab.report import build_report
from normlab.report.compare import ACCURACY, FIRST_GRAD, points

NORMS = ["none", "batch", "layer", "group"]


def write_run(run_dir: Path, overrides: list[str], seed: int, scalars: dict[str, list[tuple[int, float]]]) -> None:
    hydra = run_dir / ".hydra"
    hydra.mkdir(parents=True)
    (hydra / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    norm = next(o.split("=")[1] for o in overrides if o.startswith("model.norm="))
    config = {"seed": seed, "model": {"_target_": "normlab.models.MLP", "norm": norm, "depth": 3}, "data": {}}
    config["data"]["num_classes"] = 10
    (hydra / "config.yaml").write_text(yaml.safe_dump(config))
    with SummaryWriter(str(run_dir)) as writer:
        for tag, series in scalars.items():
            for step, value in series:
                writer.add_scalar(tag, value, step)


def accuracy(norm: str, batch: int, seed: int) -> float:
    """Batch norm falls at small batches, the others hold; seeds differ a little."""
    base = 0.9 - (0.4 if norm == "batch" and batch < 8 else 0.0)
    return base + 0.01 * seed


@pytest.fixture
def batch_sweep(tmp_path):
    for job, (norm, batch, seed) in enumerate(itertools.product(NORMS, (2, 4, 64), (0, 1))):
        acc = accuracy(norm, batch, seed)
        loss = [(s, 2.0 - s / 100) for s in range(0, 100, 10)]
        scalars = {"train/loss": loss, "val/acc": [(99, acc)], "test/acc": [(100, acc)]}
        write_run(
            tmp_path / f"{job}", [f"model.norm={norm}", f"data.batch_size={batch}", f"seed={seed}"], seed, scalars
        )
    return tmp_path


def test_batch_size_sweep_is_coloured_by_norm_with_a_figure_and_table(batch_sweep):
    report = build_report(batch_sweep)
    assert report.layout.compared_key == "model.norm"
    assert {g.compared for g in report.groups} == {f"model.norm={n}" for n in NORMS}
    assert report.figures["batch_size"].stat().st_size > 10_000
    assert "depth" not in report.figures  # depth did not vary
    found = {(p.compared, p.x): p for p in points(report.groups, report.layout, "data.batch_size", ACCURACY)}
    assert found[("model.norm=batch", 2.0)].mean == pytest.approx(0.505)
    assert found[("model.norm=layer", 2.0)].mean == pytest.approx(0.905)
    text = report.path.read_text()
    assert "![batch_size](figures/batch_size.png)" in text
    assert "| model.norm \\ data.batch_size | 2 | 4 | 64 |" in text
    assert "| model.norm=batch | 0.505 | 0.505 | 0.905 |" in text


def test_depth_sweep_plots_the_first_layers_gradient_at_the_first_step(tmp_path):
    for job, (norm, depth) in enumerate(itertools.product(("none", "batch", "weight"), (5, 20, 50))):
        grow = 1.5**depth if norm == "batch" else 1.0
        tag = "grad_norm/layer1.fc.parametrizations.weight" if norm == "weight" else "grad_norm/layer1.fc"
        scalars = {tag: [(0, grow), (1, 123.0)], "grad_norm/layer2.fc": [(0, 7.0)], "train/loss": [(0, 2.3)]}
        write_run(tmp_path / f"{job}", [f"model.norm={norm}", f"model.depth={depth}", "seed=0"], 0, scalars)
    report = build_report(tmp_path)
    assert report.figures["depth"].is_file()
    found = {(p.compared, p.x): p.mean for p in points(report.groups, report.layout, "model.depth", FIRST_GRAD)}
    assert found[("model.norm=batch", 50.0)] == pytest.approx(1.5**50)  # step 0, not the later step
    assert found[("model.norm=none", 50.0)] == 1.0
    assert found[("model.norm=weight", 5.0)] == 1.0  # g and v of the parametrization, not the bias alone
    assert "first-layer gradient norm against model.depth" in report.path.read_text().lower()


def test_norm_beside_another_varying_key_makes_panels(batch_sweep, tmp_path):
    report = build_report(batch_sweep, out_dir=tmp_path / "out")
    assert all(g.panel.startswith("data.batch_size=") for g in report.groups)
