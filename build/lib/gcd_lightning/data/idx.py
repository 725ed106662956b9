"""The IDX file format of the MNIST distribution (what torchvision reads from ``MNIST/raw``).

An IDX file is a big-endian header -- two zero bytes, a type code (0x08 = unsigned byte) and the
number of dimensions, then one uint32 per dimension -- followed by the raw values. MNIST images are
``2051`` (uint8, 3 dims) files and labels ``2049`` (uint8, 1 dim) files.
"""

from __future__ import annotations

import os
import struct
import uuid
from pathlib import Path

import numpy as np

from gcd_lightning.data.errors import DatasetCorruptError

UBYTE_TYPE_CODE = 0x08


def idx_magic(ndim: int) -> int:
    """The magic number of an unsigned-byte IDX file with ``ndim`` dimensions (2051 for 3, 2049 for 1)."""
    return (UBYTE_TYPE_CODE << 8) | ndim


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array with 1 to 3 dimensions."""
    if array.dtype != np.uint8:
        raise TypeError(f"IDX writer supports uint8 arrays only, got {array.dtype}")
    if not 1 <= array.ndim <= 3:
        raise ValueError(f"IDX writer supports 1 to 3 dimensions, got shape {array.shape}")
    header = struct.pack(f">I{array.ndim}I", idx_magic(array.ndim), *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` as an IDX file atomically: a temporary file in the same folder, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = encode_idx(array)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_idx_header(path: str | os.PathLike[str], ndim: int, how_to: str) -> tuple[int, ...]:
    """The shape stored in an unsigned-byte IDX file with ``ndim`` dimensions, after validating it.

    Only the header is read; the file size is checked against the header. Raises
    ``DatasetCorruptError`` (with ``how_to`` as the repair advice) when the magic number is wrong or
    the file is shorter or longer than its header announces (e.g. a truncated download).
    """
    header_size = 4 * (1 + ndim)
    with open(path, "rb") as handle:
        header = handle.read(header_size)
    if len(header) < header_size:
        raise DatasetCorruptError(
            path, f"{len(header)} bytes is shorter than an IDX header ({header_size} bytes)", how_to
        )
    magic, *shape = struct.unpack(f">I{ndim}I", header)
    if magic != idx_magic(ndim):
        raise DatasetCorruptError(
            path, f"IDX magic number is {magic}, expected {idx_magic(ndim)} (uint8, {ndim} dims)", how_to
        )
    expected_size = header_size + int(np.prod(shape))
    actual_size = os.path.getsize(path)
    if actual_size != expected_size:
        raise DatasetCorruptError(
            path, f"size is {actual_size} bytes but the header {tuple(shape)} requires {expected_size} bytes", how_to
        )
    return tuple(shape)


def read_idx(path: str | os.PathLike[str], ndim: int, how_to: str) -> np.ndarray:
    """Read a validated unsigned-byte IDX file (see ``read_idx_header``) as a uint8 array."""
    shape = read_idx_header(path, ndim, how_to)
    data = Path(path).read_bytes()
    return np.frombuffer(data, dtype=np.uint8, offset=4 * (1 + ndim)).reshape(shape)
