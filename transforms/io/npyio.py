"""Reading .npy files: an (n, d) numeric array, split at rows, into RowBatches of features."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa

from beamml.transforms.core.objects import open_file
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.io.rows import RowBatch

__all__ = ['read_npy_header', 'npy_header', 'plan_npy', 'read_npy']


def read_npy_header(f, path: str) -> tuple[tuple, bool, np.dtype]:
    """(shape, fortran order, dtype) from the header at the start of the open file ``f``."""
    try:
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
    except Exception as e:
        raise BeammlError(f'{path} is not a readable .npy file: {e}') from e
    if dtype.kind not in 'iufb':
        raise BeammlError(f'{path}: .npy dtype {dtype} is not numeric')
    return shape, fortran, dtype


def npy_header(path: str) -> tuple[tuple, bool, np.dtype]:
    """:func:`read_npy_header` of the file at ``path``."""
    with open_file(path) as f:
        return read_npy_header(f, path)


def plan_npy(f, path: str, split_rows: int) -> list[tuple[str, tuple | None]]:
    """Work items ``(path, (first row, end row))`` of about ``split_rows`` rows; one
    item ``(path, None)`` for a small or Fortran-ordered file."""
    shape, fortran, _ = read_npy_header(f, path)
    n = shape[0] if shape else 0
    if fortran or n <= split_rows:
        return [(path, None)]
    return [(path, (s, min(s + split_rows, n))) for s in range(0, n, split_rows)]


def read_npy(f, path: str, batch_rows: int, part: tuple | None = None) -> Iterator[RowBatch]:
    """RowBatches of one column, ``features``, of rows ``part`` (all rows when None)."""
    shape, fortran, dtype = read_npy_header(f, path)
    if len(shape) != 2:
        raise BeammlError(f'{path}: expected a 2-D (n, d) array, got shape {shape}')
    n, d = shape
    if fortran:
        buf = f.read()
        if len(buf) < n * d * dtype.itemsize:
            raise BeammlError(f'{path}: truncated .npy file (expected {n} rows)')
        arr = np.frombuffer(buf, dtype=dtype, count=n * d).reshape((n, d), order='F')
        chunks = ((s, np.ascontiguousarray(arr[s:s + batch_rows])) for s in range(0, n, batch_rows))
    else:
        row_bytes = d * dtype.itemsize
        lo, hi = part if part is not None else (0, n)
        if lo:
            f.seek(f.tell() + lo * row_bytes)

        def gen():
            for s in range(lo, hi, batch_rows):
                m = min(batch_rows, hi - s)
                buf = f.read(m * row_bytes)
                if len(buf) < m * row_bytes:
                    raise BeammlError(f'{path}: truncated .npy file (expected {n} rows)')
                yield s, np.frombuffer(buf, dtype=dtype).reshape(m, d)
        chunks = gen()
    for s, block in chunks:
        X = np.ascontiguousarray(block, dtype=np.float64)
        feats = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), d)
        b = pa.RecordBatch.from_arrays([feats], names=['features'])
        yield RowBatch(b, np.arange(s, s + len(X), dtype=np.int64), None)
