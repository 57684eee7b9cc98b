"""Config schemas: dataclasses registered in Hydra's ConfigStore that type-check the YAML.

Each YAML file in ``conf/model``, ``conf/data``, ``conf/optimizer`` and ``conf/trainer`` lists its
schema first in its defaults list (``- /schema/model/mlp@_here_``), so unknown keys, wrong types
and unknown enum values (an activation, a norm) fail while Hydra composes, naming the full key.
Range limits cannot be typed, so fields carry them as metadata (``positive()``, ``at_least(1)``)
and ``validate`` checks them all before anything runs.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import inspect
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from normlab.data.preprocess import Preprocess
from normlab.errors import ConfigError
from normlab.models.layers import Activation, Init
from normlab.models.norms import Norm, NormPosition


def positive(default: Any = MISSING) -> Any:
    return field(default=default, metadata={"gt": 0})


def at_least(low: float, default: Any = MISSING) -> Any:
    return field(default=default, metadata={"ge": low})


def between(low: float, high: float, default: Any = MISSING) -> Any:
    """A value in [low, high)."""
    return field(default=default, metadata={"ge": low, "lt": high})


def each_at_least(low: float, default: Any = None) -> Any:
    return field(default=default, metadata={"each_ge": low})


# ----------------------------------------------------------------------------- models
@dataclass
class BatchNormSchema:
    eps: float = positive(1e-5)
    momentum: float | None = field(default=0.1, metadata={"ge": 0, "le": 1})  # None: cumulative average
    affine: bool = True
    gamma_init: float = 1.0
    beta_init: float = 0.0


@dataclass
class BatchRenormSchema:
    eps: float = positive(1e-5)
    momentum: float = field(default=0.01, metadata={"gt": 0, "le": 1})
    r_max: float = at_least(1, 3.0)  # limit on sigma_B / sigma
    d_max: float = at_least(0, 5.0)  # limit on (mu_B - mu) / sigma
    warmup_steps: int = at_least(0, 100)  # limits grow from batch norm's (1, 0) over these steps
    affine: bool = True
    gamma_init: float = 1.0
    beta_init: float = 0.0


@dataclass
class LayerNormSchema:
    eps: float = positive(1e-5)
    affine: bool = True
    gamma_init: float = 1.0
    beta_init: float = 0.0


@dataclass
class GroupNormSchema:
    groups: int = at_least(1, 4)  # must divide every normalized width
    eps: float = positive(1e-5)
    affine: bool = True
    gamma_init: float = 1.0
    beta_init: float = 0.0


@dataclass
class RMSNormSchema:
    eps: float = positive(1e-6)
    affine: bool = True
    gamma_init: float = 1.0


@dataclass
class WeightNormSchema:
    dim: int = 0  # the weight dimension with its own norm (0: per output unit or channel)


@dataclass
class _NetSchema:
    input_shape: list[int] = MISSING
    num_classes: int = at_least(1)
    activation: Activation = Activation.relu
    norm: Norm = Norm.none
    norm_position: NormPosition = NormPosition.pre
    bn: BatchNormSchema = field(default_factory=BatchNormSchema)
    renorm: BatchRenormSchema = field(default_factory=BatchRenormSchema)
    ln: LayerNormSchema = field(default_factory=LayerNormSchema)
    gn: GroupNormSchema = field(default_factory=GroupNormSchema)
    rms: RMSNormSchema = field(default_factory=RMSNormSchema)
    wn: WeightNormSchema = field(default_factory=WeightNormSchema)
    init: Init = Init.default
    init_std: float = positive(0.01)


@dataclass
class MLPSchema(_NetSchema):
    _target_: str = "normlab.models.MLP"
    depth: int = at_least(1, 3)
    width: int = at_least(1, 100)
    # per-layer widths; overrides depth and width; [] would silently build a linear model
    hidden: list[int] | None = field(default=None, metadata={"each_ge": 1, "nonempty": True})
    norm_layers: list[int] | None = each_at_least(1)  # 1-based hidden layers normalized; None: all


@dataclass
class CNNSchema(_NetSchema):
    _target_: str = "normlab.models.CNN"
    channels: list[int] = field(default_factory=lambda: [16, 32], metadata={"each_ge": 1})
    head_width: int = at_least(1, 64)


@dataclass
class ResNetSchema(_NetSchema):
    _target_: str = "normlab.models.ResNet"
    widths: list[int] = field(default_factory=lambda: [16, 32, 64], metadata={"each_ge": 1})
    blocks_per_stage: int = at_least(1, 1)


# ----------------------------------------------------------------------------- data
@dataclass
class _DataSchema:
    batch_size: int = at_least(1, 64)
    eval_batch_size: int | None = at_least(1, None)
    preprocess: Preprocess = Preprocess.none
    seed: int = 0
    input_shape: list[int] = MISSING  # shape of one example, checked against the data
    num_classes: int = at_least(1)


@dataclass
class DigitsSchema(_DataSchema):
    _target_: str = "normlab.data.DigitsDataModule"
    val_fraction: float = field(default=0.15, metadata={"gt": 0, "lt": 1})
    test_fraction: float = field(default=0.2, metadata={"gt": 0, "lt": 1})
    split_seed: int = 0


@dataclass
class SyntheticSchema(_DataSchema):
    _target_: str = "normlab.data.SyntheticDataModule"
    num_samples: int = at_least(10, 4000)
    num_features: int = at_least(1, 8)
    scale_disparity: float = at_least(0, 4.0)
    noise: float = at_least(0, 0.1)
    data_seed: int = 0
    val_fraction: float = field(default=0.15, metadata={"gt": 0, "lt": 1})
    test_fraction: float = field(default=0.2, metadata={"gt": 0, "lt": 1})


@dataclass
class MNISTSchema(_DataSchema):
    _target_: str = "normlab.data.MNISTDataModule"
    data_dir: str = "data/mnist"
    download: bool = True
    val_size: int = at_least(1, 5000)


# ----------------------------------------------------------------------------- optimizers
@dataclass
class SGDSchema:
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = positive(0.1)
    momentum: float = between(0, 1, 0.0)
    dampening: float = 0.0
    weight_decay: float = at_least(0, 0.0)
    nesterov: bool = False


@dataclass
class AdamSchema:
    _target_: str = "torch.optim.Adam"
    _partial_: bool = True
    lr: float = positive(1e-3)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata={"each_ge": 0, "each_lt": 1, "len": 2})
    eps: float = positive(1e-8)
    weight_decay: float = at_least(0, 0.0)


# ----------------------------------------------------------------------------- trainer
@dataclass
class TrainerSchema:
    """The ``lightning.pytorch.Trainer`` arguments that a config may set (logger and callbacks
    are built from their own groups)."""

    _target_: str = "lightning.pytorch.Trainer"
    accelerator: str = "auto"
    strategy: Any = "auto"
    devices: Any = "auto"
    num_nodes: int = at_least(1, 1)
    precision: Any = None
    max_steps: int = at_least(-1, -1)
    min_steps: int | None = None
    max_epochs: int | None = None
    min_epochs: int | None = None
    max_time: Any = None
    fast_dev_run: Any = False
    overfit_batches: Any = 0.0
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    val_check_interval: Any = None
    check_val_every_n_epoch: int | None = 1
    num_sanity_val_steps: int | None = None
    log_every_n_steps: int = at_least(1, 50)
    accumulate_grad_batches: int = at_least(1, 1)
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str | None = None
    deterministic: Any = None
    benchmark: bool | None = None
    inference_mode: bool = True
    use_distributed_sampler: bool = True
    profiler: Any = None
    detect_anomaly: bool = False
    sync_batchnorm: bool = False
    enable_checkpointing: bool | None = None
    enable_progress_bar: bool | None = None
    enable_model_summary: bool | None = None
    reload_dataloaders_every_n_epochs: int = 0
    default_root_dir: str | None = None


# ----------------------------------------------------------------------------- callbacks
class OnNonfinite(str, enum.Enum):
    stop = "stop"  # stop the Trainer cleanly at the first non-finite loss or gradient
    warn = "warn"  # record it, warn once and go on


def schema_of(cls: type, limits: dict[str, dict], types: dict[str, Any] | None = None) -> type:
    """A Hydra schema whose fields and defaults are ``cls``'s constructor's, so that the defaults
    live in one place (the signature). ``limits`` adds range metadata per field (checked by
    ``validate``); ``types`` overrides a field's type (an enum that Hydra checks while composing)."""
    hints = typing.get_type_hints(cls.__init__)
    fields: list[tuple] = [("_target_", str, field(default=f"{cls.__module__.rsplit('.', 1)[0]}.{cls.__name__}"))]
    for name, param in inspect.signature(cls).parameters.items():
        kind = (types or {}).get(name) or _config_type(hints[name])
        meta = limits.get(name, {})
        if isinstance(param.default, list | tuple):
            value = field(default_factory=lambda d=param.default: list(d), metadata=meta)
        else:
            value = field(default=param.default, metadata=meta)
        fields.append((name, kind, value))
    return dataclasses.make_dataclass(f"{cls.__name__}Schema", fields)


