"""The schemas of the components a run is built from (models, data, optimizers, trainer):
dataclasses whose fields mirror the constructors that ``conf/`` instantiates, with their range
limits as field metadata (``positive()``, ``at_least(1)``), which ``config.validate`` checks.

``config.SCHEMAS`` names each one and ``config.register_schemas`` puts it in Hydra's ConfigStore.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from normlab.data.preprocess import Preprocess
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
