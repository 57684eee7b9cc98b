"""Every network x norm x BN position builds, trains a step, and has BN exactly where it should."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from normlab.models import CNN, MLP

NORMS = ["none", "batch"]
POSITIONS = ["pre", "post"]
ACTIVATIONS = ["sigmoid", "relu", "tanh"]


def layer_kinds(block: nn.Sequential) -> list[str]:
    return [name for name, _ in block.named_children()]


@pytest.mark.parametrize(("norm", "position", "activation"), itertools.product(NORMS, POSITIONS, ACTIVATIONS))
def test_mlp_forward_backward_and_bn_placement(norm, position, activation):
    net = MLP([1, 8, 8], 10, depth=3, width=20, activation=activation, norm=norm, bn_position=position)
    out = net(torch.randn(5, 1, 8, 8))
    out.sum().backward()
    assert out.shape == (5, 10)
    assert all(p.grad is not None for p in net.parameters())
    for i in (1, 2, 3):
        block = getattr(net, f"layer{i}")
        expected = {"none": ["fc", "act"], "batch": {"pre": ["fc", "bn", "act"], "post": ["fc", "act", "bn"]}[position]}
        assert layer_kinds(block) == (expected["none"] if norm == "none" else expected["batch"])
        # pre-BN makes the affine bias redundant (BN's beta replaces it); post keeps it
        assert (block.fc.bias is None) == (norm == "batch" and position == "pre")
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(bns) == (3 if norm == "batch" else 0)


@pytest.mark.parametrize(("norm", "position"), itertools.product(NORMS, POSITIONS))
def test_cnn_forward_backward_and_bn_placement(norm, position):
    net = CNN([1, 8, 8], 10, channels=[4, 8], head_width=16, norm=norm, bn_position=position)
    out = net(torch.randn(3, 1, 8, 8))
    out.sum().backward()
    assert out.shape == (3, 10)
    bn2d = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    bn1d = [m for m in net.modules() if isinstance(m, nn.BatchNorm1d)]
    assert (len(bn2d), len(bn1d)) == ((2, 1) if norm == "batch" else (0, 0))
    if norm == "batch":
        kinds = layer_kinds(net.conv1)
        assert kinds.index("bn") < kinds.index("act") if position == "pre" else kinds.index("bn") > kinds.index("act")
        assert (net.conv1.conv.bias is None) == (position == "pre")


def test_baseline_and_bn_differ_only_in_normalization():
    base = MLP([64], 10, activation="sigmoid")
    bn = MLP([64], 10, activation="sigmoid", norm="batch")
    strip = lambda net: [(n, type(m)) for n, m in net.named_modules() if not isinstance(m, nn.BatchNorm1d)]  # noqa: E731
    assert strip(base) == strip(bn)


def test_keras_tutorial_network_per_layer_widths_and_bn():
    net = MLP([2], 2, hidden=[16, 32], activation="relu", norm="batch", bn_position="post", norm_layers=[2])
    assert [net.layer1.fc.out_features, net.layer2.fc.out_features] == [16, 32]
    assert layer_kinds(net.layer1) == ["fc", "act"]
    assert layer_kinds(net.layer2) == ["fc", "act", "bn"]
    assert isinstance(net.layer2.act, nn.ReLU)


def test_bn_options_reach_the_layers():
    net = MLP(
        [4], 3, depth=1, width=6, norm="batch", bn={"eps": 1e-3, "momentum": None, "gamma_init": 0.5, "beta_init": 0.2}
    )
    bn = net.layer1.bn
    assert bn.eps == 1e-3 and bn.momentum is None  # None: cumulative average (population statistics)
    assert torch.all(bn.weight == 0.5) and torch.all(bn.bias == 0.2)
    net = MLP([4], 3, depth=1, width=6, norm="batch", bn={"affine": False})
    assert net.layer1.bn.weight is None


def test_normal_init_uses_the_requested_std():
    torch.manual_seed(0)
    net = MLP([784], 10, depth=2, width=500, init="normal", init_std=0.5)
    w = net.layer1.fc.weight
    assert abs(w.std().item() - 0.5) < 0.01 and abs(w.mean().item()) < 0.01
    assert torch.all(net.layer1.fc.bias == 0)


def test_cnn_rejects_flat_inputs():
    with pytest.raises(ValueError, match="input_shape"):
        CNN([64], 10)
