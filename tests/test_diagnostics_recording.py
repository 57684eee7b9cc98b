"""Which modules the diagnostics watch, and what the recording measures, without a Trainer."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from normlab.diagnostics.activation_math import role_scalars
from normlab.diagnostics.recording import ActivationRecorder, Sampler, mean_and_var
from normlab.diagnostics.sample_statistics import gather_ranks
from normlab.diagnostics.selection import select_modules
from normlab.models import MLP


class Projection(nn.Module):
    """A weight-owning layer of a class no list names (as Hugging Face's ``Conv1D``)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, n) * 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


class NewGELUActivation(nn.Module):  # Hugging Face's GELU has a class of its own
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(x, approximate="tanh")


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.block = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.proj = Projection(8)
        self.act = NewGELUActivation()
        self.rms = nn.RMSNorm(8)
        self.drop = nn.Dropout(0.0)
        self.head = weight_norm(nn.Linear(8, 20))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.rms(self.act(self.proj(self.block(self.emb(x)))))))


def test_default_selection_is_by_role_whatever_the_class() -> None:
    selection = select_modules(TinyLM())
    roles = {w.name: w.role for w in selection.watched}
    assert roles["emb"] == roles["proj"] == roles["head"] == "weight"  # weight owners, any class
    assert roles["block"] == roles["block.self_attn"] == "block"  # attention and transformer blocks
    assert roles["block.norm1"] == roles["rms"] == "norm" and roles["act"] == "activation"
    assert roles["block.linear1"] == roles["block.self_attn.out_proj"] == "weight"
    assert not {"drop", "block.dropout1", "head.parametrizations.weight"} & roles.keys()  # no computation of their own
    assert "watching" in selection.describe() and selection.unwatched_owners == 0


def test_types_patterns_and_a_limit_narrow_the_selection() -> None:
    net = nn.Sequential()
    net.add_module("body", MLP([8], 3, depth=2, width=4, norm="batch"))
    picked = select_modules(net, ["Sigmoid", "Linear"], include=["layer*"], exclude=["*2.fc"])
    assert [(w.name, w.kind) for w in picked.watched] == [
        ("layer1.fc", "Linear"),
        ("layer1.act", "Sigmoid"),
        ("layer2.act", "Sigmoid"),
    ]
    assert picked.left_out["by include/exclude"] == ["layer2.fc", "head"] and picked.unwatched_owners == 2
    everything = [w.name for w in select_modules(net).watched]
    assert everything == ["layer1.fc", "layer1.bn", "layer1.act", "layer2.fc", "layer2.bn", "layer2.act", "head"]
    limited = select_modules(net, max_modules=3)
    assert [w.name for w in limited.watched] == ["layer1.fc", "layer2.fc", "head"]  # spread, ends kept
    assert "4 over the limit (max_modules=0 watches all)" in limited.describe()


def test_modules_under_data_parallel_are_not_watched() -> None:
    net = nn.Sequential(nn.Linear(4, 3), nn.DataParallel(nn.Sequential(nn.Linear(3, 3), nn.ReLU())), nn.Linear(3, 2))
    selection = select_modules(net)
    assert [w.name for w in selection.watched] == ["0", "2"]
    assert selection.left_out["under nn.DataParallel"] == ["1.module.0", "1.module.1"]


def record(net: nn.Module, x: torch.Tensor, recorder: ActivationRecorder) -> torch.Tensor:
    recorder.attach()
    with torch.no_grad():
        out = net(x)
    recorder.detach()
    return out


@pytest.mark.parametrize("momentum", [0.1, 0.01, None, 0.0], ids=["momentum-0.1", "keras-0.99", "cumulative", "frozen"])
def test_measurements_are_what_leaves_each_module_even_before_an_inplace_relu(momentum: float | None) -> None:
    """The batch norm's batch statistics come from its running statistics before and after."""
    bn = nn.BatchNorm2d(4, momentum=momentum)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), bn, nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(64, 5))
    x = torch.randn(8, 3, 6, 6)
    with torch.no_grad():  # running statistics away from their start, as after some training
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0), bn.num_batches_tracked.fill_(3)
    seen, before = {}, (bn.running_mean.clone(), bn.running_var.clone())

    def keep(k: int):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            seen.setdefault(k, (inputs[0].clone(), output.clone()))

        return hook

    hooks = [m.register_forward_hook(keep(k)) for k, m in enumerate(net)]
    with torch.no_grad():
        expected = net(x)
    for hook in hooks:
        hook.remove()
    bn.running_mean.copy_(before[0]), bn.running_var.copy_(before[1]), bn.num_batches_tracked.fill_(3)
    recorder = ActivationRecorder(select_modules(net).watched, sample_size=10_000)
    torch.testing.assert_close(record(net, x, recorder), expected)
    assert not any("forward" in m.__dict__ for m in net.modules())  # the modules are as they were
    measured = {recorder.watched[i].name: m for i, m in recorder.measured.items()}
    assert list(measured) == ["0", "1", "2", "4"]  # in the order they ran
    bn_in, bn_out = seen[1]
    torch.testing.assert_close(measured["1"].sample, bn_out.flatten())  # not the ReLU's output
    assert (measured["1"].sample < 0).any()
    raw = {k: v.double().numpy() for k, v in measured["1"].extras.items()}
    per_channel = {} if momentum == 0 else {"per_channel": 8 * 4 * 4}  # frozen: the input's moments
    assert measured["1"].constants == {"eps": bn.eps, "momentum": momentum, **per_channel}
    scalars = role_scalars(raw, **measured["1"].constants)
    assert scalars["input_mean"] == pytest.approx(bn_in.mean().item(), abs=1e-6)
    assert scalars["input_std"] == pytest.approx(bn_in.std(correction=0).item(), rel=1e-5)
    batch_mean, batch_var = bn_in.mean((0, 2, 3)), bn_in.var((0, 2, 3), correction=0)
    drift = ((batch_mean - before[0]).abs() / (before[1] + 1e-5).sqrt()).mean()
    assert scalars["batch_mean_drift"] == pytest.approx(drift.item(), rel=1e-5)
    var_drift = ((batch_var + 1e-5) / (before[1] + 1e-5) - 1).abs().mean()
    assert scalars["batch_var_drift"] == pytest.approx(var_drift.item(), rel=1e-5)
    assert scalars["gamma_mean"] == pytest.approx(net[1].weight.mean().item())
    relu = seen[2][1].reshape(8, -1)
    dead = role_scalars({k: v.float().numpy() for k, v in measured["2"].extras.items()})["dead"]
    assert dead == pytest.approx((relu <= 0).all(0).float().mean().item())
    assert all(m.total is None for m in measured.values())  # whole outputs: their sample tells


