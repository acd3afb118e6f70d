"""IDX files (the MNIST family's format), read and written with numpy alone.

Written by hand rather than borrowed so that Fashion-MNIST loads with no dataset library and
the repo's built-in subset is produced by the same code that reads it back.
"""
from __future__ import annotations

import gzip
import os

import numpy as np

# IDX type byte -> big-endian numpy dtype.
_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}


def read_idx(path: str) -> np.ndarray:
  """Reads a (possibly gzipped) IDX file; raises ValueError on a bad magic number or size."""
  with open(path, "rb") as f:
    data = f.read()
  if path.endswith(".gz"):
    data = gzip.decompress(data)
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
    raise ValueError(f"{path}: not an IDX file (magic {data[:4].hex()})")
  dtype, ndim = _DTYPES[data[2]], data[3]
  header = 4 + 4 * ndim
  shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, offset=4))
  count = int(np.prod(shape))
  if len(data) != header + count * dtype.itemsize:
    raise ValueError(f"{path}: {len(data) - header} payload bytes do not fit shape {shape}")
  array = np.frombuffer(data, dtype, count, offset=header).reshape(shape)
  return array.astype(dtype.newbyteorder("="))  # Native byte order, and writable.


def write_idx(path: str, array: np.ndarray) -> None:
  """Writes `array` as IDX (gzipped when `path` ends in .gz), atomically."""
  dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
  if dtype not in _CODES:
    raise ValueError(f"IDX cannot store dtype {array.dtype}")
  header = bytes([0, 0, _CODES[dtype], array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
  tmp = f"{path}.tmp{os.getpid()}"
  data = header + np.ascontiguousarray(array, dtype).tobytes()
  with open(tmp, "wb") as f:  # mtime=0 keeps the bytes reproducible.
    f.write(gzip.compress(data, mtime=0) if path.endswith(".gz") else data)
  os.replace(tmp, path)
