"""Config schemas: dataclasses registered in Hydra's ConfigStore that type-check the YAML.

Each YAML file in ``conf/model``, ``conf/data``, ``conf/optimizer`` and ``conf/trainer`` lists its
schema first in its defaults list (``- /schema/model/mlp@_here_``), so unknown keys, wrong types
and unknown enum values (an activation, a norm) fail while Hydra composes, naming the full key.
Range limits cannot be typed, so fields carry them as metadata (``positive()``, ``at_least(1)``)
and ``validate`` checks them all before anything runs.

The components' schemas live in ``schemas.py``; the callbacks' are derived from their
constructors (``schema_of``); this module adds the run's own, registers them all and validates.
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

from normlab.errors import ConfigError
from normlab.schemas import (
    AdamSchema,
    CNNSchema,
    DigitsSchema,
    MLPSchema,
    MNISTSchema,
    ResNetSchema,
    SGDSchema,
    SyntheticSchema,
    TrainerSchema,
    at_least,
)


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
