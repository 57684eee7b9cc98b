"""The diagnostics' statistics against numpy on known tensors, without a Trainer."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
from tensorboard.summary.writer import record_writer
from torch import nn

from normlab.diagnostics import stats
from normlab.diagnostics.activations import FINE, ActivationLayout
from normlab.diagnostics.callback import _activation_rows, _Step
from normlab.diagnostics.divergence import locate_gradient, locate_loss
from normlab.diagnostics.output import Histogram, Outputs, masked_crc32c, use_fast_checksums
from normlab.diagnostics.parameters import ParameterLayout
from normlab.diagnostics.stats import Bins, Chunks, SegmentedHistogram
from normlab.diagnostics.summary import RunSummary, merge_json
from normlab.diagnostics.watch import (
    DEFAULT_TYPES,
    ActivationRecorder,
    Layer,
    display_names,
    parameter_layers,
    select_modules,
)
from normlab.models import MLP

RNG = np.random.default_rng(0)


def centred_values(bins: Bins, counts: np.ndarray) -> np.ndarray:
    """``counts[i]`` values inside bin i, away from its edges: their histogram is known exactly."""
    centres = bins.edges()[:-1] + bins.width / 2
    jitter = RNG.uniform(-0.4, 0.4, counts.sum()) * bins.width
    return (np.repeat(centres, counts) + jitter).astype(np.float32)


# ----------------------------------------------------------------------------- histograms
def laid_out(chunks: Chunks, *steps: list[np.ndarray]) -> torch.Tensor:
    """Each step's tensors in one padded row, as an ``ActivationLayout`` lays them out."""
    rows = torch.full((len(steps), chunks.total), 7.0)  # the padding must come out as zeros
    torch._foreach_zero_(chunks.padding(rows))
    for row, tensors in zip(rows, steps, strict=True):
        torch._foreach_copy_(chunks.places(row, [t.shape for t in tensors]), [torch.from_numpy(t) for t in tensors])
    return rows


def test_chunks_pad_each_tensor_to_whole_chunks_and_add_them_up() -> None:
    chunks = Chunks([5, 8, 0, 1], size=4)
    assert chunks.counts.tolist() == [2, 2, 1, 1] and chunks.starts == [0, 8, 16, 20] and chunks.total == 24
    row = laid_out(
        chunks, [np.arange(1, 6, dtype=np.float32), np.ones(8, np.float32), np.zeros(0, np.float32), np.float32([9])]
    )
    assert row[0].tolist() == [1, 2, 3, 4, 5, 0, 0, 0] + [1] * 8 + [0] * 4 + [9, 0, 0, 0]
    sums, squares = stats.chunk_moments(row, size=4).numpy().reshape(2, -1)
    np.testing.assert_allclose(chunks.per_tensor(sums), [15, 8, 0, 9])
    np.testing.assert_allclose(chunks.per_tensor(squares), [55, 8, 0, 81])


@pytest.mark.parametrize("path", ["finite", "exact"])
def test_segmented_histogram_counts_are_exact(path: str) -> None:
    bins = [Bins(-2, 2, 8), Bins(0, 1, 8), Bins(-2, 2, 8), Bins(-1, 1, 8)]
    sizes = [RNG.integers(0, 20, 8).sum() for _ in bins]
    steps = [
        [centred_values(b, RNG.multinomial(n, np.ones(8) / 8)) for b, n in zip(bins, sizes, strict=True)]
        for _ in range(2)
    ]
    chunks = Chunks([len(v) for v in steps[0]], size=16)  # padding in every segment but by chance
    hist = SegmentedHistogram(chunks, bins, torch.device("cpu"))
    counts = getattr(hist, path)(laid_out(chunks, *steps)).view(2, len(bins), -1).numpy()
    np.testing.assert_array_equal(counts[1], getattr(hist, path)(laid_out(chunks, steps[1])).view(len(bins), -1))
    for step, values in enumerate(steps):
        for s, (b, v) in enumerate(zip(bins, values, strict=True)):
            assert counts[step, s, 0] == 0
            np.testing.assert_array_equal(counts[step, s, 1:], np.histogram(v, b.edges())[0])


def test_histogram_puts_outliers_in_the_edge_bins_and_nonfinite_apart() -> None:
    values = np.float32([-5.0, 0.1, 9.0, np.nan, np.inf, -np.inf])
    chunks = Chunks([6], size=4)
    exact = SegmentedHistogram(chunks, [Bins(-1, 1, 4)], torch.device("cpu")).exact(laid_out(chunks, [values]))
    assert exact.tolist() == [[3, 1, 0, 1, 1]]
    chunks = Chunks([3], size=4)
    finite = SegmentedHistogram(chunks, [Bins(-1, 1, 4)], torch.device("cpu")).finite(laid_out(chunks, [values[:3]]))
    assert finite.tolist() == [[0, 1, 0, 1, 1]]


