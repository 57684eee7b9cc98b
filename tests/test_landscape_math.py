"""The landscape instruments' math on a quadratic loss, whose Hessian and gradients are known exactly."""

from __future__ import annotations

import random
import warnings
from collections import OrderedDict

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from normlab.diagnostics.geometry import covariate_shift, parameters_at, walk_along_gradient
from normlab.diagnostics.hessian import hessian_vector_product, top_hessian_eigenvalue
from normlab.diagnostics.sandbox import sandboxed, training_step_loss
from normlab.errors import ConfigError

EIGENVALUES = [12.0, 7.0, 3.0, 1.0, 0.5, -4.0]  # largest in magnitude first, one negative


class Quadratic:
    """L(w) = 1/2 w'Aw + b'w with A = Q diag(eigenvalues) Q', in float64."""

    def __init__(self, seed: int = 0, eigenvalues: list[float] = EIGENVALUES) -> None:
        g = torch.Generator().manual_seed(seed)
        n = len(eigenvalues)
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
        self.A = q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T
        self.b = torch.randn(n, generator=g, dtype=torch.float64)
        self.w = nn.Parameter(torch.randn(n, generator=g, dtype=torch.float64))

    def loss(self) -> torch.Tensor:
        return 0.5 * self.w @ self.A @ self.w + self.b @ self.w

    def grad(self) -> torch.Tensor:
        return (self.A @ self.w + self.b).detach()


def test_sharpness_is_the_top_eigenvalue_within_one_percent() -> None:
    q = Quadratic()
    eigen = top_hessian_eigenvalue(
        q.loss, [q.w], iterations=50, tolerance=1e-6, generator=torch.Generator().manual_seed(1)
    )
    assert eigen.value == pytest.approx(max(EIGENVALUES), rel=0.01)
    assert eigen.iterations < 50  # converged before the cap


def test_sharpness_is_the_top_eigenvalue_when_a_negative_one_dominates() -> None:
    # Near a saddle the eigenvalue of largest magnitude is negative; sharpness is still the top one.
    q = Quadratic(eigenvalues=[6.0, 2.0, 1.0, -3.0, -9.0, -20.0])
    eigen = top_hessian_eigenvalue(
        q.loss, [q.w], iterations=200, tolerance=1e-7, generator=torch.Generator().manual_seed(1)
    )
    assert eigen.value == pytest.approx(6.0, rel=0.01)


def test_sharpness_stops_at_the_iteration_cap() -> None:
    q = Quadratic()
    eigen = top_hessian_eigenvalue(q.loss, [q.w], iterations=2, tolerance=1e-12)
    assert eigen.iterations == 2


def test_hessian_vector_product_is_A_v() -> None:
    q = Quadratic()
    grads = torch.autograd.grad(q.loss(), [q.w], create_graph=True)
    v = torch.arange(len(EIGENVALUES), dtype=torch.float64)
    (hv,) = hessian_vector_product(grads, [q.w], [v])
    torch.testing.assert_close(hv, q.A @ v)


def test_walk_along_gradient_matches_closed_forms() -> None:
    q = Quadratic()
    g, w0 = q.grad(), q.w.detach().clone()
    etas = [0.01, 0.02, 0.05]
    walk = walk_along_gradient(q.loss, [q.w], etas)
    ag = q.A @ g
    # L(w - eta g) = L(w) - eta |g|^2 + eta^2/2 g'Ag;  grad(w - eta g) - g = -eta A g
    expected = [(q.loss() - eta * g @ g + 0.5 * eta**2 * g @ ag).item() for eta in etas]
    assert walk.losses == pytest.approx(expected, rel=1e-12)
    assert walk.grad_changes == pytest.approx([eta * ag.norm().item() for eta in etas], rel=1e-12)
    assert walk.beta_smoothness() == pytest.approx((ag.norm() / g.norm()).item(), rel=1e-12)
    assert walk.grad_predictiveness() == {"min": walk.grad_changes[0], "max": walk.grad_changes[-1]}
    variation = {"min": min(expected), "max": max(expected), "range": max(expected) - min(expected)}
    assert walk.loss_variation() == pytest.approx(variation, rel=1e-12)
    assert torch.equal(q.w.detach(), w0)


def test_walk_without_gradients_measures_only_the_loss() -> None:
    q = Quadratic()
    walk = walk_along_gradient(q.loss, [q.w], [0.01, 0.03], with_gradients=False)
    full = walk_along_gradient(q.loss, [q.w], [0.01, 0.03])
    assert walk.grad_changes is None
    assert walk.losses == pytest.approx(full.losses, rel=1e-12)


