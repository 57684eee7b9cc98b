"""The diagnostics' pure functions against numpy on known tensors, and their outputs, without a Trainer."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
from tensorboard.summary.writer import record_writer
from torch import nn

from normlab.diagnostics import activation_math as am
from normlab.diagnostics.activation_math import finite_values
from normlab.diagnostics.cadence import Cadence
from normlab.diagnostics.divergence import Evidence, first_nonfinite, locate_gradient, locate_loss
from normlab.diagnostics.output import Histogram, Outputs, masked_crc32c, use_fast_checksums
from normlab.diagnostics.parameters import layer_values, membership, parameter_layers, tensor_norms
from normlab.diagnostics.sample_statistics import summarize
from normlab.diagnostics.summary import RunSummary, merge_json

RNG = np.random.default_rng(0)


def samples() -> list[np.ndarray]:
    """Rows of different lengths and scales: tiny embeddings, a unit Gaussian, a ReLU-like one, and
    one with NaN and inf among its values."""
    tiny = RNG.normal(0.001, 0.007, 8000)
    unit = RNG.normal(0.0, 1.0, 20000)
    relu = np.maximum(RNG.normal(0.2, 1.0, 1000), 0)
    broken = RNG.normal(3.0, 2.0, 400)
    broken[[3, 50, 77]] = [np.nan, np.inf, -np.inf]
    return [tiny, unit, relu, broken]


def host(parts: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {key: value.double().numpy() for key, value in parts.items()}


def matrix(rows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The rows' finite values, zero-padded as the callbacks stack them, and their padding weights."""
    finite = [torch.tensor(r[np.isfinite(r)], dtype=torch.float32) for r in rows]
    return am.stack_samples(finite), am.padding_weights([len(f) for f in finite], torch.device("cpu"))


def test_moments_and_exact_percentiles_equal_numpy_at_every_scale() -> None:
    rows = samples()
    x, weights = matrix(rows)
    sums = am.moments(x).numpy()
    pct = am.exact_percentiles(x, [15, 50, 85], weights).numpy()
    for i, row in enumerate(rows):
        finite = row[np.isfinite(row)].astype(np.float32).astype(np.float64)
        assert sums[i, 0] == pytest.approx(finite.sum(), rel=1e-6, abs=1e-9)
        assert sums[i, 1] == pytest.approx(np.square(finite).sum(), rel=1e-6)
        spread = np.percentile(finite, 85) - np.percentile(finite, 15)
        assert np.abs(pct[i] - np.percentile(finite, [15, 50, 85])).max() < 1e-5 * spread + 1e-9


def test_summarize_equals_numpy_and_redoes_a_row_with_nonfinite_values() -> None:
    """The whole pipeline: every row's count, moments, percentiles and histogram, the broken row's
    from its finite values, with its NaN and infinities counted."""
    rows = samples()
    x = am.stack_samples([torch.tensor(r, dtype=torch.float32) for r in rows])
    weights = am.padding_weights([len(r) for r in rows], torch.device("cpu"))
    bounds = np.array([[-0.03125, 0.03125], [-8.0, 8.0], [0.0, 4.0], [-16.0, 16.0]])
    stats = summarize(x, bounds, 16, [15, 50, 85], 0.95, weights)
    for i, row in enumerate(rows):
        finite = row[np.isfinite(row)].astype(np.float32).astype(np.float64)
        assert stats.count[i] == len(finite) and stats.nonfinite[i] == len(row) - len(finite)
        assert stats.mean[i] == pytest.approx(finite.mean(), rel=1e-5, abs=1e-9)
        assert stats.std[i] == pytest.approx(finite.std(), rel=1e-4)
        spread = np.percentile(finite, 85) - np.percentile(finite, 15)
        assert np.abs(stats.percentiles[i] - np.percentile(finite, [15, 50, 85])).max() < 0.02 * spread
        expected, _ = np.histogram(np.clip(finite, *bounds[i]), bins=16, range=tuple(bounds[i]))
        assert stats.histogram[i].tolist() == expected.tolist()
    assert finite_values(torch.tensor([1.0, np.nan, np.inf, 2.0]))[1] == 2