def test_percentiles_lie_within_one_bin_of_numpy() -> None:
    bins = Bins(-8, 8, 80 * FINE)
    rows = [RNG.normal(0, 1, 6000), RNG.normal(2, 0.3, 6000), RNG.uniform(-3, 5, 3000)]
    cdf = np.stack([np.cumsum(np.histogram(np.clip(r, -8, 8), bins.edges())[0]) for r in rows]).astype(float)
    q = np.array([0.15, 0.5, 0.85])
    got = stats.percentiles(cdf, np.full(3, bins.low), np.full(3, bins.width), q)
    for row, values in zip(got, rows, strict=True):
        np.testing.assert_allclose(row, np.percentile(values, 100 * q), atol=bins.width)
    empty = stats.percentiles(np.zeros((1, 4)), np.zeros(1), np.ones(1), q)
    assert np.isnan(empty).all()


def test_coarsened_counts_equal_a_histogram_on_the_coarse_edges() -> None:
    fine, coarse = Bins(-2, 2, 40), Bins(-2, 2, 10)
    values = RNG.normal(0, 0.7, 5000).clip(-1.99, 1.99)
    cdf = np.cumsum(np.histogram(values, fine.edges())[0])[None, :].astype(float)
    np.testing.assert_array_equal(stats.coarsen(cdf, 4)[0], np.histogram(values, coarse.edges())[0])


