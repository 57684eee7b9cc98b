"""The landscape probes under momentum and adaptive optimizers: the update they walk along and the
stability threshold they compare sharpness with, checked against exact values computed here."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normlab.diagnostics import LandscapeProbes
from normlab.diagnostics.hessian import top_hessian_eigenvalue
from normlab.diagnostics.stability import (
    adam_threshold,
    gd_threshold,
    heavy_ball_threshold,
    nesterov_threshold,
    stability,
)
from normlab.diagnostics.update import PreviewError, preview_step
from test_landscape import ALL_AT, Recorder, StateSpy, Tiny, assert_identical, fit, landscape_calls, snapshot


def tiny_problem(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 3-4-2 tanh network (26 parameters, float64) and a batch: small enough for the full Hessian."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    return model, torch.randn(16, 3, generator=g, dtype=torch.float64), torch.randint(0, 2, (16,), generator=g)


def set_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()


def train(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    for _ in range(steps):
        set_gradients(model, x, y)
        optimizer.step()


def state_copy(optimizer: torch.optim.Optimizer) -> dict:
    return copy.deepcopy(optimizer.state_dict())


def assert_same_state(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        for name, value in a["state"][k].items():
            other = b["state"][k][name]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, (k, name)


OPTIMIZERS = {
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "adam_amsgrad": lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True),
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-2, momentum=0.5),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_preview_is_the_next_step_and_leaves_the_optimizer_alone(name: str) -> None:
    model, x, y = tiny_problem()
    optimizer = OPTIMIZERS[name](model.parameters())
    train(model, optimizer, x, y, steps=3)  # momentum and moments are non-trivial
    set_gradients(model, x, y)
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    grads = [p.grad.clone() for p in params]
    state = state_copy(optimizer)

    preview = preview_step(optimizer, params)

    for p, b, g in zip(params, before, grads, strict=True):
        assert torch.equal(p, b) and torch.equal(p.grad, g)  # the real weights and gradients untouched
    assert_same_state(state, optimizer.state_dict())
    optimizer.step()
    for p, b, d in zip(params, before, preview.delta, strict=True):
        torch.testing.assert_close(d, p.detach() - b, rtol=0, atol=1e-15)


def test_under_adam_the_update_is_far_from_lr_times_the_gradient() -> None:
    # Why the probes must not walk along lr * g: Adam's steps are ~lr per coordinate, whatever g is.
    model, x, y = tiny_problem()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    set_gradients(model, x, y)
    params = list(model.parameters())
    update = torch.cat([d.flatten() for d in preview_step(optimizer, params).delta])
    gradient_step = 1e-2 * torch.cat([p.grad.flatten() for p in params])
    assert update.norm() > 5 * gradient_step.norm()
    assert torch.dot(update, -gradient_step) > 0  # still a descent direction


def test_preview_applies_the_gradient_clipping_it_is_given() -> None:
    model, x, y = tiny_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    set_gradients(model, x, y)
    params = list(model.parameters())

    def clip(shadow: torch.optim.Optimizer) -> None:
        nn.utils.clip_grad_norm_([p for g in shadow.param_groups for p in g["params"]], max_norm=1e-3)

    delta = preview_step(optimizer, params, clip).delta
    assert torch.cat([d.flatten() for d in delta]).norm().item() == pytest.approx(0.1 * 1e-3, rel=1e-4)
    assert torch.cat([p.grad.flatten() for p in params]).norm() > 1e-2  # the real gradients were not clipped


def test_a_parameter_outside_the_optimizer_does_not_move() -> None:
    model, x, y = tiny_problem()
    optimizer = torch.optim.Adam(model[0].parameters(), lr=1e-2)
    set_gradients(model, x, y)
    preview = preview_step(optimizer, list(model.parameters()))
    assert all(d.abs().sum() > 0 for d in preview.delta[:2])
    assert all(torch.equal(d, torch.zeros_like(d)) for d in preview.delta[2:])
    fit = stability(preview)
    assert all(torch.equal(p, torch.zeros_like(p)) for p in fit.preconditioner[2:])


def test_an_optimizer_that_needs_a_closure_cannot_be_previewed() -> None:
    model, x, y = tiny_problem()
    optimizer = torch.optim.LBFGS(model.parameters())
    set_gradients(model, x, y)
    with pytest.raises(PreviewError, match="LBFGS"):
        preview_step(optimizer, list(model.parameters()))


def diverges(optimizer_for: callable, curvature: float, steps: int = 3000) -> bool:
    """Run the optimizer on the quadratic curvature/2 * w^2 and report whether |w| blew up."""
    w = nn.Parameter(torch.ones(1, dtype=torch.float64))
    optimizer = optimizer_for([w])
    for _ in range(steps):
        optimizer.zero_grad()
        (0.5 * curvature * w**2).sum().backward()
        optimizer.step()
    return bool(w.abs() > 1)


@pytest.mark.parametrize(
    ("kwargs", "threshold"),
    [
        ({"momentum": 0.0}, gd_threshold(0.1)),
        ({"momentum": 0.9}, heavy_ball_threshold(0.1, 0.9)),
        ({"momentum": 0.5, "dampening": 0.5}, heavy_ball_threshold(0.1, 0.5, 0.5)),
        ({"momentum": 0.9, "nesterov": True}, nesterov_threshold(0.1, 0.9)),
    ],
)
def test_sgd_thresholds_separate_convergence_from_divergence_on_a_quadratic(kwargs: dict, threshold: float) -> None:
    def sgd(params: list) -> torch.optim.SGD:
        return torch.optim.SGD(params, lr=0.1, **kwargs)

    assert not diverges(sgd, 0.99 * threshold)
    assert diverges(sgd, 1.01 * threshold)


def test_sgd_momentum_threshold_is_what_the_probes_report() -> None:
    model, x, y = tiny_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    set_gradients(model, x, y)
    fit = stability(preview_step(optimizer, list(model.parameters())))
    assert fit.threshold == pytest.approx(3.8 / 0.05)
    assert fit.preconditioner is None  # one learning rate: the plain sharpness is the one to compare
    assert "momentum" in fit.rule


def test_sgd_groups_with_other_learning_rates_scale_the_hessian() -> None:
    model, x, y = tiny_problem()
    optimizer = torch.optim.SGD(
        [{"params": model[0].parameters(), "lr": 0.2}, {"params": model[2].parameters()}], lr=0.1
    )
    set_gradients(model, x, y)
    fit = stability(preview_step(optimizer, list(model.parameters())))
    assert fit.threshold == pytest.approx(2 / 0.2)
    assert [p.unique().tolist() for p in fit.preconditioner] == [[1.0], [1.0], [0.5], [0.5]]


def test_adam_threshold_is_38_over_lr_at_beta1_09() -> None:
    assert adam_threshold(1e-3, 0.9) == pytest.approx(38 / 1e-3)


def test_an_optimizer_without_a_known_threshold_says_so() -> None:
    model, x, y = tiny_problem()
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-2)
    set_gradients(model, x, y)
    fit = stability(preview_step(optimizer, list(model.parameters())))
    assert fit.threshold is None and fit.preconditioner is None
    assert "no stability threshold is known for RMSprop" in fit.rule


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_preconditioned_sharpness_is_the_top_eigenvalue_of_p_inverse_h(amsgrad: bool) -> None:
    model, x, y = tiny_problem(seed=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-6, amsgrad=amsgrad)
    train(model, optimizer, x, y, steps=5)
    set_gradients(model, x, y)
    params = list(model.parameters())
    before = torch.cat([p.detach().flatten() for p in params])
    fit = stability(preview_step(optimizer, params))

    def loss() -> torch.Tensor:
        return F.cross_entropy(model(x), y)

    estimate = top_hessian_eigenvalue(loss, params, 200, 1e-10, torch.Generator().manual_seed(0), fit.preconditioner)

    # Exact: P from the real optimizer's state after the real step, H by autograd, eig(P^-1 H).
    optimizer.step()
    state = [optimizer.state[p] for p in params]
    t = float(state[0]["step"])
    second = torch.cat([s["max_exp_avg_sq" if amsgrad else "exp_avg_sq"].flatten() for s in state])
    m = torch.cat([s["exp_avg"].flatten() for s in state])
    p_diag = (1 - 0.9**t) * ((second / (1 - 0.99**t)).sqrt() + 1e-6)
    after = torch.cat([p.detach().flatten() for p in params])
    decay = 1 - 1e-2 * 0.01  # AdamW's decoupled weight decay, default 0.01
    # P is the preconditioner Adam stepped with: w_next = decay * w - lr * P^-1 m.
    torch.testing.assert_close(after, decay * before - 1e-2 * m / p_diag)
    hessian = exact_hessian(model, params, before, x, y)
    exact = torch.linalg.eigvals(torch.diag(1 / p_diag) @ hessian).real.max().item()
    assert estimate.value == pytest.approx(exact, rel=1e-4)
    assert fit.threshold == pytest.approx(adam_threshold(1e-2, 0.9))
    plain = torch.linalg.eigvalsh(hessian).max().item()
    assert exact > 10 * plain  # the preconditioner matters: the two sharpnesses are far apart


def exact_hessian(
    model: nn.Module, params: list[torch.Tensor], flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    shapes = [p.shape for p in params]
    names = [n for n, _ in model.named_parameters()]

    def loss_of(vector: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(vector, [s.numel() for s in shapes])
        values = {n: c.view(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        return F.cross_entropy(torch.func.functional_call(model, values, (x,)), y)

    return torch.autograd.functional.hessian(loss_of, flat)


# ----------------------------------------------------------------------------- in training
class AdamWTiny(Tiny):
    """Tiny (BN, dropout, a metric, self.log) trained with AdamW."""

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3, weight_decay=0.05)


class Plain(L.LightningModule):
    """A deterministic MLP (no dropout, no BN) whose batch loss the test can evaluate itself."""

    def __init__(self, optimizer: str) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
        self.optimizer = optimizer

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self.net(batch[0]), batch[1])

    def train_dataloader(self):
        return Tiny().train_dataloader()

    def configure_optimizers(self):
        if self.optimizer == "rmsprop":
            return torch.optim.RMSprop(self.parameters(), lr=1e-3)
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


class UpdateSpy(L.Callback):
    """The weights before each optimizer step, then the norm of the step and the loss after it."""

    def __init__(self) -> None:
        self.before: list[torch.Tensor] = []
        self.seen: list[tuple[float, float]] = []  # (||w_next - w||, loss of the batch at w_next)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.before = [p.detach().clone() for p in pl_module.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = torch.cat([(p.detach() - b).flatten() for p, b in zip(pl_module.parameters(), self.before, strict=True)])
        with torch.no_grad():
            loss = F.cross_entropy(pl_module.net(batch[0]), batch[1])
        self.seen.append((step.norm().item(), loss.item()))


@pytest.mark.parametrize("clip", [None, 0.05])
def test_probes_under_adamw_walk_along_the_real_update(tmp_path: Path, clip: float | None) -> None:
    # With the single multiple 1 the walk lands where training lands: the loss there is the loss
    # after the real step, and the update's norm is the real step's norm (clipping included).
    spy = UpdateSpy()
    probes = LandscapeProbes(loss_variation=1, beta_smoothness=1, step_multiples=[1.0])
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=Recorder(),
        callbacks=[spy, probes],
        default_root_dir=tmp_path,
        gradient_clip_val=clip,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    torch.manual_seed(0)
    trainer.fit(Plain("adamw"))
    calls = landscape_calls(trainer.loggers[0])
    assert len(calls) == len(spy.seen) == 4
    for (step, metrics), (size, loss) in zip(calls, spy.seen, strict=True):
        assert metrics["landscape/update_norm"] == pytest.approx(size, rel=1e-4), step
        assert metrics["landscape/loss_variation/min"] == pytest.approx(loss, rel=1e-5), step


def seeded(cls: type[L.LightningModule]) -> L.LightningModule:
    torch.manual_seed(0)
    return cls()


def test_adamw_probes_leave_the_training_state_bit_identical(tmp_path: Path) -> None:
    before, after = StateSpy(), StateSpy()
    _, _, logger = fit(tmp_path / "a", before, LandscapeProbes(**ALL_AT), after, steps=3, module=AdamWTiny())
    assert len(landscape_calls(logger)) == 3
    for i, (a, b) in enumerate(zip(before.seen, after.seen, strict=True)):
        assert_identical(a, b, f"hook call {i}")
    trainer_plain, plain, _ = fit(tmp_path / "b", steps=5, module=seeded(AdamWTiny))
    trainer_probed, probed, _ = fit(tmp_path / "c", LandscapeProbes(**ALL_AT), steps=5, module=seeded(AdamWTiny))
    assert_identical(
        snapshot(plain, trainer_plain.optimizers[0]), snapshot(probed, trainer_probed.optimizers[0]), "after 5 steps"
    )


def test_adamw_sharpness_is_preconditioned_and_compared_with_38_over_lr(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    _, _, logger = fit(tmp_path, LandscapeProbes(sharpness=1, summary_path=str(summary)), steps=2, module=AdamWTiny())
    for _, metrics in landscape_calls(logger):
        assert metrics["landscape/sharpness_threshold"] == pytest.approx(38 / 3e-3)
        ratio = metrics["landscape/preconditioned_sharpness"] / metrics["landscape/sharpness_threshold"]
        assert metrics["landscape/sharpness_ratio"] == pytest.approx(ratio)
        assert metrics["landscape/preconditioned_sharpness"] > metrics["landscape/sharpness"]
    assert "Adam" in json.loads(summary.read_text())["landscape"]["stability_rule"]


def test_without_a_known_threshold_the_probes_warn_once_and_log_sharpness_alone(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="no stability threshold is known for RMSprop") as caught:
        _, _, logger = fit(tmp_path, LandscapeProbes(sharpness=1), steps=3, module=Plain("rmsprop"))
    assert len([w for w in caught if "stability threshold" in str(w.message)]) == 1
    for _, metrics in landscape_calls(logger):
        assert "landscape/sharpness" in metrics
        assert not {"landscape/sharpness_threshold", "landscape/sharpness_ratio"} & set(metrics)
