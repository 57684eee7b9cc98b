"""The README's landscape commands, run as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]


def scalars(run_dir: Path) -> dict[str, list[int]]:
    """Tag -> steps of every scalar in the run's event files."""
    out: dict[str, list[int]] = {}
    for f in sorted(run_dir.glob("events.out.tfevents*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend(e.step for e in acc.Scalars(tag))
    return out


@pytest.mark.slow
def test_readme_full_diagnostics_run(train) -> None:
    _, run_dir = train("model=bn_mlp", "callbacks=diagnostics_full", "trainer.max_steps=1000")
    tags = scalars(run_dir)
    for tag in (
        "landscape/sharpness",
        "landscape/grad_predictiveness/max",
        "landscape/beta_smoothness",
        "landscape/loss_variation/range",
        "landscape/ics/layer3.fc/cos",
        "landscape/time_ms/sharpness",
    ):
        assert tags[tag] == [0, 500], tag
    final = json.loads((run_dir / "summary.json").read_text())["landscape"]["final"]
    assert final["sharpness_threshold"] == pytest.approx((2 + 2 * 0.9) / 0.3)  # SGD, heavy-ball momentum 0.9
    assert final["sharpness_ratio"] == pytest.approx(final["sharpness"] / final["sharpness_threshold"])


@pytest.mark.slow
def test_readme_one_instrument_at_its_own_cadence(train) -> None:
    _, run_dir = train(
        "callbacks=diagnostics_full",
        "callbacks.landscape.sharpness=100",
        "callbacks.landscape.ics=0",
        "trainer.max_steps=300",
    )
    tags = scalars(run_dir)
    assert tags["landscape/sharpness"] == [0, 100, 200]
    assert tags["landscape/beta_smoothness"] == [0]
    assert not [t for t in tags if t.startswith("landscape/ics/")]


@pytest.mark.slow
def test_readme_probes_under_adam(train) -> None:
    _, run_dir = train(
        "optimizer=adam", "callbacks=diagnostics_full", "callbacks.landscape.sharpness=50", "trainer.max_steps=200"
    )
    tags = scalars(run_dir)
    for tag in ("landscape/preconditioned_sharpness", "landscape/sharpness_threshold", "landscape/sharpness_ratio"):
        assert tags[tag] == [0, 50, 100, 150], tag
    assert tags["landscape/update_norm"] == [0]
    summary = json.loads((run_dir / "summary.json").read_text())["landscape"]
    final = summary["final"]
    assert final["sharpness_threshold"] == pytest.approx(38 / 1e-3)
    assert final["sharpness_ratio"] == pytest.approx(final["preconditioned_sharpness"] / (38 / 1e-3))
    assert summary["stability_rule"].startswith("Adam")


@pytest.mark.slow
def test_benchmark_prints_the_overhead_of_each_instrument() -> None:
    # The README's command with a small budget: the contract of --json, not the figures.
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts/benchmark_landscape.py"),
            "--steps",
            "40",
            "--every",
            "20",
            "--repeats",
            "1",
            "--optimizer",
            "adam",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["reference"] and result["optimizer"] == "adam"
    for model in ("baseline", "bn"):
        assert set(result[model]["overhead"]) == {
            "loss_variation",
            "grad_predictiveness",
            "beta_smoothness",
            "ics",
            "sharpness",
            "all",
        }
        assert all(v > 0 for v in result[model]["overhead"].values())