def test_covariate_shift_matches_closed_form() -> None:
    # Three "layers" of a quadratic; layer k's gradient moves by sum_{j<k} A_kj (after_j - before_j).
    q = Quadratic()
    sizes = [2, 2, 2]
    full_before = q.w.detach().clone()
    step = torch.linspace(-0.3, 0.4, len(EIGENVALUES), dtype=torch.float64)
    parts = [nn.Parameter(t.clone()) for t in (full_before + step).split(sizes)]  # the updated values
    before = list(full_before.split(sizes))

    def loss() -> torch.Tensor:
        w = torch.cat(parts)
        return 0.5 * w @ q.A @ w + q.b @ w

    shifts = covariate_shift(loss, parts, before, {"first": [0], "second": [1], "third": [2]})
    assert set(shifts) == {"second", "third"}  # nothing precedes the first layer
    g = q.A @ full_before + q.b
    for name, k in (("second", 1), ("third", 2)):
        rows = slice(2 * k, 2 * k + 2)
        moved = full_before.clone()
        moved[: 2 * k] += step[: 2 * k]
        g_after = (q.A @ moved + q.b)[rows]
        assert shifts[name].l2 == pytest.approx((g_after - g[rows]).norm().item(), rel=1e-12)
        assert shifts[name].cos == pytest.approx(F.cosine_similarity(g_after, g[rows], dim=0).item(), rel=1e-12)
    for p, after in zip(parts, (full_before + step).split(sizes), strict=True):
        assert torch.equal(p.detach(), after)


def test_parameters_at_restores_bit_identical_values_even_on_error() -> None:
    p = nn.Parameter(torch.randn(5))
    original = p.detach().clone()
    with pytest.raises(RuntimeError, match="inside"), parameters_at([p], [torch.zeros(5)]):
        assert torch.equal(p.detach(), torch.zeros(5))
        raise RuntimeError("inside")
    assert torch.equal(p.detach(), original)


class Noisy(L.LightningModule):
    """BN, dropout, a metric and self.log: every side effect a training step can have."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            OrderedDict(
                fc=nn.Linear(4, 8), bn=nn.BatchNorm1d(8), act=nn.ReLU(), drop=nn.Dropout(0.5), head=nn.Linear(8, 3)
            )
        )
        self.acc = MulticlassAccuracy(3)
        self.pending: list[torch.Tensor] = []  # Python state, as a module that batches metric updates keeps
        self.calls = 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.acc.update(logits, y)
        self.pending.append(logits.detach().argmax(1))
        self.calls += 1
        self.extra = "set inside"
        loss = F.cross_entropy(logits, y)
        self.log("train/loss", loss)  # without a trainer this would warn, unless muted
        return {"loss": loss}


def test_sandbox_restores_buffers_metrics_attributes_and_random_state() -> None:
    torch.manual_seed(0)
    module = Noisy().train()
    batch = (torch.randn(16, 4), torch.randint(0, 3, (16,)))
    module.acc.update(torch.randn(16, 3), batch[1])
    buffers = {k: v.clone() for k, v in module.named_buffers()}
    acc_state = {k: v.clone() for k, v in module.acc.metric_state.items()}
    rng = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a self.log reaching Lightning would warn: no trainer
        with sandboxed(module) as rewind:
            rewind()
            first = training_step_loss(module, batch, 0)
            np.random.rand(), random.random()
            rewind()
            second = training_step_loss(module, batch, 0)
    assert torch.equal(first, second)  # rewinding gives the same dropout masks
    assert all(torch.equal(v, buffers[k]) for k, v in module.named_buffers())
    assert all(torch.equal(v, acc_state[k]) for k, v in module.acc.metric_state.items())
    assert module.acc.update_count == 1
    assert torch.equal(torch.get_rng_state(), rng[0])
    assert np.array_equal(np.random.get_state()[1], rng[1]) and random.getstate() == rng[2]
    assert "log" not in vars(module)  # logging unmuted again
    assert module.pending == [] and module.calls == 0 and not hasattr(module, "extra")


def test_training_step_without_a_loss_is_a_config_error() -> None:
    module = Noisy()
    module.training_step = lambda batch, batch_idx: None
    with pytest.raises(ConfigError, match="need the differentiable loss"):
        training_step_loss(module, (torch.randn(4, 4), torch.zeros(4, dtype=torch.long)), 0)
