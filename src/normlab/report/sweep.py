"""A sweep on disk: its run directories, what each run was asked to do, and what it left behind.

A run directory is any directory holding ``.hydra/overrides.yaml``: the job subdirectories of a
Hydra multirun (basic, joblib, submitit or optuna), or a single run given on its own. Jobs that a
basic sweep's ``multirun.yaml`` asked for but that never created their directory are listed too,
with no path, so that the report can show them as missing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from normlab.report.events import Series, event_files, read_scalars

try:  # libyaml's loader is some 20x faster than the pure-Python one
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _Loader = yaml.SafeLoader

SUMMARY_FILE = "summary.json"
# Tags every run's outcome and curves come from; percentiles are added per run.
BASE_TAGS = ("train/loss", "val/acc", "val/acc_best", "val/loss", "test/acc", "grad_norm/global")
# The first weight layer of the MLP, the CNN and the ResNet: the depth figure's gradient norm.
FIRST_LAYER_TAGS = (
    "grad_norm/layer1.fc.parametrizations.weight",
    "grad_norm/layer1.fc",
    "grad_norm/conv1.conv",
    "grad_norm/stem.conv",
)
PERCENTILES = ("p15", "p50", "p85")
_LAYER = re.compile(r"^layer(\d+)$")


@dataclass
class Run:
    """One job of a sweep, as found on disk.

    ``path`` is ``None`` for a job the sweep asked for that never started. ``config`` holds the
    few resolved config values the report uses (``seed``, ``lr``, ``num_classes``, ``model``).
    ``activation_module`` is the module whose pre-activation percentiles were read (``None`` when
    the run logged none).
    """

    name: str
    path: Path | None
    overrides: tuple[str, ...]
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    scalars: dict[str, Series] = field(default_factory=dict)
    activation_module: str | None = None
    has_events: bool = False

    @property
    def job(self) -> int | None:
        head = self.name.split("_", 1)[0]
        return int(head) if head.isdigit() else None

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def lr(self) -> float | None:
        return self.config.get("lr")


def override_key(override: str) -> str:
    """``optimizer.lr`` for ``optimizer.lr=0.1`` (and for ``+optimizer.lr=0.1``)."""
    return override.split("=", 1)[0].lstrip("+~")


def run_dirs(sweep_dir: Path) -> list[Path]:
    """The run directories of a sweep (or ``[sweep_dir]`` when it is a single run), by name."""
    if (sweep_dir / ".hydra" / "overrides.yaml").is_file():
        return [sweep_dir]
    return sorted(p for p in sweep_dir.iterdir() if (p / ".hydra" / "overrides.yaml").is_file())


def load_runs(sweep_dir: Path, layer: str | None = None, since: float | None = None) -> list[Run]:
    """Every run of the sweep with its config, summary and the scalars a report needs.

    Args:
        sweep_dir: a multirun directory (``hydra.sweep.dir``) or one run directory.
        layer: hidden layer whose pre-activation percentiles to read, e.g. ``layer2``;
            ``None``: the last hidden layer.
        since: only runs whose directory was set up at or after this time (``time.time()``), and
            no missing jobs: what one multirun into a reused sweep directory produced.
    """
    dirs = run_dirs(sweep_dir)
    if since is not None:
        dirs = [d for d in dirs if (d / ".hydra" / "overrides.yaml").stat().st_mtime >= since]
    runs = [load_run(d, layer) for d in dirs]
    if since is None:
        runs += missing_runs(sweep_dir, runs)
    return sorted(runs, key=lambda r: (r.job is None, r.job or 0, r.name))


def load_run(run_dir: Path, layer: str | None = None) -> Run:
    config = _read_yaml(run_dir / ".hydra" / "config.yaml") or {}
    overrides = tuple(str(o) for o in _read_yaml(run_dir / ".hydra" / "overrides.yaml") or ())
    run = Run(name=run_dir.name, path=run_dir, overrides=overrides, config=_essentials(config, run_dir))
    run.summary = read_summary(run_dir)
    module = activation_module(config, layer)
    tags = [*BASE_TAGS, *FIRST_LAYER_TAGS, *(f"act/{module}/{p}" for p in PERCENTILES if module)]
    run.has_events = bool(event_files(run_dir))
    run.scalars = read_scalars(run_dir, tags, prefixes=() if module else ("act/",))
    run.activation_module = _logged_module(run.scalars, module, layer)
    return run


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """``summary.json`` of a run; ``None`` when absent, and a summary with status ``unreadable``
    when it is not a JSON object (its numbers cannot be trusted, nor the status the events suggest)."""
    path = run_dir / SUMMARY_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        data = e
    if isinstance(data, dict):
        return data
    reason = f"{type(data).__name__}: {data}" if isinstance(data, Exception) else "not a JSON object"
    return {"status": "unreadable", "error": f"{SUMMARY_FILE} unreadable ({' '.join(reason.split())[:120]})"}


def _read_yaml(path: Path) -> Any:
    try:
        with path.open() as f:
            return yaml.load(f, Loader=_Loader)
    except (OSError, yaml.YAMLError):
        return None


def _essentials(config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    wanted = {
        "seed": "seed",
        "lr": "optimizer.lr",
        "num_classes": "data.num_classes",
        "norm": "model.norm",
        "norm_position": "model.norm_position",
        "model": "model._target_",
        "depth": "model.depth",
        "hidden": "model.hidden",
    }
    out = {name: _select(config, key) for name, key in wanted.items()}
    if any(isinstance(v, str) and "${" in v for v in out.values()):
        out = _resolved(run_dir, wanted)
    choices = _read_yaml(run_dir / ".hydra" / "hydra.yaml") or {}
    out["model_choice"] = _select(choices, "hydra.runtime.choices.model")
    if out["lr"] is not None:
        out["lr"] = float(out["lr"])
    return out


def _resolved(run_dir: Path, wanted: dict[str, str]) -> dict[str, Any]:
    """The wanted values with interpolations resolved (a value that cannot be resolved is ``None``)."""
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    out = {}
    for name, key in wanted.items():
        try:
            out[name] = OmegaConf.select(cfg, key)
        except OmegaConfBaseException:  # an interpolation to Hydra's runtime, which only exists in a job
            out[name] = None
    return out


def _select(node: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


# normlab.models.norms.LAYER_NAMES, repeated so that reading a sweep does not import torch
LAYER_NAMES = {"batch": "bn", "batch_renorm": "brn", "layer": "ln", "group": "gn", "rms": "rms"}


def activation_module(config: dict[str, Any], layer: str | None) -> str | None:
    """The module whose output is the sigmoid's input in ``layer`` of an MLP, e.g. ``layer3.bn``.

    That is the norm layer when the layer has one before its nonlinearity (``layer3.bn``,
    ``layer3.ln``), else the affine map. Runs from before ``norm_position`` read ``bn_position``.
    ``None`` for other networks: the report then picks from the tags the run logged.
    """
    model = config.get("model") or {}
    if not str(model.get("_target_", "")).endswith("MLP"):
        return None
    hidden = model.get("hidden")
    depth = len(hidden) if isinstance(hidden, list) else int(model.get("depth") or 1)
    name = layer or f"layer{depth}"
    match = _LAYER.match(name)
    index = int(match.group(1)) if match else None
    norm_layers = model.get("norm_layers")
    position = model.get("norm_position", model.get("bn_position", "pre"))
    norm_name = LAYER_NAMES.get(model.get("norm"))
    has_norm = norm_name is not None and position == "pre" and (norm_layers is None or index in norm_layers)
    return f"{name}.{norm_name if has_norm else 'fc'}"


def known_layers(run: Run) -> set[str]:
    """The hidden layers of a run's network that ``--layer`` can name: an MLP's ``layer1``..``layerN``,
    else the blocks it logged pre-activation percentiles for."""
    hidden, depth = run.config.get("hidden"), run.config.get("depth")
    if str(run.config.get("model") or "").endswith("MLP") and (hidden is not None or depth is not None):
        count = len(hidden) if isinstance(hidden, list) else int(depth)
        return {f"layer{i}" for i in range(1, count + 1)}
    return {tag.split("/")[1].rsplit(".", 1)[0] for tag in run.scalars if tag.startswith("act/")}


def _logged_module(scalars: dict[str, Series], wanted: str | None, layer: str | None) -> str | None:
    """The module with logged percentiles: ``wanted`` if there, else the last hidden one logged."""
    modules = {tag.split("/")[1] for tag in scalars if tag.startswith("act/") and tag.endswith("/p50")}
    if wanted is not None or not modules:
        return wanted if wanted in modules else None
    if layer is not None:
        modules = {m for m in modules if m.rsplit(".", 1)[0] == layer} or modules
    candidates = [m for m in modules if not m.startswith("head")] or sorted(modules)
    return max(candidates, key=_module_order)


def _module_order(module: str) -> tuple:
    """Sort key: later layers last, and within a layer the pre-activation (bn, then fc/conv) first."""
    block, _, part = module.rpartition(".")
    match = re.search(r"(\d+)$", block)
    return (int(match.group(1)) if match else -1, block, {"bn": 2, "fc": 1, "conv": 1}.get(part, 0))


def missing_runs(sweep_dir: Path, found: list[Run]) -> list[Run]:
    """Jobs a basic sweep asked for (per ``multirun.yaml``) whose directory does not exist."""
    expected = expected_jobs(sweep_dir)
    have = {frozenset(r.overrides) for r in found}
    return [
        Run(name=f"{num:03d}_{','.join(job)}", path=None, overrides=tuple(job), config=_config_from(job))
        for num, job in enumerate(expected)
        if frozenset(job) not in have
    ]


def expected_jobs(sweep_dir: Path) -> list[list[str]]:
    """The override lists of a grid sweep's jobs, in launch order; ``[]`` when not knowable."""
    config = _read_yaml(sweep_dir / "multirun.yaml") or {}
    sweeper = _select(config, "hydra.sweeper") or {}
    if not str(sweeper.get("_target_", "")).endswith(("BasicSweeper", "GridSweeper")):
        return []  # optuna and other sweepers decide their jobs as they go
    from hydra_plugins.normlab_sweepers.grid import grid_jobs

    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    task = [str(o) for o in _select(config, "hydra.overrides.task") or ()]
    try:
        return grid_jobs(OverridesParser.create().parse_overrides(params + task))
    except (HydraException, OmegaConfBaseException):  # another Hydra's syntax: report what is on disk
        return []


def _config_from(overrides: list[str]) -> dict[str, Any]:
    """What a missing job's overrides say about its seed and learning rate."""
    values = dict(o.lstrip("+~").split("=", 1) for o in overrides if "=" in o)
    config: dict[str, Any] = {"seed": _number(values.get("seed")), "lr": _number(values.get("optimizer.lr"))}
    config["model_choice"] = values.get("model")
    return config


def _number(text: str | None) -> float | int | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value
