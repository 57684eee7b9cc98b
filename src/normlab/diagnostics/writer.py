"""TensorBoard output: one event per logging step carrying all its scalars and histograms, the
custom-scalars layout that groups them per layer, and fast record checksums.

Each ``SummaryWriter.add_scalar`` call writes an event of its own, so a step's values go through
the logger's file writer as one ``Summary``. Its tags never change between steps, so it is encoded
from a prepared byte template rather than built value by value; a histogram value is the
``HistogramProto`` that ``add_histogram_raw`` writes.
"""

from __future__ import annotations

import io
import re
import struct
import time
from collections.abc import Sequence

import lightning as L
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
from tensorboard.summary.writer import record_writer

try:
    import google_crc32c
except ImportError:  # TensorBoard's pure-Python checksums stay
    google_crc32c = None


def use_fast_checksums() -> bool:
    """Make TensorBoard's event writer checksum its records with google-crc32c's C code.

    Without TensorFlow, TensorBoard computes each record's CRC-32C in pure Python, about 0.1 us a
    byte, on its writer thread, which holds the GIL meanwhile: a 15 kB event with histograms
    stalls training for 1.5 ms. The C code computes the same checksums in microseconds. Returns
    whether the fast checksums are in use.
    """
    if google_crc32c is None or google_crc32c.implementation != "c":
        return False
    if record_writer.masked_crc32c is pywrap_tensorflow.masked_crc32c:
        record_writer.masked_crc32c = _masked_crc32c
    return record_writer.masked_crc32c is _masked_crc32c


def _masked_crc32c(data: bytes) -> int:
    """TensorFlow's masked CRC-32C of a record (the same rotation and offset as TensorBoard's own)."""
    return _mask(google_crc32c.value(data))


def _mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tensorboard_logger(trainer: L.Trainer) -> TensorBoardLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


