"""Every network x normalization family x placement builds, trains a step, and has its norm where it should."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from normlab.models import CNN, MLP, BatchRenorm, ResNet
from normlab.models.norms import RMSNorm2d

FAMILIES = ["none", "batch", "batch_renorm", "layer", "group", "rms", "weight"]
POSITIONS = ["pre", "post"]
ACTIVATIONS = ["sigmoid", "relu", "tanh"]
PLACEMENTS = [(n, p) for n, p in itertools.product(FAMILIES, POSITIONS) if not (n == "weight" and p == "post")]
NAMES = {"batch": "bn", "batch_renorm": "brn", "layer": "ln", "group": "gn", "rms": "rms"}
FLAT_TYPES = {"batch": nn.BatchNorm1d, "batch_renorm": BatchRenorm, "layer": nn.LayerNorm, "group": nn.GroupNorm}
FLAT_TYPES["rms"] = nn.RMSNorm
SPATIAL_TYPES = {"batch": nn.BatchNorm2d, "batch_renorm": BatchRenorm, "layer": nn.GroupNorm, "group": nn.GroupNorm}
SPATIAL_TYPES["rms"] = RMSNorm2d


def layer_kinds(block: nn.Sequential) -> list[str]:
    return [name for name, _ in block.named_children()]


def expected_kinds(affine: str, norm: str, position: str) -> list[str]:
    if norm in ("none", "weight"):
        return [affine, "act"]
    return [affine, NAMES[norm], "act"] if position == "pre" else [affine, "act", NAMES[norm]]


def train_step(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = net(x)
    nn.functional.cross_entropy(out, torch.arange(len(x)) % out.shape[1]).backward()
    assert torch.isfinite(out).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    return out


@pytest.mark.parametrize(("norm", "position"), PLACEMENTS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_mlp_family_trains_and_sits_where_it_should(norm, position, activation):
    net = MLP([1, 8, 8], 10, depth=3, width=20, activation=activation, norm=norm, norm_position=position)
    assert train_step(net, torch.randn(5, 1, 8, 8)).shape == (5, 10)
    for i in (1, 2, 3):
        block = getattr(net, f"layer{i}")
        assert layer_kinds(block) == expected_kinds("fc", norm, position)
        if norm in FLAT_TYPES:
            assert type(getattr(block, NAMES[norm])) is FLAT_TYPES[norm]
        assert parametrize.is_parametrized(block.fc, "weight") == (norm == "weight")
        # batch statistics right after the affine map cancel its bias; no other family does
        assert (block.fc.bias is None) == (norm in ("batch", "batch_renorm") and position == "pre")


@pytest.mark.parametrize(("norm", "position"), PLACEMENTS)
def test_cnn_family_trains_and_sits_where_it_should(norm, position):
    net = CNN([1, 8, 8], 10, channels=[4, 8], head_width=16, norm=norm, norm_position=position)
    assert train_step(net, torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert layer_kinds(net.conv1)[:-1] == expected_kinds("conv", norm, position)  # the last one is the pool
    assert layer_kinds(net.fc) == expected_kinds("fc", norm, position)
    if norm in SPATIAL_TYPES:
        assert type(getattr(net.conv1, NAMES[norm])) is SPATIAL_TYPES[norm]
        assert type(getattr(net.fc, NAMES[norm])) is FLAT_TYPES[norm]
    assert parametrize.is_parametrized(net.conv2.conv, "weight") == (norm == "weight")


@pytest.mark.parametrize(("norm", "position"), PLACEMENTS)
def test_resnet_family_trains_and_sits_where_it_should(norm, position):
    net = ResNet([1, 8, 8], 10, widths=[4, 8], blocks_per_stage=2, norm=norm, norm_position=position)
    assert train_step(net, torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert layer_kinds(net.stem) == expected_kinds("conv", norm, position)
    first, second = net.stage2.block1, net.stage2.block2
    assert isinstance(second.shortcut, nn.Identity)  # same shape: identity shortcut
    assert first.shortcut.conv.stride == (2, 2)  # halves the resolution, so it projects
    has_layer = norm not in ("none", "weight")
    assert layer_kinds(first.block2) == (["conv", NAMES[norm]] if has_layer else ["conv"])
    assert layer_kinds(first.shortcut) == (["conv", NAMES[norm]] if has_layer else ["conv"])
    assert parametrize.is_parametrized(first.shortcut.conv, "weight") == (norm == "weight")


def test_resnet_adds_the_shortcut():
    net = ResNet([1, 8, 8], 3, widths=[4], norm="none")
    block = net.stage1.block1
    x = torch.randn(2, 4, 8, 8)
    assert torch.allclose(block(x), torch.relu(block.block2(block.block1(x)) + x))


@pytest.mark.parametrize("net", [MLP, CNN, ResNet])
def test_weight_norm_cannot_go_after_the_nonlinearity(net):
    with pytest.raises(ValueError, match="model.norm=weight .* use model.norm_position=pre"):
        net([1, 8, 8], 10, norm="weight", norm_position="post")


def test_group_count_must_divide_every_width():
    with pytest.raises(ValueError, match=r"model.gn.groups=3 does not divide a layer of 20 features"):
        MLP([4], 3, depth=1, width=20, norm="group", gn={"groups": 3})


def test_unknown_norm_options_are_refused():
    with pytest.raises(TypeError, match="unknown normalization options"):
        MLP([4], 3, norm="batch", batchnorm={"eps": 1.0})


@pytest.mark.parametrize("norm", FAMILIES[1:])
def test_baseline_and_normalized_differ_only_in_normalization(norm):
    base = MLP([64], 10, activation="sigmoid")
    other = MLP([64], 10, activation="sigmoid", norm=norm, norm_position="pre")
    norm_types = tuple(set(FLAT_TYPES.values()))

    def strip(net):  # a weight-normalized Linear is a subclass of Linear made by the parametrization
        kind = lambda m: type(m).__bases__[0] if parametrize.is_parametrized(m) else type(m)  # noqa: E731
        return [(n, kind(m)) for n, m in net.named_modules() if not isinstance(m, norm_types) and "parametriz" not in n]

    assert strip(base) == strip(other)


def test_keras_tutorial_network_per_layer_widths_and_bn():
    net = MLP([2], 2, hidden=[16, 32], activation="relu", norm="batch", norm_position="post", norm_layers=[2])
    assert [net.layer1.fc.out_features, net.layer2.fc.out_features] == [16, 32]
    assert layer_kinds(net.layer1) == ["fc", "act"]
    assert layer_kinds(net.layer2) == ["fc", "act", "bn"]
    assert isinstance(net.layer2.act, nn.ReLU)


def test_norm_layers_selects_layers_for_every_family():
    net = MLP([4], 3, depth=3, width=8, norm="layer", norm_layers=[1, 3])
    assert [layer_kinds(getattr(net, f"layer{i}")) for i in (1, 2, 3)] == [
        ["fc", "ln", "act"],
        ["fc", "act"],
        ["fc", "ln", "act"],
    ]
    net = MLP([4], 3, depth=2, width=8, norm="weight", norm_layers=[2])
    assert not parametrize.is_parametrized(net.layer1.fc) and parametrize.is_parametrized(net.layer2.fc)


def test_bn_options_reach_the_layers():
    net = MLP(
        [4], 3, depth=1, width=6, norm="batch", bn={"eps": 1e-3, "momentum": None, "gamma_init": 0.5, "beta_init": 0.2}
    )
    bn = net.layer1.bn
    assert bn.eps == 1e-3 and bn.momentum is None  # None: cumulative average (population statistics)
    assert torch.all(bn.weight == 0.5) and torch.all(bn.bias == 0.2)
    net = MLP([4], 3, depth=1, width=6, norm="batch", bn={"affine": False})
    assert net.layer1.bn.weight is None


def test_each_family_reads_its_own_options():
    opts = {"gn": {"groups": 2, "eps": 1e-3, "gamma_init": 0.5}, "ln": {"eps": 1e-2, "beta_init": 0.3}}
    gn = MLP([4], 3, depth=1, width=6, norm="group", **opts).layer1.gn
    assert (gn.num_groups, gn.eps) == (2, 1e-3) and torch.all(gn.weight == 0.5)
    ln = MLP([4], 3, depth=1, width=6, norm="layer", **opts).layer1.ln
    assert ln.eps == 1e-2 and torch.all(ln.bias == 0.3)
    brn = MLP([4], 3, depth=1, width=6, norm="batch_renorm", renorm={"r_max": 2.0, "warmup_steps": 0}).layer1.brn
    assert (brn.r_max, brn.d_max, brn.warmup_steps) == (2.0, 5.0, 0)
    rms = CNN([1, 8, 8], 3, channels=[4], norm="rms", rms={"gamma_init": 2.0}).conv1.rms
    assert torch.all(rms.weight == 2.0)
    wn = MLP([4], 3, depth=1, width=6, norm="weight", wn={"dim": 1}).layer1.fc
    assert wn.parametrizations.weight.original0.shape == (1, 4)  # g: one norm per input column


def test_normal_init_uses_the_requested_std():
    torch.manual_seed(0)
    net = MLP([784], 10, depth=2, width=500, init="normal", init_std=0.5)
    w = net.layer1.fc.weight
    assert abs(w.std().item() - 0.5) < 0.01 and abs(w.mean().item()) < 0.01
    assert torch.all(net.layer1.fc.bias == 0)


def test_init_reaches_weight_normalized_layers_through_the_parametrization():
    torch.manual_seed(0)
    fc = MLP([784], 10, depth=1, width=500, norm="weight", init="normal", init_std=0.5).layer1.fc
    assert abs(fc.weight.std().item() - 0.5) < 0.01
    g = fc.parametrizations.weight.original0
    assert torch.allclose(g.squeeze(1), fc.weight.norm(dim=1))  # g starts at the new rows' norms


def test_cnn_rejects_flat_inputs():
    with pytest.raises(ValueError, match="input_shape"):
        CNN([64], 10)