def test_fine_percentiles_are_within_one_fine_bin_and_say_when_to_sort() -> None:
    rows = samples()
    x, weights = matrix(rows)
    ranges = torch.tensor([[-0.03125, 0.03125], [-8.0, 8.0], [0.0, 4.0], [-2.0, 2.0]])
    counts = am.fine_histogram(x, ranges, 80 * am.FINE, weights)
    stats = am.binned_statistics(host(am.fine_summary(counts, [15, 50, 85], 0.95)), ranges.double().numpy())
    exact = am.exact_percentiles(x, [15, 50, 85], weights).numpy()
    width = (ranges[:, 1] - ranges[:, 0]).numpy() / (80 * am.FINE)
    assert stats["trusted"].tolist() == [True, True, True, False]  # the last has values beyond its range
    for i, row in enumerate(rows[:3]):
        ordered = np.sort(row[np.isfinite(row)])
        gap = np.diff(ordered).max(initial=0) if len(ordered) < 2000 else 0  # a small sample's values lie apart
        assert np.abs(stats["percentiles"][i] - exact[i]).max() <= max(width[i], gap)
        assert width[i] < am.BINNED_ERROR * (exact[i, 2] - exact[i, 0])
    # the same values in a range far too wide: the bins are too coarse to trust
    wide = torch.tensor([[-1024.0, 1024.0]])
    counts = am.fine_histogram(x[1:2], wide, 80 * am.FINE)
    summary = host(am.fine_summary(counts, [15, 85], 0.95))
    assert am.binned_statistics(summary, wide.double().numpy())["trusted"].tolist() == [False]
    empty = am.binned_statistics(host(am.fine_summary(torch.zeros(1, 80 * am.FINE + 2), [50], 0.95)), wide.numpy())
    assert empty["count"][0] == 0 and np.isnan(empty["percentiles"]).all()


def test_percentiles_of_an_empty_row_are_nan() -> None:
    x, weights = matrix([np.array([np.nan, np.inf]), np.array([1.0, 2.0, 3.0])])
    out = am.exact_percentiles(x, [0, 50, 100], weights).numpy()
    assert np.isnan(out[0]).all() and out[1].tolist() == [1.0, 2.0, 3.0]


def test_fine_histogram_equals_numpy_with_outliers_in_the_edge_bins_and_coarsens_exactly() -> None:
    rows = samples()
    x, weights = matrix(rows)
    ranges = torch.tensor([[-0.03, 0.03], [-4.0, 4.0], [0.0, 4.0], [-8.0, 8.0]])
    counts = am.fine_histogram(x, ranges, 16 * am.FINE, weights)
    stats = am.binned_statistics(host(am.fine_summary(counts, [50], 0.95)), ranges.double().numpy())
    displayed = stats["histogram"]
    for i, row in enumerate(rows):
        low, high = ranges[i].tolist()
        finite = np.clip(row[np.isfinite(row)].astype(np.float32), low, np.nextafter(np.float32(high), -np.inf))
        expected, _ = np.histogram(finite, bins=16, range=(low, high))
        assert displayed[i].tolist() == expected.tolist()
        assert stats["count"][i] == len(finite)


def test_the_values_near_either_bound_are_counted_beyond_the_threshold() -> None:
    values = np.concatenate([np.full(10, 0.01), np.full(30, 0.5), np.full(20, 0.99)])
    ranges = torch.tensor([[0.0, 1.0]])
    counts = am.fine_histogram(torch.tensor(values[None], dtype=torch.float32), ranges, 80 * am.FINE)
    assert am.binned_statistics(host(am.fine_summary(counts, [50], 0.95)), ranges.numpy())["beyond"][0] == 30


def test_a_fixed_range_is_a_power_of_two_around_the_values() -> None:
    assert am.fixed_range(-0.02, 0.025) == (-0.03125, 0.03125)
    assert am.fixed_range(0.0, 3.0) == (0.0, 4.0)
    assert am.fixed_range(-5.0, -1.0) == (-8.0, 0.0)
    assert am.fixed_range(0.0, 0.0) is None and am.fixed_range(float("nan"), 1.0) is None
    assert am.histogram_edges(-1.0, 1.0, 4) == [-1.0, -0.5, 0.0, 0.5, 1.0]


def test_cadence_counts_dense_and_regular_logging_steps() -> None:
    cadence = Cadence(every=10, dense_every=3, dense_until=10)
    assert [s for s in range(31) if cadence.is_logging_step(s)] == [0, 3, 6, 9, 10, 20, 30]
    assert cadence.longest_gap() == 10
    with pytest.raises(ValueError, match="must be >= 1"):
        Cadence(every=0)


