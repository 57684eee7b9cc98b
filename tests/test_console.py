"""What a run shows: the config tree (printed and saved), the progress bar, and no noise."""

from __future__ import annotations

import io
import logging
import warnings

from rich.console import Console

from normlab.console import CONFIG_TREE_FILE, config_tree, quiet_known_noise, show_config

# What Lightning may say on stderr during a default run; anything else is noise to fix or filter.
EXPECTED_STDERR = (
    "GPU available:",
    "TPU available:",
    "`Trainer.fit` stopped:",
    "Restoring states from the checkpoint",
    "Loaded model weights from the checkpoint",
    "ActivationStatistics: watching",  # which modules the diagnostics watch, said once at the start
)


def rendered(cfg) -> str:
    out = io.StringIO()
    Console(file=out, width=120, color_system=None).print(config_tree(cfg))
    return out.getvalue()


def test_config_tree_names_each_group_choice_and_shows_resolved_values(compose_cfg):
    text = rendered(compose_cfg(["model=bn_mlp", "optimizer.lr=0.25", "trainer.max_steps=7"]))
    for line in ("model (bn_mlp)", "data (digits)", "optimizer (sgd)", "trainer (default)", "callbacks (default)"):
        assert line in text
    assert "lr: 0.25" in text and "max_steps: 7" in text and "norm: batch" in text
    assert "input_shape: [1, 8, 8]" in text  # ${data.input_shape}, resolved
    assert "── hydra" not in text  # Hydra's own node is not part of the run's config
    assert "eval_batch_size" not in text  # null inside a group: left out
    assert "ckpt_path: null" in text  # top-level values are always shown


def test_show_config_prints_the_tree_and_saves_it_plain(compose_cfg, tmp_path, capsys):
    show_config(compose_cfg(["model=baseline_cnn"]), tmp_path / "run")
    saved = (tmp_path / "run" / CONFIG_TREE_FILE).read_text()
    assert "model (baseline_cnn)" in saved and "channels: [16, 32]" in saved
    assert "\x1b[" not in saved  # no colour codes in the file
    assert "model (baseline_cnn)" in capsys.readouterr().out


def test_default_run_prints_its_config_a_step_budget_bar_and_no_warnings(default_run):
    proc, run_dir = default_run  # trainer.max_steps=30, in a process: warnings reach its stderr
    assert proc.stdout.startswith("config")  # before Lightning's own output
    assert "model (baseline_mlp)" in (run_dir / CONFIG_TREE_FILE).read_text()
    assert "step: 30/30" in proc.stdout and "Epoch 1" in proc.stdout
    assert "/-2" not in proc.stdout  # Lightning's bar would read `Epoch 1/-2` under a step budget
    noise = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith(EXPECTED_STDERR)]
    assert not noise
    assert "ActivationStatistics: watching 7 of 7 modules" in proc.stderr


def test_quiet_known_noise_drops_the_listed_messages_only(caplog):
    ads = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_known_noise()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("Checkpoint directory /x exists and is not empty.", UserWarning, stacklevel=1)
        warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
        with caplog.at_level(logging.INFO, logger=ads.name):
            ads.info("💡 Tip: For seamless cloud logging, try ...")
            ads.info("GPU available: False, used: False")
        quiet_known_noise(resuming=True)
        warnings.warn("Checkpoint directory /x exists and is not empty.", UserWarning, stacklevel=1)
    assert [str(w.message)[:20] for w in seen] == ["Checkpoint directory", "something else is de"]
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
