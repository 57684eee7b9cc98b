"""BatchRenorm against Ioffe (2017), Algorithm 1: batch norm when the corrections are switched off,
the paper's clipped r and d otherwise, r and d constant to the gradient, and the running statistics."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from normlab.models import BatchRenorm


def paper_forward(x, running_mean, running_std, r_max, d_max, eps, gamma, beta):
    """Algorithm 1 written out, per feature over dims 0, 2, 3, ...; r and d detached (stop_gradient)."""
    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    mu = x.mean(dims)
    sigma = (x.var(dims, unbiased=False) + eps).sqrt()
    r = (sigma / running_std).clamp(1 / r_max, r_max).detach()
    d = ((mu - running_mean) / running_std).clamp(-d_max, d_max).detach()
    x_hat = (x - mu.view(shape)) / sigma.view(shape) * r.view(shape) + d.view(shape)
    return gamma.view(shape) * x_hat + beta.view(shape)


def with_running(layer: BatchRenorm, mean: torch.Tensor, std: torch.Tensor) -> BatchRenorm:
    layer.running_mean.copy_(mean)
    layer.running_std.copy_(std)
    return layer


@pytest.mark.parametrize("shape", [(16, 5), (8, 5, 3, 3)])
def test_without_corrections_it_is_batch_norm_values_and_gradients(shape):
    torch.manual_seed(0)
    x = (torch.randn(shape) * 3 + 2).requires_grad_()
    renorm = with_running(BatchRenorm(5, r_max=1.0, d_max=0.0), torch.full((5,), 7.0), torch.full((5,), 0.1))
    nn_weight, nn_bias = torch.randn(5, requires_grad=True), torch.randn(5, requires_grad=True)
    with torch.no_grad():
        renorm.weight.copy_(nn_weight)
        renorm.bias.copy_(nn_bias)
    ours = renorm(x)
    (grad_ours,) = torch.autograd.grad(ours.pow(2).sum(), x)
    reference = F.batch_norm(x, None, None, nn_weight, nn_bias, training=True, eps=renorm.eps)
    (grad_ref,) = torch.autograd.grad(reference.pow(2).sum(), x)
    assert torch.allclose(ours, reference, atol=1e-5)
    assert torch.allclose(grad_ours, grad_ref, atol=1e-4)


def test_when_running_statistics_match_the_batch_any_limits_give_batch_norm():
    torch.manual_seed(1)
    x = torch.randn(32, 4) * 2 - 1
    std = (x.var(0, unbiased=False) + 1e-5).sqrt()
    renorm = with_running(BatchRenorm(4, r_max=3.0, d_max=5.0), x.mean(0), std)
    reference = F.batch_norm(x, None, None, training=True, eps=1e-5)
    assert torch.allclose(renorm(x), reference, atol=1e-5)


@pytest.mark.parametrize(("r_max", "d_max"), [(1.5, 0.5), (3.0, 5.0), (1.0, 1.0)])
@pytest.mark.parametrize("shape", [(16, 5), (8, 5, 3, 3)])
def test_training_output_and_gradient_follow_the_paper(r_max, d_max, shape):
    torch.manual_seed(2)
    x = (torch.randn(shape) * 2 + 1).requires_grad_()
    mean, std = torch.linspace(-2, 2, 5), torch.linspace(0.3, 4, 5)  # far enough off for r, d to clip
    renorm = with_running(BatchRenorm(5, r_max=r_max, d_max=d_max, warmup_steps=0), mean, std)
    with torch.no_grad():
        renorm.weight.uniform_(0.5, 2)
        renorm.bias.uniform_(-1, 1)
    expected = paper_forward(x, mean, std, r_max, d_max, renorm.eps, renorm.weight, renorm.bias)
    ours = renorm(x)
    assert torch.allclose(ours, expected, atol=1e-5)
    plain = F.batch_norm(x, None, None, renorm.weight, renorm.bias, training=True, eps=renorm.eps)
    assert not torch.allclose(ours, plain, atol=1e-3)  # the correction did something
    probe = torch.randn_like(ours)
    grads = torch.autograd.grad((ours * probe).sum(), [x, renorm.weight, renorm.bias])
    want = torch.autograd.grad((expected * probe).sum(), [x, renorm.weight, renorm.bias])
    for g, w in zip(grads, want, strict=True):
        assert torch.allclose(g, w, atol=1e-4)


def test_running_statistics_move_by_momentum_and_inference_uses_them():
    torch.manual_seed(3)
    x = torch.randn(64, 3) * 4 + 10
    renorm = BatchRenorm(3, momentum=0.25)
    renorm(x)
    std = (x.var(0, unbiased=False) + renorm.eps).sqrt()
    assert torch.allclose(renorm.running_mean, 0.25 * x.mean(0))
    assert torch.allclose(renorm.running_std, 0.75 + 0.25 * std)
    assert int(renorm.num_batches_tracked) == 1
    renorm.eval()
    y = torch.randn(5, 3)
    expected = (y - renorm.running_mean) / renorm.running_std * renorm.weight + renorm.bias
    assert torch.allclose(renorm(y), expected)
    assert int(renorm.num_batches_tracked) == 1  # inference leaves the statistics alone


def test_warmup_grows_the_limits_from_batch_norms():
    renorm = BatchRenorm(2, r_max=3.0, d_max=5.0, warmup_steps=10)
    assert renorm.limits() == (1.0, 0.0)
    renorm.num_batches_tracked.fill_(5)
    assert renorm.limits() == pytest.approx((2.0, 2.5))
    renorm.num_batches_tracked.fill_(50)
    assert renorm.limits() == (3.0, 5.0)


def test_bad_limits_and_shapes_are_refused():
    with pytest.raises(ValueError, match="r_max >= 1"):
        BatchRenorm(3, r_max=0.5)
    with pytest.raises(ValueError, match="got input of shape"):
        BatchRenorm(3)(torch.randn(4, 5))
