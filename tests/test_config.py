"""Configs: every option composes and instantiates; bad input fails early with one clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from normlab.config import validate
from normlab.errors import ConfigError
from normlab.runs import config_dir, run_label

CONF = Path(config_dir())


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("model", options("model"))
def test_every_model_composes_and_builds(compose_cfg, model):
    data = "synthetic" if model == "keras_tutorial" else "digits"
    cfg = compose_cfg([f"model={model}", f"data={data}"])
    validate(cfg)
    net = instantiate(cfg.model)
    assert sum(p.numel() for p in net.parameters()) > 0


@pytest.mark.parametrize(
    "override",
    [f"data={o}" for o in options("data")]
    + [f"optimizer={o}" for o in options("optimizer")]
    + [f"scheduler={o}" for o in options("scheduler")]
    + [f"trainer={o}" for o in options("trainer")]
    + [f"logger={o}" for o in options("logger")]
    + [f"callbacks={o}" for o in options("callbacks")]
    + [f"debug={o}" for o in options("debug")]
    + [f"experiment={o}" for o in options("experiment")],
)
def test_every_config_option_composes_and_validates(compose_cfg, override):
    cfg = compose_cfg([override])
    validate(cfg)
    for key in set(cfg) - {"hydra"}:
        node = cfg[key]
        if OmegaConf.is_config(node):
            OmegaConf.to_container(node, resolve=True)  # every interpolation resolves


NAMED = {
    "baseline_mlp": ["bn_mlp", "brn_mlp", "ln_mlp", "gn_mlp", "rms_mlp", "wn_mlp"],
    "baseline_cnn": ["bn_cnn", "ln_cnn", "gn_cnn"],
    "resnet": ["bn_resnet", "ln_resnet", "gn_resnet"],
}


@pytest.mark.parametrize(("base", "named"), [(b, n) for b, names in NAMED.items() for n in names])
def test_named_configs_differ_from_their_baselines_only_in_normalization(compose_cfg, base, named):
    a = OmegaConf.to_container(compose_cfg([f"model={base}"]).model, resolve=True)
    b = OmegaConf.to_container(compose_cfg([f"model={named}"]).model, resolve=True)
    differing = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    assert differing <= {"norm", "bn"} and "norm" in differing
    assert b["norm"] != "none"


def test_norm_options_are_range_checked(compose_cfg):
    with pytest.raises(ConfigError, match=r"model.renorm.r_max=0.5 is out of range: must be >= 1"):
        validate(compose_cfg(["model.norm=batch_renorm", "model.renorm.r_max=0.5"]))


@pytest.mark.parametrize(
    ("override", "key", "rule"),
    [
        ("optimizer.lr=-1", "optimizer.lr=-1.0", "> 0"),
        ("optimizer.lr=0", "optimizer.lr=0.0", "> 0"),
        ("model.depth=0", "model.depth=0", ">= 1"),
        ("model.width=0", "model.width=0", ">= 1"),
        ("data.batch_size=0", "data.batch_size=0", ">= 1"),
        ("model.hidden=[16,0]", "model.hidden=[16, 0]", "every entry must be >= 1"),
    ],
)
def test_out_of_range_values_name_key_value_and_rule(compose_cfg, override, key, rule):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg([override]))
    assert key in str(err.value) and rule in str(err.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.activation=swish", "sigmoid"),  # names the allowed values
        ("model.norm=instance", "batch_renorm"),
        ("model.bn_position=post", "bn_position"),  # renamed norm_position
        ("model.depth=three", "model.depth"),
        ("model.dept=3", "dept"),
    ],
)
def test_wrong_types_and_unknown_values_fail_while_composing(compose_cfg, override, expected):
    with pytest.raises((ConfigCompositionException, ValidationError)) as err:
        compose_cfg([override])
    assert expected in str(err.value) + str(err.value.__cause__)


def test_run_label_says_what_the_run_is():
    assert (
        run_label("bn_mlp", "digits", "model=bn_mlp,optimizer.lr=0.5,seed=2") == "bn_mlp-digits,optimizer.lr=0.5,seed=2"
    )
    assert "/" not in run_label("bn_mlp", "mnist", "data.data_dir=/tmp/x")


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["optimizer.lr=-1"], "optimizer.lr=-1.0 is out of range: must be > 0"),
        (["model.depth=0"], "model.depth=0 is out of range"),
        (["model.activation=swish"], "swish"),
        (["model=resnet9000"], "model=resnet9000: no such model config; choose one of"),
        (["data.batch_size=abc"], "data.batch_size"),
        (["data=mnist", "data.download=false"], "train-images-idx3-ubyte.gz"),
    ],
)
def test_cli_errors_are_one_clear_message_and_leave_nothing(entry, tmp_path, overrides, needle):
    run_dir = tmp_path / "run"
    proc = entry(
        "train",
        *overrides,
        f"data.data_dir={tmp_path}/none" if "data=mnist" in overrides else "seed=0",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2
    assert "Traceback" not in output
    assert needle in output
    assert not run_dir.exists()  # nothing half written
