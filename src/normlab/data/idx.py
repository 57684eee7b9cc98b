"""Read and write the IDX format of MNIST-family files (optionally gzip-compressed).

Layout: two zero bytes, a type code, the number of dimensions, one big-endian uint32 per
dimension, then the values in row-major order.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {np.dtype(v).str: k for k, v in _DTYPES.items()}


class IDXFormatError(ValueError):
    """The bytes are not a well-formed IDX file."""


def parse_idx(data: bytes) -> np.ndarray:
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise IDXFormatError("bad magic number")
    dtype, ndim = np.dtype(_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXFormatError("truncated header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise IDXFormatError(f"expected {expected} bytes for shape {shape}, found {len(data)}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file; a ``.gz`` suffix means gzip-compressed."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return parse_idx(f.read())
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise IDXFormatError(str(e)) from e


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzip-compressed when the name ends in ``.gz``)."""
    path = Path(path)
    big_endian = array.astype(np.dtype(array.dtype).newbyteorder(">"), copy=False)
    code = _CODES.get(np.dtype(big_endian.dtype).str) or _CODES[np.dtype(array.dtype).str]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + big_endian.tobytes())
