"""Where the diagnostics' numbers go: every attached Lightning logger, through public APIs only.

- Scalars reach every logger. A TensorBoard logger gets each step's scalars and histograms as one
  ``Summary`` handed to its writer's public ``FileWriter.add_summary`` (``log_metrics`` would write
  one event per scalar, a hundred events a step on a small model); every other logger gets them
  through ``log_metrics``. The ``Summary`` of a set of tags is built once and its values are set
  in place at later steps: building a hundred protobuf values costs more than the statistics.
- Histograms go to TensorBoard as ``HistogramProto`` values (what ``add_histogram_raw`` writes) and
  to W&B as ``wandb.Histogram``; any other logger gets the scalars and one warning.
- ``use_fast_checksums`` (opt-out) makes TensorBoard checksum its records with google-crc32c's C code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary
from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
from tensorboard.summary.writer import record_writer

try:
    import google_crc32c
except ImportError:  # TensorBoard's pure-Python checksums stay
    google_crc32c = None


@dataclass
class Histogram:
    """A histogram over fixed bins: ``counts[i]`` values in ``[edges[i], edges[i + 1])``. An
    ``edges`` array is not changed once written: ``Outputs`` writes the edges of a tag again only
    when they are another array."""

    edges: np.ndarray
    counts: np.ndarray
    num: float
    sum: float
    sum_squares: float

    def proto(self) -> HistogramProto:
        """What ``SummaryWriter.add_histogram_raw`` writes for it."""
        proto = HistogramProto()
        self.fill(proto)
        return proto

    def fill(self, proto: HistogramProto, edges: bool = True) -> None:
        """Set ``proto``'s fields to this histogram's (``edges=False``: but for its edges, which
        ``proto`` already has)."""
        if edges:
            proto.min, proto.max = float(self.edges[0]), float(self.edges[-1])
            proto.bucket_limit[:] = self.edges[1:].tolist()
        proto.num, proto.sum, proto.sum_squares = float(self.num), float(self.sum), float(self.sum_squares)
        proto.bucket[:] = self.counts.tolist()


def _is_wandb(logger: Logger) -> bool:
    return type(logger).__name__ == "WandbLogger"  # no import of wandb unless it is in use


class Outputs:
    """The loggers of one Trainer, each fed the way it can take the numbers (call on rank zero)."""

    def __init__(self, trainer: L.Trainer, owner: str = "TrainingDiagnostics") -> None:
        self.loggers = list(trainer.loggers)
        self.tensorboard = [lg for lg in self.loggers if isinstance(lg, TensorBoardLogger)]
        self.others = [lg for lg in self.loggers if not isinstance(lg, TensorBoardLogger)]
        blind = [type(lg).__name__ for lg in self.others if not _is_wandb(lg)]
        self._warning = (
            f"{owner}: {', '.join(blind)} shows no histograms; it gets the diagnostics' scalars" if blind else None
        )
        self.gathering = False  # hold the numbers of each step until ``send``: one event per step
        self._held: dict[int, tuple[dict, dict]] = {}
        # by the tags of a step, in order: its Summary, and the edges arrays its histograms hold
        self._summaries: dict[tuple, tuple[Summary, list[np.ndarray]]] = {}

    def write(self, step: int, scalars: dict[str, float], histograms: dict[str, Histogram] | None = None) -> None:
        histograms = histograms or {}
        if self.gathering:
            held = self._held.setdefault(step, ({}, {}))
            held[0].update(scalars)
            held[1].update(histograms)
            return
        self._emit(step, scalars, histograms)

    def send(self) -> None:
        """Write what ``gathering`` held, a step at a time in step order."""
        held, self._held = self._held, {}
        for step in sorted(held):
            self._emit(step, *held[step])

    def _emit(self, step: int, scalars: dict[str, float], histograms: dict[str, Histogram]) -> None:
        if histograms and self._warning:
            rank_zero_warn(self._warning)
            self._warning = None
        for logger in self.tensorboard:
            writer = logger.experiment
            if writer.file_writer is None:  # closed by logger.finalize mid-run, as Lightning's SLURM requeue does
                _reopen_with(writer, step, scalars, histograms)
            else:
                writer.file_writer.add_summary(self._summary(scalars, histograms), step)  # copied into its event
        for logger in self.others:
            metrics: dict = dict(scalars)
            if _is_wandb(logger) and histograms:
                import wandb

                metrics.update({k: wandb.Histogram(np_histogram=(h.counts, h.edges)) for k, h in histograms.items()})
            logger.log_metrics(metrics, step)

    def _summary(self, scalars: dict[str, float], histograms: dict[str, Histogram]) -> Summary:
        """A ``Summary`` of these values: the one made for the same tags before, its values set."""
        tags = (*scalars, *histograms)
        if tags not in self._summaries:
            if len(self._summaries) >= 16:  # tags that keep changing: no reuse
                self._summaries.clear()
            values = [Summary.Value(tag=k, simple_value=v) for k, v in scalars.items()]
            values += [Summary.Value(tag=k, histo=h.proto()) for k, h in histograms.items()]
            summary = Summary(value=values)
            self._summaries[tags] = summary, [h.edges for h in histograms.values()]
            return summary
        summary, edges = self._summaries[tags]
        values = summary.value
        for value, number in zip(values, scalars.values(), strict=False):
            value.simple_value = number
        for n, (value, histogram) in enumerate(zip(values[len(scalars) :], histograms.values(), strict=True)):
            histogram.fill(value.histo, edges=histogram.edges is not edges[n])  # the same array: the same edges
            edges[n] = histogram.edges
        return summary

    def flush(self) -> None:
        self.send()
        for logger in self.tensorboard:
            logger.experiment.flush()

    def custom_scalars(self, layout: dict) -> None:
        for logger in self.tensorboard:
            logger.experiment.add_custom_scalars(layout)


def _reopen_with(writer: Any, step: int, scalars: dict, histograms: dict[str, Histogram]) -> None:
    """Write one step through a ``SummaryWriter``'s ``add_*`` calls, which open a new event file
    when it is closed; later steps go through the faster ``add_summary`` again."""
    for tag, value in scalars.items():
        writer.add_scalar(tag, value, step)
    for tag, h in histograms.items():
        limits, counts = h.edges[1:].tolist(), h.counts.tolist()
        writer.add_histogram_raw(tag, h.edges[0], h.edges[-1], h.num, h.sum, h.sum_squares, limits, counts, step)


def use_fast_checksums() -> bool:
    """Make TensorBoard's event writer checksum its records with google-crc32c's C code.

    Without TensorFlow, TensorBoard computes each record's CRC-32C in pure Python, about 0.1 us a
    byte, on its writer thread, which holds the GIL meanwhile: an event with a few histograms
    stalls training for a millisecond. The checksums are the same (a test compares them). This
    replaces ``record_writer.masked_crc32c`` for the whole process; ``TrainingDiagnostics(
    fast_checksums=False)`` leaves TensorBoard's own. Returns whether the fast checksums are in use.
    """
    if google_crc32c is None or google_crc32c.implementation != "c":
        return False
    if record_writer.masked_crc32c is pywrap_tensorflow.masked_crc32c:
        record_writer.masked_crc32c = masked_crc32c
    return record_writer.masked_crc32c is masked_crc32c


def masked_crc32c(data: bytes) -> int:
    """TensorFlow's masked CRC-32C of a record (the same rotation and offset as TensorBoard's own)."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