def test_moments_give_numpy_mean_and_std() -> None:
    parts = [RNG.normal(0.5, 2, 600), RNG.normal(-1, 0.1, 600), RNG.uniform(0, 1, 50)]
    chunks = Chunks([len(p) for p in parts], size=64)
    rows = laid_out(chunks, [p.astype(np.float32) for p in parts], [2 * p.astype(np.float32) for p in parts])
    moments = chunks.per_tensor(stats.chunk_moments(rows, size=64).double().numpy().reshape(2, 2, -1))
    n = np.array([len(p) for p in parts], dtype=float)
    for step, scale in enumerate([1, 2]):
        mean, std = stats.mean_std(n, moments[step, 0], moments[step, 1])
        np.testing.assert_allclose(mean, [scale * p.mean() for p in parts], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(std, [scale * p.std() for p in parts], rtol=1e-4)


def test_exact_moments_leave_nonfinite_values_out() -> None:
    row = torch.tensor([[1.0, 2.0, float("nan"), 3.0, float("inf"), 5.0]])
    np.testing.assert_allclose(stats.chunk_moments(row, size=3, exact=True).numpy(), [[3.0, 8.0, 5.0, 34.0]])
    assert not np.isfinite(stats.chunk_moments(row, size=3).numpy()[0, [0, 2]]).any()


def test_saturation_counts_the_values_near_the_bounds() -> None:
    fine = Bins(0, 1, 80 * FINE)
    low, high = stats.saturation_cut(fine, (0.0, 1.0), 0.95)
    values = RNG.uniform(0, 1, 10_000)
    cdf = np.cumsum(np.histogram(values, fine.edges())[0])[None, :].astype(float)
    expected = np.mean(np.abs(values - 0.5) / 0.5 > 0.95)
    assert stats.saturated_fraction(cdf, low, high)[0] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("momentum", [0.0, 0.1, 0.9])
def test_batchnorm_drift_against_numpy(momentum: float) -> None:
    x = RNG.normal(0.3, 2.0, (64, 5))
    running_mean, running_var, eps = RNG.normal(0, 1, 5), RNG.uniform(0.5, 3, 5), 1e-5
    # as the batch left them: PyTorch's update, with the unbiased batch variance
    after_mean = (1 - momentum) * running_mean + momentum * x.mean(0)
    after_var = (1 - momentum) * running_var + momentum * x.var(0, ddof=1)
    sums, squares = (m[0].numpy() for m in stats.channel_moments(torch.from_numpy(x)[None]))
    mean_drift, var_drift = stats.batchnorm_drift(sums, squares, 64.0, after_mean, after_var, np.full(5, momentum), eps)
    expected_mean = np.abs(x.mean(0) - running_mean) / np.sqrt(running_var + eps)
    np.testing.assert_allclose(mean_drift, expected_mean, rtol=1e-5, atol=1e-6)  # float32 sums on the device
    np.testing.assert_allclose(var_drift, np.abs((x.var(0) + eps) / (running_var + eps) - 1), rtol=1e-5, atol=1e-6)


def test_dead_units_are_those_never_positive() -> None:
    out = torch.relu(torch.randn(32, 6, 4, 4))
    out[:, 2] = 0
    out[:, 5] = 0
    maxima = stats.unit_maxima(torch.stack([out, out.roll(1, dims=1)])).numpy()
    assert maxima.shape == (2, 6)
    assert stats.group_means((maxima <= 0).astype(float), np.array([6]))[:, 0].tolist() == pytest.approx([2 / 6] * 2)
    assert (maxima[0] <= 0).nonzero()[0].tolist() == [2, 5]
    assert (maxima[1] <= 0).nonzero()[0].tolist() == [0, 3]


# ----------------------------------------------------------------------------- layouts
def recorded_mlp(activation: str = "sigmoid") -> tuple[MLP, ActivationRecorder, list[torch.Tensor]]:
    net = MLP([8], 3, depth=2, width=16, activation=activation, norm="batch")
    recorder = ActivationRecorder(select_modules(net, DEFAULT_TYPES))
    recorder.attach()
    with torch.no_grad():
        net(torch.randn(32, 8) * 3)
    recorder.detach()
    return net, recorder, [recorder.outputs[i] for i in sorted(recorder.outputs)]


def layout_of(recorder: ActivationRecorder, outputs: list[torch.Tensor]) -> ActivationLayout:
    indices = sorted(recorder.outputs)
    offsets = recorder.state_offsets()
    segments = {s: offsets[i] for s, i in enumerate(indices) if i in offsets}
    watched = [recorder.watched[i] for i in indices]
    sources = ActivationLayout.sources(outputs, bn_inputs_of(recorder))
    state = recorder.bn_state()
    return ActivationLayout(watched, outputs, sources, state, segments, Bins(-8, 8, 80), [15, 50, 85], 0.95)


def bn_inputs_of(recorder: ActivationRecorder) -> list[torch.Tensor]:
    return [recorder.bn_inputs[i] for i in sorted(recorder.bn_inputs)]


def test_recorder_runs_the_forward_of_the_class_a_module_has_when_attached() -> None:
    class Doubled(nn.Linear):  # as a wrapper that swaps a module's class after setup would
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    linear = nn.Linear(3, 2)
    recorder = ActivationRecorder(select_modules(nn.Sequential(linear), ["Linear"]))
    linear.__class__ = Doubled
    x = torch.randn(4, 3)
    recorder.attach()
    with torch.no_grad():
        out = linear(x)
    recorder.detach()
    torch.testing.assert_close(out, 2 * nn.functional.linear(x, linear.weight, linear.bias))
    assert recorder.outputs[0] is out


def test_modules_under_data_parallel_are_not_watched() -> None:
    net = nn.Sequential(nn.Linear(4, 3), nn.DataParallel(nn.Sequential(nn.Linear(3, 3), nn.ReLU())), nn.Linear(3, 2))
    assert [w.name for w in select_modules(net, DEFAULT_TYPES)] == ["0", "2"]


def test_layout_fits_only_outputs_of_its_shapes_that_feed_its_batch_norms_as_before() -> None:
    net, recorder, outputs = recorded_mlp()
    layout = layout_of(recorder, outputs)
    bn_inputs = bn_inputs_of(recorder)
    assert all(s is not None for s in layout.bn_sources)
    assert layout.fits(outputs, bn_inputs)
    assert layout.fits([o.clone() if i not in layout.bn_sources else o for i, o in enumerate(outputs)], bn_inputs)
    assert not layout.fits([o[:16] for o in outputs], [x[:16] for x in bn_inputs])  # another batch size
    assert not layout.fits([o.clone() for o in outputs], bn_inputs)  # the batch norms read other tensors
    assert not layout.fits(outputs, [x.clone() for x in bn_inputs])
    assert not layout.fits(outputs[:-1], bn_inputs)
    elsewhere = [o.to("meta") for o in outputs]
    assert not layout.fits(elsewhere, [elsewhere[j] for j in layout.bn_sources])


BN_STATE = ("running_mean", "running_var", "weight", "bias")


def captured_steps(
    activation: str = "sigmoid", types: tuple[str, ...] = DEFAULT_TYPES, steps: int = 2, spoil=None, **kwargs
) -> tuple[ActivationLayout, list[dict], tuple[np.ndarray, np.ndarray]]:
    """A small BN MLP's watched outputs over ``steps`` forward passes: the layout, numpy copies of
    what each step saw, and the host's scalars and histograms of all the steps.

    Args:
        spoil: called with a step's outputs before the layout takes them.
        kwargs: for ``ActivationLayout.statistics``.
    """
    net = MLP([8], 3, depth=2, width=16, activation=activation, norm="batch")
    recorder = ActivationRecorder(select_modules(net, types))
    layout, seen, device = None, [], []
    norms = [w.module for w in recorder.watched if w.batchnorm]
    for step in range(steps):
        # running means, running variances, weights and biases of the batch norms, before this batch
        before = np.concatenate([getattr(m, key).detach().double().numpy() for key in BN_STATE for m in norms])
        recorder.attach()
        with torch.no_grad():
            net(torch.randn(32, 8) * (3 + step))
        recorder.detach()
        outputs = [recorder.outputs[i] for i in sorted(recorder.outputs)]
        if spoil is not None:
            spoil(step, outputs)
        layout = layout or layout_of(recorder, outputs)
        seen.append(
            {
                "outputs": [o.double().numpy() for o in outputs],
                "bn_inputs": [x.double().numpy() for x in bn_inputs_of(recorder)],
                "before": before,
            }
        )
        with torch.no_grad():
            if layout.full:
                device.append(layout.statistics(**kwargs))
            layout.capture(outputs, bn_inputs_of(recorder), recorder.bn_state())
        recorder.release()
    device.append(layout.statistics(**kwargs))
    host = {k: np.concatenate([d[k].double().numpy() for d in device]) for k in device[0]}
    return layout, seen, layout.values(host)


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
@pytest.mark.parametrize("types", [DEFAULT_TYPES, ("BatchNorm1d", "Sigmoid", "ReLU")], ids=["all", "no-linear"])
def test_activation_layout_matches_numpy(activation: str, types: tuple[str, ...]) -> None:
    layout, seen, (values, histograms) = captured_steps(activation, types, steps=6)
    assert layout.capacity == 4  # the rows filled up once on the way
    assert layout.bn_sources == ([0, 3] if "Linear" in types else [None, None])
    for step, saw in enumerate(seen):
        scalars = dict(zip(layout.tags, values[step], strict=True))
        for s, (w, out) in enumerate(zip(layout.watched, saw["outputs"], strict=True)):
            x = out.ravel()
            width = 16 / (80 * FINE) if not w.saturating else 1 / (80 * FINE)
            # the estimate lies in the bin of the value whose rank reaches half of them
            median = np.percentile(x, 50, method="inverted_cdf")
            np.testing.assert_allclose(scalars[f"act/{w.name}/p50"], median, atol=width * (1 + 1e-6))
            np.testing.assert_allclose(scalars[f"act/{w.name}/mean"], x.mean(), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(scalars[f"act/{w.name}/std"], x.std(), rtol=1e-4)
            assert scalars[f"act/{w.name}/nonfinite"] == 0
            edges = Bins(0, 1, 80).edges() if w.saturating else Bins(-8, 8, 80).edges()
            expected = np.histogram(np.clip(x, edges[0], edges[-1]), edges)[0]
            # float32 binning may put a value within rounding of an edge on its other side
            on_edge = np.sum(np.min(np.abs(x[:, None] - edges[None, :]), axis=1) < 1e-6)
            assert np.abs(histograms[step, s, 3:] - expected).sum() <= 2 * on_edge
            if w.saturating:
                assert scalars[f"act/{w.name}/saturated"] == pytest.approx(np.mean(np.abs(x - 0.5) > 0.475), abs=1e-9)
            if w.rectifier:
                assert scalars[f"act/{w.name}/dead"] == pytest.approx(np.mean(out.max(0) <= 0))
        # running means, running variances, weights and biases of both batch norms, as before this batch
        running_mean, running_var, gamma, beta = saw["before"].reshape(4, -1)
        for b, s in enumerate(layout.batchnorms):
            bn, name = layout.watched[s].module, layout.watched[s].name
            channels = slice(16 * b, 16 * (b + 1))
            assert scalars[f"bn/{name}/gamma_mean"] == pytest.approx(bn.weight.mean().item())
            assert scalars[f"bn/{name}/gamma_mean"] == pytest.approx(gamma[channels].mean())
            assert scalars[f"bn/{name}/beta_mean"] == pytest.approx(beta[channels].mean())
            x, mean, var = saw["bn_inputs"][b], running_mean[channels], running_var[channels]
            # against the running statistics from before this batch updated them
            expected = np.mean(np.abs(x.mean(0) - mean) / np.sqrt(var + bn.eps))
            assert scalars[f"bn/{name}/batch_mean_drift"] == pytest.approx(expected, rel=1e-4)
            expected = np.mean(np.abs((x.var(0) + bn.eps) / (var + bn.eps) - 1))
            assert scalars[f"bn/{name}/batch_var_drift"] == pytest.approx(expected, rel=1e-4)


def test_layout_reads_outputs_of_one_shape_from_its_rows_as_one_tensor() -> None:
    net, recorder, first = recorded_mlp()
    layout = layout_of(recorder, first)
    second = [o * 2 for o in first]
    with torch.no_grad():
        for outputs in (first, second):
            layout.capture(outputs, bn_inputs_of(recorder), recorder.bn_state())
    # equally spaced in a row (a view) or not (a copy)
    for segments in ([0, 3], [0, 1, 3]):
        expected = torch.stack([torch.stack([o[s] for s in segments]) for o in (first, second)])
        torch.testing.assert_close(layout._rows_of(segments)(2), expected, rtol=0, atol=0)
    with torch.no_grad():
        layout.statistics()  # bins the rows in place, padding included
    padding = layout.chunks.padding(layout._values)
    assert padding and all(bool((p == 0).all()) for p in padding)  # zeros again for the next rows


def test_nonfinite_outputs_are_counted_apart_and_left_out_of_the_moments() -> None:
    def spoil(step: int, outputs: list[torch.Tensor]) -> None:
        if step == 1:
            outputs[0][0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])

    layout, seen, (values, _) = captured_steps(spoil=spoil)
    name = layout.watched[0].name
    scalars = [dict(zip(layout.tags, row, strict=True)) for row in values]
    assert [s[f"act/{name}/nonfinite"] for s in scalars] == [0, 3]
    x = seen[1]["outputs"][0].ravel()[3:]
    assert scalars[1][f"act/{name}/mean"] == pytest.approx(x.mean(), rel=1e-4)
    assert scalars[1][f"act/{name}/std"] == pytest.approx(x.std(), rel=1e-4)


def test_histograms_summed_over_ranks_give_the_same_percentiles() -> None:
    torch.manual_seed(0)
    _, _, (one, ha) = captured_steps(steps=1)
    torch.manual_seed(0)
    _, _, (two, hb) = captured_steps(steps=1, reduce=lambda t: 2 * t)  # two ranks with the same batch
    np.testing.assert_allclose(one, two, rtol=1e-6)
    np.testing.assert_array_equal(2 * ha[..., 3:], hb[..., 3:])


@pytest.mark.parametrize("wait", [False, True], ids=["update-at-once", "update-with-next-step"])
def test_parameter_layout_norms_per_layer(wait: bool) -> None:
    net = MLP([64], 3, depth=2, width=80, norm="batch")
    layout = ParameterLayout(parameter_layers(net))
    assert [layer.name for layer in layout.layers] == ["layer1.fc", "layer1.bn", "layer2.fc", "layer2.bn", "head"]
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    steps = []
    for step in range(3):  # later steps reuse the buffers
        optimizer.zero_grad()
        net(torch.randn(32, 64)).sum().backward()
        if step:
            net.layer2.bn.bias.grad = None  # a parameter without a gradient this step
        before = [[p.detach().clone() for p in layer.params] for layer in layout.layers]
        state = layout.before_step(layout.with_grad())
        grads = [[p.grad.clone() for p in layer.params if p.grad is not None] for layer in layout.layers]
        total = math.sqrt(sum(float(p.grad.norm()) ** 2 for p in net.parameters() if p.grad is not None))
        assert layout.grad_norm(state) == pytest.approx(total, rel=1e-5)
        assert layout.finite_layers(state["present"]) == [True] * len(layout.layers)
        optimizer.step()
        after = [[p.detach().clone() for p in layer.params] for layer in layout.layers]
        layout.after_step(state, wait=wait)
        assert ("update_norms" in state) != wait  # a waiting update comes with the next step's norms
        steps.append((state, before, grads, after, total))
    layout.close()
    for state, before, grads, after, total in steps:
        host = {k: v.double().numpy()[None, :] for k, v in state.items() if isinstance(v, torch.Tensor)}
        values = dict(zip(layout.tags, layout.values(host, state["present"])[0], strict=True))
        for layer, old, grad, new in zip(layout.layers, before, grads, after, strict=True):
            weight = math.sqrt(sum(float(p.norm()) ** 2 for p in old))
            grad = math.sqrt(sum(float(g.norm()) ** 2 for g in grad))
            update = math.sqrt(sum(float((p - q).norm()) ** 2 for p, q in zip(new, old, strict=True)))
            assert values[f"weight_norm/{layer.name}"] == pytest.approx(weight, rel=1e-5)
            assert values[f"grad_norm/{layer.name}"] == pytest.approx(grad, rel=1e-5)
            assert values[f"update_ratio/{layer.name}"] == pytest.approx(update / weight, rel=1e-4)
            assert values[f"grad_nonfinite/{layer.name}"] == 0
        assert values["grad_norm/global"] == pytest.approx(total, rel=1e-5)


# ----------------------------------------------------------------------------- names, hooks
def test_module_selection_by_type_and_pattern() -> None:
    net = nn.Sequential()
    net.add_module("body", MLP([8], 3, depth=2, width=4, norm="batch"))
    names = [w.name for w in select_modules(net, DEFAULT_TYPES)]
    assert names == ["layer1.fc", "layer1.bn", "layer1.act", "layer2.fc", "layer2.bn", "layer2.act", "head"]
    picked = select_modules(net, ["Sigmoid", "Linear"], include=["layer*"], exclude=["*2.fc"])
    assert [(w.name, w.kind) for w in picked] == [
        ("layer1.fc", "Linear"),
        ("layer1.act", "Sigmoid"),
        ("layer2.act", "Sigmoid"),
    ]
    assert display_names(["net._orig_mod.a", "net._orig_mod.b"]) == ["a", "b"]
    assert display_names(["a.x", "b.y"]) == ["a.x", "b.y"]


def hooked_outputs(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[nn.Module, tuple]]:
    """The net's output, and each module's (first input, output) as forward hooks see them."""
    seen: dict[nn.Module, tuple] = {}

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        seen.setdefault(module, (args[0], output))

    handles = [m.register_forward_hook(hook) for m in net.modules()]
    with torch.no_grad():
        out = net(x)
    for handle in handles:
        handle.remove()
    return out, seen


def test_recorder_sees_what_forward_hooks_see_and_leaves_the_modules_as_they_were() -> None:
    net = MLP([8], 3, depth=2, width=16, activation="sigmoid", norm="batch").eval()
    x = torch.randn(32, 8)
    expected, seen = hooked_outputs(net, x)
    recorder = ActivationRecorder(select_modules(net, DEFAULT_TYPES))
    recorder.attach()
    assert all(w.module.__dict__["forward"] is not None for w in recorder.watched)
    with torch.no_grad():
        out = net(x)
    recorder.detach()
    torch.testing.assert_close(out, expected)
    assert sorted(recorder.outputs) == list(range(len(recorder.watched)))
    for i, w in enumerate(recorder.watched):
        torch.testing.assert_close(recorder.outputs[i], seen[w.module][1])
        if w.batchnorm:
            torch.testing.assert_close(recorder.bn_inputs[i], seen[w.module][0])
    assert not any("forward" in m.__dict__ for m in net.modules())
    assert not torch.nn.modules.module._global_forward_hooks
    assert all(not m._forward_hooks for m in net.modules())
    kept = dict(recorder.outputs)
    net(x)  # detached: nothing more is recorded
    assert recorder.outputs.keys() == kept.keys() and all(recorder.outputs[i] is kept[i] for i in kept)


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
    first = ActivationRecorder(select_modules(net, ["Linear", "ReLU"]))
    second = ActivationRecorder(select_modules(net, ["Linear"]))
    for order in ((first, second), (second, first)):
        first.attach()
        second.attach()
        with torch.no_grad():
            torch.testing.assert_close(net(x), expected)
        for recorder in order:
            recorder.detach()
        assert net[0].__dict__["forward"] is traced
        assert "forward" not in net[1].__dict__ and "forward" not in net[2].__dict__
        torch.testing.assert_close(first.outputs[0], second.outputs[0])
        torch.testing.assert_close(first.outputs[2], second.outputs[1])
        assert len(first.outputs) == 3 and len(second.outputs) == 2
    assert len(calls) == 3  # once per forward pass, under both recorders


def test_bn_state_places_running_statistics_and_affine_parameters_of_mixed_batch_norms() -> None:
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, affine=False), nn.Linear(3, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        net[3].weight.copy_(torch.tensor([2.0, 4.0]))
        net[3].bias.copy_(torch.tensor([-1.0, 0.5]))
    recorder = ActivationRecorder(select_modules(net, ["BatchNorm1d"]))
    recorder.attach()
    with torch.no_grad():
        net(torch.randn(16, 4))
    recorder.detach()
    assert recorder.snapshot is None  # a known momentum: nothing is copied before the forward pass
    state = torch.cat(recorder.bn_state()).detach().numpy()
    (mean0, var0, weight0, bias0, momentum0), (mean1, var1, weight1, bias1, momentum1) = (
        recorder.state_offsets().values()
    )
    assert weight0 is None and bias0 is None
    np.testing.assert_array_equal(state[mean1 : mean1 + 2], net[3].running_mean.numpy())  # after the batch
    np.testing.assert_array_equal(state[var0 : var0 + 3], net[1].running_var.numpy())
    np.testing.assert_array_equal(state[weight1 : weight1 + 2], [2, 4])
    np.testing.assert_array_equal(state[bias1 : bias1 + 2], [-1, 0.5])
    np.testing.assert_allclose(state[momentum0 : momentum0 + 3], 0.1)
    np.testing.assert_allclose(state[momentum1 : momentum1 + 2], 0.1)
    outputs = [recorder.outputs[i] for i in sorted(recorder.outputs)]
    layout = layout_of(recorder, outputs)
    assert layout.affine == [1]
    with torch.no_grad():
        layout.capture(outputs, bn_inputs_of(recorder), recorder.bn_state())
        device = layout.statistics()
    values, _ = layout.values({k: v.double().numpy() for k, v in device.items()})
    scalars = dict(zip(layout.tags, values[0], strict=True))
    assert scalars["bn/3/gamma_mean"] == 3 and scalars["bn/3/beta_mean"] == -0.25
    assert "bn/1/gamma_mean" not in scalars and "bn/1/batch_mean_drift" in scalars


def bn_drift(
    norm: nn.Module, x: torch.Tensor, twice: bool = False
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """A step of one batch norm on ``x`` through a recorder and a layout: its drift scalars, and
    its running mean and variance from before the step."""
    before = norm.running_mean.clone(), norm.running_var.clone()
    recorder = ActivationRecorder(select_modules(nn.Sequential(norm), ["BatchNorm1d"]))
    recorder.attach()
    with torch.no_grad():
        norm(norm(x) if twice else x)
    recorder.detach()
    outputs = [recorder.outputs[i] for i in sorted(recorder.outputs)]
    layout = layout_of(recorder, outputs)
    with torch.no_grad():
        layout.capture(outputs, bn_inputs_of(recorder), recorder.bn_state())
        device = layout.statistics()
    values, _ = layout.values({k: v.double().numpy() for k, v in device.items()})
    scalars = dict(zip(layout.tags, values[0], strict=True))
    return {k.rsplit("/", 1)[1]: v for k, v in scalars.items() if k.startswith("bn/")}, *before


def expected_drift(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, eps: float) -> tuple[float, float]:
    x, mean, var = x.double().numpy(), mean.double().numpy(), var.double().numpy()
    return (
        float(np.mean(np.abs(x.mean(0) - mean) / np.sqrt(var + eps))),
        float(np.mean(np.abs((x.var(0) + eps) / (var + eps) - 1))),
    )


@pytest.mark.parametrize(
    "momentum, training", [(0.1, True), (0.7, True), (None, True), (1.0, True), (0.1, False)], ids=str
)
def test_bn_drift_is_against_the_running_statistics_from_before_the_batch(momentum, training) -> None:
    norm = nn.BatchNorm1d(5, momentum=momentum).train(training)
    with torch.no_grad():
        norm.running_mean.copy_(torch.linspace(-1, 1, 5))
        norm.running_var.copy_(torch.linspace(0.5, 2, 5))
        norm.num_batches_tracked.fill_(3)
    x = torch.randn(40, 5) * 2 + 1
    drift, mean, var = bn_drift(norm, x)
    if training:
        assert not torch.equal(norm.running_mean, mean)  # the batch moved them
    expected = expected_drift(x, mean, var, norm.eps)
    assert drift["batch_mean_drift"] == pytest.approx(expected[0], rel=1e-5)
    assert drift["batch_var_drift"] == pytest.approx(expected[1], rel=1e-5)


def test_bn_drift_of_a_batch_norm_run_twice_is_unknown() -> None:
    drift, _, _ = bn_drift(nn.BatchNorm1d(5), torch.randn(40, 5), twice=True)
    assert np.isnan(drift["batch_mean_drift"]) and np.isnan(drift["batch_var_drift"])
    assert drift["gamma_mean"] == 1


def test_running_statistics_are_copied_before_the_batch_only_where_the_momentum_is_unknown() -> None:
    recorder = ActivationRecorder(select_modules(nn.Sequential(nn.SyncBatchNorm(3)), DEFAULT_TYPES))
    recorder.attach()  # a synchronised batch norm moves them by the statistics of all ranks
    recorder.detach()
    assert recorder.snapshot is not None
    norm = nn.BatchNorm1d(3)
    drift, _, _ = bn_drift(norm, torch.randn(8, 3))
    assert not np.isnan(drift["batch_mean_drift"])
    recorder = ActivationRecorder(select_modules(nn.Sequential(norm), DEFAULT_TYPES))
    recorder.attach()
    assert recorder.snapshot is None
    norm.momentum = None  # changed under way: that step's drift is lost, then they are copied
    with torch.no_grad():
        norm(torch.randn(8, 3))
    recorder.detach()
    assert recorder.bn_state()[-1].isnan().all()  # the momenta
    recorder.attach()
    assert recorder.snapshot is not None
    recorder.detach()


def test_bn_state_momenta_follow_the_batch_norms_to_another_device() -> None:
    norm = nn.BatchNorm1d(3)
    recorder = ActivationRecorder(select_modules(nn.Sequential(norm), DEFAULT_TYPES))
    assert recorder.bn_state()[-1].device.type == "cpu"
    norm.to("meta")
    assert all(t.device.type == "meta" for t in recorder.bn_state())


# ----------------------------------------------------------------------------- divergence
def test_locate_loss_follows_the_evidence_in_causal_order() -> None:
    good = Layer("a", [nn.Parameter(torch.ones(2))])
    bad = Layer("b", [nn.Parameter(torch.tensor([1.0, float("nan")]))])
    worse = Layer("c", [nn.Parameter(torch.tensor([float("inf")]))])
    assert locate_loss(False, [], [good]) == ("input", "input", 0)
    assert locate_loss(True, [("m1", True), ("m2", False)], [bad]) == ("m2", "activation", 0)
    assert locate_loss(True, [], [good, bad, worse]) == ("c", "update", 1)
    assert locate_loss(True, [("m1", True)], [good]) == ("loss", "loss", 0)
    assert locate_gradient([good, bad, worse], [False, False, True]) == "b"


# ----------------------------------------------------------------------------- output
def test_histogram_proto_is_what_add_histogram_raw_writes() -> None:
    edges, counts = np.linspace(-1, 1, 5), np.array([1.0, 0, 2, 3])
    proto = Histogram(edges, counts, 6, 1.5, 4.0).proto()
    assert (proto.min, proto.max, proto.num, proto.sum, proto.sum_squares) == (-1, 1, 6, 1.5, 4.0)
    assert list(proto.bucket_limit) == list(edges[1:]) and list(proto.bucket) == list(counts)


def test_fast_checksums_equal_tensorboards_own() -> None:
    assert use_fast_checksums()
    for size in (0, 1, 7, 8, 1000, 40_000):
        data = RNG.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert masked_crc32c(data) == pywrap_tensorflow.masked_crc32c(data)


@pytest.mark.parametrize("fast", [True, False], ids=["google-crc32c", "tensorboard-checksums"])
def test_written_steps_read_back_with_either_checksums(tmp_path, monkeypatch, fast: bool) -> None:
    use_fast_checksums()
    if not fast:
        monkeypatch.setattr(record_writer, "masked_crc32c", pywrap_tensorflow.masked_crc32c)
    logger = TensorBoardLogger(tmp_path, name="", version="")
    outputs = Outputs(SimpleNamespace(loggers=[logger]))
    steps = [0, 127, 128, 20_000]
    for step in steps:
        hist = Histogram(np.linspace(0, 1, 5), np.array([1.0, 1, 2, 0]), 4, 2.0, 1.5)
        outputs.write(step, {"a": float(step), "b": 2.0 * step}, {"h": hist})
    outputs.flush()
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("b")] == [(s, 2.0 * s) for s in steps]
    assert [list(e.histogram_value.bucket) for e in events.Histograms("h")] == [[1, 1, 2, 0]] * 4


def test_a_logger_without_histograms_gets_the_scalars_and_one_warning(tmp_path) -> None:
    logger = CSVLogger(tmp_path, name="", version="")
    outputs = Outputs(SimpleNamespace(loggers=[logger]))
    hist = Histogram(np.linspace(0, 1, 3), np.array([1.0, 1]), 2, 1.0, 0.5)
    with pytest.warns(UserWarning, match="CSVLogger shows no histograms") as caught:
        outputs.write(0, {"a": 1.0}, {"h": hist})
        outputs.write(1, {"a": 2.0}, {"h": hist})
    assert len(caught) == 1
    logger.save()
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["a,step", "1.0,0", "2.0,1"]


def test_activation_rows_join_the_statistics_of_a_few_steps_and_pick_the_records_rows() -> None:
    first = {"moments": torch.arange(8.0).view(4, 2), "cumulative": torch.arange(4.0).view(4, 1)}
    second = {"moments": torch.arange(8.0, 12.0).view(2, 2), "cumulative": torch.arange(4.0, 6.0).view(2, 1)}
    # a write that begins halfway through the first statistics, and one that takes every row
    split = [_Step(step, activations=(first, row)) for step, row in ((2, 2), (3, 3))] + [
        _Step(4, activations=(second, 0))
    ]
    rows = _activation_rows(split)
    assert rows["cumulative"].view(-1).tolist() == [2, 3, 4] and rows["moments"][:, 0].tolist() == [4, 6, 8]
    whole = _activation_rows([_Step(row, activations=(first, row)) for row in range(4)])
    assert whole["moments"] is first["moments"]


def test_merge_json_keeps_other_keys(tmp_path) -> None:
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"landscape": {"sharpness": 3.0}, "status": "failed"}))
    summary = RunSummary(target_acc=0.9)
    summary.observe_grad_norm(2.0)
    summary.observe_grad_norm(float("nan"))
    summary.observe_validation(0.5, 10)
    summary.observe_validation(0.95, 20)
    summary.mark_diverged(25, "layer2.fc", "update")
    merge_json(path, summary.as_dict())
    data = json.loads(path.read_text())
    assert data["landscape"] == {"sharpness": 3.0}
    assert data["status"] == "diverged" and data["divergence_step"] == 25 and data["divergence_layer"] == "layer2.fc"
    assert (data["max_grad_norm"], data["final_grad_norm"], data["steps_to_target"]) == (2.0, None, 20)
    assert (data["best_val_acc"], data["final_val_acc"]) == (0.95, 0.95)
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary file left behind


def test_tied_parameters_are_counted_once_in_their_first_module() -> None:
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight  # the output layer shares the embedding
    with pytest.warns(UserWarning, match=r"tied parameters are counted once.*1.weight is 0.weight"):
        layers = parameter_layers(model)
    assert [layer.name for layer in layers] == ["0"] and layers[0].params == [model[0].weight]