# Protocol-buffer wire format (https://protobuf.dev/programming-guides/encoding/) of the messages
# written: Event{double wall_time = 1; int64 step = 2; Summary summary = 5}, Summary{repeated Value
# value = 1}, Value{string tag = 1; float simple_value = 2; HistogramProto histo = 5},
# HistogramProto{double min = 1, max = 2, num = 3, sum = 4, sum_squares = 5; repeated double
# bucket_limit = 6 (packed), bucket = 7 (packed)}.
def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _head(number: int, size: int) -> bytes:
    """The key and length of a length-delimited field of ``size`` bytes."""
    return _varint(number << 3 | 2) + _varint(size)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes, message or packed numbers)."""
    return _head(number, len(payload)) + payload


class SummaryTemplate:
    """The serialized ``Summary`` of a step with fixed scalar tags and fixed histograms, into which
    each step's numbers are poked.

    Building one ``Summary.Value`` object per scalar costs about a microsecond each; here the whole
    event of many steps is a copy of prepared bytes and two array assignments. The histograms are
    ``HistogramProto`` values over fixed bins, as ``add_histogram_raw`` writes them.

    Args:
        tags: the scalar tags.
        histograms: ``(tag, edges)`` of each histogram; the first and last edge become its min and max.
    """

    def __init__(self, tags: Sequence[str], histograms: Sequence[tuple[str, np.ndarray]] = ()) -> None:
        self.tags = list(tags)
        sizes = {len(edges) - 1 for _, edges in histograms}
        if len(sizes) > 1:
            raise ValueError("all histograms of a template need the same number of bins")
        chunks: list[bytes] = []
        singles: list[int] = []  # byte offset of each float32 scalar
        doubles: list[list[int]] = []  # per histogram: offsets of num, sum, sum_squares, then the counts
        size = 0
        for tag in self.tags:
            value = _field(1, tag.encode()) + b"\x15"  # tag, then simple_value's key (field 2, 32-bit)
            head = _head(1, len(value) + 4) + value
            singles.append(size + len(head))
            chunks.append(head + bytes(4))
            size += len(head) + 4
        for tag, edges in histograms:
            bins = len(edges) - 1
            head = struct.pack("<BdBd", 0x09, float(edges[0]), 0x11, float(edges[-1]))
            middle = _field(6, np.asarray(edges[1:], dtype="<f8").tobytes()) + _head(7, 8 * bins)
            numbers = b"".join(key + bytes(8) for key in (b"\x19", b"\x21", b"\x29"))  # num, sum, sum_squares
            histo = head + numbers + middle + bytes(8 * bins)
            value = _field(1, tag.encode()) + _field(5, histo)
            entry = _head(1, len(value)) + value
            start = size + len(entry) - len(histo)
            offsets = [start + len(head) + 1 + 9 * k for k in range(3)]
            offsets += [start + len(head) + len(numbers) + len(middle) + 8 * k for k in range(bins)]
            doubles.append(offsets)
            chunks.append(entry)
            size += len(entry)
        self._template = np.frombuffer(b"".join(chunks), dtype=np.uint8)
        self._singles = np.asarray(singles, dtype=np.int64).reshape(-1, 1) + np.arange(4)
        # num, sum and sum_squares of each histogram, one key byte apart; its counts lie end to end
        self._numbers = np.asarray([d[:3] for d in doubles], dtype=np.int64).reshape(-1, 3, 1) + np.arange(8)
        self._counts = [d[3] for d in doubles]
        self._bins = sizes.pop() if sizes else 0

    def encode(self, scalars: np.ndarray, histograms: np.ndarray | None = None) -> list[np.ndarray]:
        """One serialized ``Summary`` per step: the ``uint8`` rows of one buffer (``bytes()`` copies one out).

        Args:
            scalars: ``(steps, tags)``.
            histograms: ``(steps, histograms, 3 + bins)``: number of values, sum, sum of squares,
                then the count of each bin.
        """
        scalars = np.asarray(scalars, dtype="<f4")
        steps = len(scalars)
        data = np.tile(self._template, (steps, 1))
        data[:, self._singles] = scalars.view(np.uint8).reshape(steps, -1, 4)
        if histograms is not None:
            raw = np.ascontiguousarray(histograms, dtype="<f8").view(np.uint8).reshape(steps, len(self._counts), -1)
            data[:, self._numbers] = raw[:, :, :24].reshape(steps, len(self._counts), 3, 8)
            for h, start in enumerate(self._counts):
                data[:, start : start + 8 * self._bins] = raw[:, h, 24:]
        return list(data)


def write_summaries(logger: TensorBoardLogger, summaries: Sequence[tuple[int, bytes | np.ndarray]]) -> None:
    """Write serialized ``Summary`` messages as one event each, ``(step, summary)``, on rank zero.

    TensorBoard's writer thread appends each event to the file on its own, opening the file
    every time when TensorFlow is absent; here the events are framed as TFRecords in memory and
    appended in one write. Each append is whole records, so they cannot interleave with the writer
    thread's. With the fast checksums (``use_fast_checksums``) each summary is copied once, into
    the framed buffer; otherwise TensorBoard's own ``RecordWriter`` frames them.
    """
    events = logger.experiment._get_file_writer().event_writer
    wall_time = b"\x09" + struct.pack("<d", time.time()) + b"\x10"
    fields = {size: _head(5, size) for size in {len(data) for _, data in summaries}}  # mostly one size
    heads = [wall_time + _varint(step) + fields[len(data)] for step, data in summaries]
    file = getattr(events, "_general_file_writer", None)
    if file is None:  # another writer than TensorBoard's own: event by event
        for head, (_, data) in zip(heads, summaries, strict=True):
            events.add_event(Event.FromString(head + bytes(data)))
        return
    if record_writer.masked_crc32c is not _masked_crc32c:
        records = io.BytesIO()
        framing = record_writer.RecordWriter(records)  # TensorBoard's own framing, into memory
        for head, (_, data) in zip(heads, summaries, strict=True):
            framing.write(head + bytes(data))
        file.write(records.getvalue())
        return
    records = []  # TFRecord: length and its masked CRC-32C, the event, the event's masked CRC-32C
    lengths: dict[int, bytes] = {}
    for head, (_, data) in zip(heads, summaries, strict=True):
        size = len(head) + len(data)
        length = lengths.get(size)
        if length is None:
            packed = struct.pack("<Q", size)
            length = lengths[size] = packed + struct.pack("<I", _masked_crc32c(packed))
        crc = _mask(google_crc32c.extend(google_crc32c.value(head), data))
        records += [length, head, data, struct.pack("<I", crc)]
    file.write(b"".join(records))


def custom_scalars_layout(modules: Sequence[str], percentile_tags: Sequence[str], layers: Sequence[str]) -> dict:
    """TensorBoard's Custom Scalars layout for the watched modules and parameter layers.

    Each module gets a margin chart of its percentile band (middle percentile as the line, the
    lowest and highest as the band; Ioffe & Szegedy's Figure 1), and the per-layer gradient norms,
    update ratios and weight norms each get a multi-line chart.

    Args:
        modules: display names of the watched modules.
        percentile_tags: the percentile tag suffixes in increasing order, e.g. ``["p15", "p50", "p85"]``.
        layers: display names of the parameter layers.
    """
    layout: dict[str, dict[str, list]] = {}
    if len(percentile_tags) >= 2:
        mid = percentile_tags[len(percentile_tags) // 2]
        lo, hi = percentile_tags[0], percentile_tags[-1]
        layout["activation percentiles"] = {
            m: ["Margin", [f"act/{m}/{mid}", f"act/{m}/{lo}", f"act/{m}/{hi}"]] for m in modules
        }
    per_layer = {
        f"{what} per layer": ["Multiline", [f"^{re.escape(f'{what}/{name}')}$" for name in layers]]
        for what in ("grad_norm", "update_ratio", "weight_norm")
    }
    per_layer["global grad_norm"] = ["Multiline", ["^grad_norm/global$"]]
    layout["layers"] = per_layer
    layout["activation health"] = {
        f"{stat} per module": ["Multiline", [f"^act/.*/{stat}$"]] for stat in ("std", "saturated", "dead", "nonfinite")
    }
    return layout
