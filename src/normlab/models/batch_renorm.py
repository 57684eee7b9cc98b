"""Batch renormalization (Ioffe 2017), which PyTorch does not ship.

In training, each batch is normalized with its own statistics and then corrected towards the
running ones: ``x_hat = (x - mu_B) / sigma_B * r + d`` with ``r = clip(sigma_B / sigma, 1/r_max,
r_max)`` and ``d = clip((mu_B - mu) / sigma, -d_max, d_max)``, both treated as constants by the
gradient. At inference ``x_hat = (x - mu) / sigma``, so training and inference agree once the
corrections are inside their limits. With ``r_max = 1, d_max = 0`` it is batch norm.
"""

from __future__ import annotations

import torch
from torch import nn


class BatchRenorm(nn.Module):
    """Batch renormalization over dimension 1 of ``(N, C)`` or ``(N, C, *spatial)`` inputs.

    Args:
        num_features: C.
        eps: added to the variance, as in batch norm.
        momentum: weight of the newest batch in the running mean and std (PyTorch's convention).
        r_max, d_max: the limits on the correction once warm-up is over.
        warmup_steps: training batches over which the limits grow linearly from batch norm's
            (``r_max = 1``, ``d_max = 0``) to the configured ones; 0 uses them from the start.
        affine: learn a per-feature scale (gamma) and shift (beta).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.01,
        r_max: float = 3.0,
        d_max: float = 5.0,
        warmup_steps: int = 0,
        affine: bool = True,
    ) -> None:
        super().__init__()
        if r_max < 1 or d_max < 0:
            raise ValueError(f"batch renorm needs r_max >= 1 and d_max >= 0, got r_max={r_max}, d_max={d_max}")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.r_max, self.d_max, self.warmup_steps = r_max, d_max, warmup_steps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_std", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def limits(self) -> tuple[float, float]:
        """(r_max, d_max) for the current training batch, after warm-up."""
        if self.warmup_steps <= 0:
            return self.r_max, self.d_max
        ramp = min(1.0, int(self.num_batches_tracked) / self.warmup_steps)
        return 1.0 + (self.r_max - 1.0) * ramp, self.d_max * ramp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"BatchRenorm({self.num_features}) got input of shape {list(x.shape)}")
        dims = [0, *range(2, x.dim())]
        shape = [1, self.num_features] + [1] * (x.dim() - 2)
        if self.training:
            mean = x.mean(dims)
            std = (x.var(dims, unbiased=False) + self.eps).sqrt()
            r_max, d_max = self.limits()
            with torch.no_grad():  # r and d are constants to the gradient (the paper's stop_gradient)
                r = (std / self.running_std).clamp(1.0 / r_max, r_max)
                d = ((mean - self.running_mean) / self.running_std).clamp(-d_max, d_max)
                self.running_mean.lerp_(mean, self.momentum)
                self.running_std.lerp_(std, self.momentum)
                self.num_batches_tracked += 1
            x_hat = (x - mean.view(shape)) / std.view(shape) * r.view(shape) + d.view(shape)
        else:
            x_hat = (x - self.running_mean.view(shape)) / self.running_std.view(shape)
        if self.weight is None:
            return x_hat
        return x_hat * self.weight.view(shape) + self.bias.view(shape)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, r_max={self.r_max}, "
            f"d_max={self.d_max}, warmup_steps={self.warmup_steps}, affine={self.weight is not None}"
        )