def _config_type(hint: Any) -> Any:
    """The type OmegaConf can check for a constructor's annotation: sequences become lists,
    ``X | None`` stays optional, anything else it cannot type (a callable) is ``Any``."""
    args = typing.get_args(hint)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        inner = _config_type(rest[0]) if len(rest) == 1 else Any
        return Any if inner is Any else typing.Optional[inner]  # noqa: UP045 (OmegaConf reads Optional)
    if typing.get_origin(hint) in (list, tuple, collections.abc.Sequence):
        return list[_config_type(args[0])] if args else list[Any]
    return hint if hint in (int, float, bool, str) else Any


def _diagnostics_schemas() -> tuple[type, type]:
    from normlab.diagnostics import LandscapeProbes, TrainingDiagnostics

    landscape = schema_of(
        LandscapeProbes,
        {
            **{k: {"ge": 0} for k in ("loss_variation", "grad_predictiveness", "beta_smoothness", "ics", "sharpness")},
            "power_iterations": {"ge": 1},
            "tolerance": {"gt": 0},
        },
    )
    diagnostics = schema_of(
        TrainingDiagnostics,
        {
            "log_every_n_steps": {"ge": 1},
            "dense_every_n_steps": {"ge": 1},
            "dense_until_step": {"ge": 0},
            "bins": {"ge": 1},
            "max_modules": {"ge": 0},
            "sample_size": {"ge": 1},
            "warn_update_ratio": {"ge": 0},
            "percentiles": {"each_ge": 0},
            "saturation_threshold": {"gt": 0, "lt": 1},
            "target_acc": {"ge": 0},
        },
        {"on_nonfinite": OnNonfinite},
    )
    return landscape, diagnostics


