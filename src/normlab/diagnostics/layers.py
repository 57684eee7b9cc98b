"""Which trainable parameters make up which layer, in forward order: the covariate shift's units."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from normlab.errors import ConfigError

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LayerNorm, nn.GroupNorm)
_NORMS += (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def trainable_parameters(module: nn.Module) -> list[Tensor]:
    return [p for p in module.parameters() if p.requires_grad]


def layer_indices(module: nn.Module, names: Sequence[str] | None) -> dict[str, list[int]]:
    """Layer name -> indices of its parameters in ``trainable_parameters(module)`` (registration order)."""
    index = {id(p): i for i, p in enumerate(trainable_parameters(module))}
    if names is None:
        found = {
            name: [index[id(p)] for p in m.parameters(recurse=False) if id(p) in index]
            for name, m in module.named_modules()
            if name and not isinstance(m, _NORMS)  # the root's own parameters come first: before every layer
        }
        return {name: idx for name, idx in found.items() if idx}
    modules = dict(module.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        known = list(layer_indices(module, None))
        raise ConfigError(f"ics_layers={list(names)}: no module named {unknown}; layers with weights: {known}")
    out = {n: [index[id(p)] for p in modules[n].parameters() if id(p) in index] for n in names}
    empty = [n for n, idx in out.items() if not idx]
    if empty:
        raise ConfigError(f"ics_layers={list(names)}: {empty} have no trainable parameters")
    return out