# ----------------------------------------------------------------------------- parameters
def test_layer_values_equal_the_norms_of_the_layers_tensors() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    layers = parameter_layers(model)
    params = [p for layer in layers for p in layer.params]
    grads = [torch.randn_like(p) for p in params]
    updates = [0.01 * torch.randn_like(p) for p in params]
    present = [0, 1, 4, 5]  # the batch norm has no gradient this step
    values = layer_values(
        tensor_norms([grads[i] for i in present]).numpy(),
        tensor_norms(params).numpy(),
        tensor_norms(updates).numpy(),
        membership(layers),
        present,
    )
    for i, layer in enumerate(layers):
        idx = [next(k for k, q in enumerate(params) if q is p) for p in layer.params]
        weight = torch.cat([params[j].detach().flatten() for j in idx]).norm().item()
        grad = torch.cat([grads[j].flatten() for j in idx if j in present] or [torch.zeros(1)]).norm().item()
        update = torch.cat([updates[j].flatten() for j in idx]).norm().item()
        assert values["weight_norm"][i] == pytest.approx(weight, rel=1e-5)
        assert values["grad_norm"][i] == pytest.approx(grad, rel=1e-5, abs=1e-7)
        assert values["update_ratio"][i] == pytest.approx(update / weight, rel=1e-5)
    everything = torch.cat([grads[j].flatten() for j in present]).norm().item()
    assert values["global"] == pytest.approx(everything, rel=1e-5)


def test_tied_parameters_are_counted_once_in_their_first_module() -> None:
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight  # the output layer shares the embedding
    with pytest.warns(UserWarning, match=r"tied parameters are counted once.*1.weight is 0.weight"):
        layers = parameter_layers(model)
    assert [layer.name for layer in layers] == ["0"] and layers[0].params == [model[0].weight]


# ----------------------------------------------------------------------------- divergence
def test_locate_loss_follows_the_evidence_in_causal_order() -> None:
    fine = [("a", True), ("b", True)]
    assert locate_loss(Evidence(False, fine, [], fine)) == ("input", "input", "")
    assert locate_loss(Evidence(True, [("a", True), ("b", False)], [("m", False)], fine))[:2] == ("b", "weights")
    layer, source, note = locate_loss(Evidence(True, fine, [("m1", True), ("m2", False)], fine, unwatched=2))
    assert (layer, source) == ("m2", "activation") and "2 weight-owning modules are not watched" in note
    assert locate_loss(Evidence(True, fine, [("m1", True)], fine))[:2] == ("loss", "loss")
    assert locate_gradient([("a", False), ("b", False), ("c", True)]) == "b"
    assert first_nonfinite([1.0, 2.0, float("inf"), float("nan")]) == 2 and first_nonfinite([1.0]) is None


def test_merge_json_keeps_other_keys(tmp_path) -> None:
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"landscape": {"sharpness": 3.0}, "status": "failed"}))
    summary = RunSummary(target_acc=0.9)
    summary.observe_grad_norm(2.0)
    summary.observe_grad_norm(float("nan"))
    summary.observe_validation(0.5, 10)
    summary.observe_validation(0.95, 20)
    summary.mark_diverged(25, "layer2.fc", "weights")
    merge_json(path, summary.as_dict())
    data = json.loads(path.read_text())
    assert data["landscape"] == {"sharpness": 3.0}
    assert data["status"] == "diverged" and data["divergence_step"] == 25 and data["divergence_layer"] == "layer2.fc"
    assert (data["max_grad_norm"], data["final_grad_norm"], data["steps_to_target"]) == (2.0, None, 20)
    assert (data["best_val_acc"], data["final_val_acc"]) == (0.95, 0.95)
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary file left behind


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
    narrow, wide = np.linspace(0, 1, 5), np.linspace(0, 2, 5)  # edges: the same array, then another
    for n, step in enumerate(steps):  # the same tags at every step: the later ones set values in place
        hist = Histogram(narrow if n < 2 else wide, np.array([1.0, 1, 2, n]), 4 + n, 2.0, 1.5)
        outputs.write(step, {"a": float(step), "b": 2.0 * step}, {"h": hist})
    outputs.write(30_000, {"b": 1.0, "c": 2.0})  # other tags
    outputs.flush()
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("b")] == [(s, 2.0 * s) for s in steps] + [(30_000, 1.0)]
    assert [(e.step, e.value) for e in events.Scalars("c")] == [(30_000, 2.0)]
    histograms = [e.histogram_value for e in events.Histograms("h")]
    assert [list(h.bucket) for h in histograms] == [[1, 1, 2, n] for n in range(4)]
    assert [h.num for h in histograms] == [4, 5, 6, 7]
    assert [list(h.bucket_limit) for h in histograms] == [[0.25, 0.5, 0.75, 1.0]] * 2 + [[0.5, 1.0, 1.5, 2.0]] * 2
    assert [h.max for h in histograms] == [1.0, 1.0, 2.0, 2.0]


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