LandscapeSchema, DiagnosticsSchema = _diagnostics_schemas()


# ----------------------------------------------------------------------------- the run itself
class TestOn(str, enum.Enum):
    best = "best"  # the checkpoint with the best validation accuracy
    last = "last"  # the weights at the end of training (published tables report these)


@dataclass
class TrainSchema:
    """The top of ``train.yaml``: its own keys, and one per config group (typed by their own
    schemas). Being a schema, it refuses keys nobody reads (``foo=1``, ``+foo=1``)."""

    seed: int = at_least(0, 0)
    ckpt_path: str | None = None
    optimized_metric: str | None = None
    test_on: TestOn = TestOn.best
    overwrite: bool = False
    sweep: str | None = None  # names a multirun's directory, outputs/sweeps/<sweep>
    task: Any = None  # the LightningModule (conf/task)
    model: Any = None
    data: Any = None
    optimizer: Any = None
    scheduler: Any = None
    trainer: Any = None
    logger: Any = None
    callbacks: Any = None


@dataclass
class EvalSchema:
    """The top of ``eval.yaml``."""

    ckpt_path: str = MISSING
    seed: int = at_least(0, 0)
    task: Any = None  # null: the LightningModule class the checkpoint names
    data: Any = None
    trainer: Any = None


SCHEMAS = {
    "run": {"train": TrainSchema, "eval": EvalSchema},
    "model": {"mlp": MLPSchema, "cnn": CNNSchema, "resnet": ResNetSchema},
    "data": {"digits": DigitsSchema, "synthetic": SyntheticSchema, "mnist": MNISTSchema},
    "optimizer": {"sgd": SGDSchema, "adam": AdamSchema},
    "trainer": {"trainer": TrainerSchema},
    "callbacks": {"landscape": LandscapeSchema, "diagnostics": DiagnosticsSchema},
}