def test_an_output_larger_than_the_sample_is_summed_whole_for_nonfinite_values() -> None:
    net = nn.Sequential(nn.Linear(4, 300))
    recorder = ActivationRecorder(select_modules(net).watched, sample_size=100)
    x = torch.randn(10, 4)
    x[3, 0] = float("inf")
    record(net, x, recorder)
    assert recorder.measured[0].sample.numel() == 100 and recorder.measured[0].numel == 3000
    assert not torch.isfinite(recorder.measured[0].total)
    x[3, 0] = 1.0
    record(net, x, recorder)
    assert recorder.measured[0].total.item() == pytest.approx(net(x).double().sum().item(), rel=1e-5)


def test_a_large_output_is_sampled_at_the_same_positions_every_time() -> None:
    sampler = Sampler(size=100)
    x = torch.arange(1000.0)
    first, second = sampler(x), sampler(x + 1)
    assert first.numel() == 100 and torch.equal(second, first + 1) and len(set(first.tolist())) == 100
    small = torch.ones(50)
    taken = sampler(small)
    small.zero_()  # changed in place after the measurement
    assert taken.sum().item() == 50


def test_recorder_runs_the_forward_of_the_class_a_module_has_when_attached() -> None:
    class Doubled(nn.Linear):  # as a wrapper that swaps a module's class after setup would
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    linear = nn.Linear(3, 2)
    recorder = ActivationRecorder(select_modules(nn.Sequential(linear)).watched, 100)
    linear.__class__ = Doubled
    x = torch.randn(4, 3)
    out = record(linear, x, recorder)
    torch.testing.assert_close(out, 2 * nn.functional.linear(x, linear.weight, linear.bias))
    torch.testing.assert_close(recorder.measured[0].sample, out.flatten())


def test_two_recorders_on_one_model_detach_in_any_order_and_keep_a_forward_set_before() -> None:
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    calls = []

    def traced(x: torch.Tensor) -> torch.Tensor:  # a forward another tool set on the instance
        calls.append(x.shape)
        return nn.Linear.forward(net[0], x)

    net[0].forward = traced
    x = torch.randn(5, 4)
    with torch.no_grad():
        expected = net(x)
    first = ActivationRecorder(select_modules(net).watched, 100)
    second = ActivationRecorder(select_modules(net, ["Linear"]).watched, 100)
    for order in ((first, second), (second, first)):
        first.attach()
        second.attach()
        with torch.no_grad():
            torch.testing.assert_close(net(x), expected)
        for recorder in order:
            recorder.detach()
        assert net[0].__dict__["forward"] is traced
        assert "forward" not in net[1].__dict__ and "forward" not in net[2].__dict__
        torch.testing.assert_close(first.measured[2].sample, second.measured[1].sample)
        assert len(first.measured) == 3 and len(second.measured) == 2
    assert len(calls) == 3  # once per forward pass, under both recorders


def test_a_norm_layers_input_moments_hold_far_from_zero() -> None:
    """Summed around the running mean in float64: a large mean does not swamp a small spread."""
    x = 1000.0 + 0.01 * torch.randn(64, 3, 5, 5)
    around = torch.full((1, 3, 1, 1), 999.0)
    mean, var = mean_and_var(x, [0, 2, 3], around)
    exact = x.double()
    torch.testing.assert_close(mean.double(), exact.mean((0, 2, 3)), rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(var.double(), exact.var((0, 2, 3), correction=0), rtol=1e-3, atol=1e-9)


def test_the_ranks_samples_are_gathered_side_by_side_with_their_padding_marked() -> None:
    class TwoRanks:  # what Strategy.all_gather returns for two ranks that hold the same tensor
        def all_gather(self, t: torch.Tensor) -> torch.Tensor:
            return torch.stack([t, t])

    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]])
    weights = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    gathered, marked = gather_ranks(TwoRanks(), x, weights, width=4)
    assert gathered.tolist() == [[1, 2, 3, 0, 1, 2, 3, 0], [4, 5, 0, 0, 4, 5, 0, 0]]
    assert marked.sum(1).tolist() == [6, 4]