def register_schemas() -> None:
    """Put every schema in Hydra's ConfigStore as ``schema/<group>/<name>``.

    A YAML file takes one with ``- /schema/model/mlp@_here_`` first in its defaults list; keeping
    schemas out of the groups themselves keeps them out of the options Hydra lists.
    """
    store = ConfigStore.instance()
    for group, schemas in SCHEMAS.items():
        for name, schema in schemas.items():
            store.store(group=f"schema/{group}", name=name, node=schema)


# ----------------------------------------------------------------------------- range checks
_LIMITS = {
    "gt": (lambda v, b: v > b, "> {}"),
    "ge": (lambda v, b: v >= b, ">= {}"),
    "lt": (lambda v, b: v < b, "< {}"),
    "le": (lambda v, b: v <= b, "<= {}"),
}


def validate(cfg: DictConfig) -> None:
    """Check that every required value is set, the range limits of every schema-typed node in
    ``cfg``, and the limits that tie several keys together; raise ``ConfigError``."""
    problems = list(_problems(cfg, "")) + list(_joint_problems(cfg))
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))


def _problems(node: Any, prefix: str):
    if isinstance(node, ListConfig):
        for i, item in enumerate(node):
            yield from _problems(item, f"{prefix}[{i}]")
        return
    if not isinstance(node, DictConfig):
        return
    schema = OmegaConf.get_type(node)
    limits = {f.name: f.metadata for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else {}
    for key in node:
        if not prefix and key == "hydra":  # Hydra's own node: validated by Hydra
            continue
        full = f"{prefix}.{key}" if prefix else str(key)
        if limits and key not in limits:  # added with +key=value, which Hydra lets into a schema
            yield f"{full} is not a setting here; known keys: {', '.join(sorted(k for k in limits if k[0] != '_'))}"
            continue
        if OmegaConf.is_missing(node, key):
            yield f"{full} has no value: pass {full}=VALUE on the command line"
            continue
        value = node[key]
        yield from _check(full, value, limits.get(key, {}))
        yield from _problems(value, full)


def _joint_problems(cfg: DictConfig):
    data = cfg.get("data")
    if isinstance(data, DictConfig) and "val_fraction" in data and "test_fraction" in data:
        total = data.val_fraction + data.test_fraction
        if total >= 1:
            yield (
                f"data.val_fraction={data.val_fraction} and data.test_fraction={data.test_fraction} add up to "
                f"{total:g}, leaving nothing to train on: their sum must be < 1"
            )


def _check(key: str, value: Any, limits: dict) -> list[str]:
    if value is None or not limits:
        return []
    out = []
    for name, bound in limits.items():
        if name == "nonempty":
            if not len(value):
                out.append(f"{key}=[] lists no hidden layer: give at least one width, or leave it unset")
            continue
        if name == "len":
            if len(value) != bound:
                out.append(f"{key}={list(value)} must have {bound} entries")
            continue
        if name.startswith("each_"):
            ok, text = _LIMITS[name.removeprefix("each_")]
            if not all(ok(v, bound) for v in value):
                out.append(f"{key}={list(value)} is out of range: every entry must be {text.format(bound)}")
            continue
        ok, text = _LIMITS[name]
        if isinstance(value, float) and math.isnan(value) or not ok(value, bound):
            out.append(f"{key}={value} is out of range: must be {text.format(bound)}")
    return out
