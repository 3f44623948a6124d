"""Vector norms: L0 (non-zero count), L1, L2 and L-inf per row, and norm-ordered shard files.

Kernels work on ``(n_samples, n_features)`` arrays; :class:`ComputeNorms`
applies them to whole RecordBatches (columns ``id``, ``features``) and appends
columns ``l0`` (int64), ``l1``, ``l2``, ``linf`` (float64).

NaN and infinite entries: ``l0`` counts every entry that is not 0, so NaN and
+-inf count as non-zero (as ``numpy.count_nonzero``), and ``l0`` is a count for
every row, never NaN. ``l1``, ``l2`` and ``linf`` follow IEEE arithmetic: a row
with a NaN has NaN for all three, a row with an infinite entry (and no NaN) has
``inf``.

The distributed sort by one norm is :mod:`beamml.transforms.sorting`;
:class:`WriteSortedShards` writes its shards, shard ``i`` to file ``i``.
"""
from __future__ import annotations

import uuid

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from beamml.transforms.io import (BATCH_ROWS, OUTPUT_FORMATS, ShardWriter, features_matrix,
                                  points_matrix)
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.io.sinks import RemoveStaleShards

__all__ = ['NORMS', 'row_norms', 'all_row_norms', 'add_norms', 'ComputeNorms',
           'shard_path', 'WriteSortedShards']

NORMS = ('l0', 'l1', 'l2', 'linf')
PARQUET_ROW_GROUP = 1 << 20  # rows per row group of a sorted Parquet shard
_SAFE_MAX = 2.0 ** 500      # |x| above this: x*x may overflow in a row sum
_SAFE_MIN = 2.0 ** -500     # |x| below this: x*x underflows to a subnormal or 0


# ----------------------------------------------------------------------------- kernels

def _row_max(A: np.ndarray) -> np.ndarray:
    """max over axis 1 of a non-negative matrix; for few features a column loop is faster."""
    n, d = A.shape
    if d == 0:
        return np.zeros(n)
    if d > 64:
        return A.max(axis=1)
    m = A[:, 0].copy()
    for j in range(1, d):  # a loop over features, each step vectorised over the rows
        np.maximum(m, A[:, j], out=m)
    return m


def _l2(X: np.ndarray, linf: np.ndarray | None = None) -> np.ndarray:
    """sqrt(sum x^2) per row, recomputed as linf * ||x / linf|| where squares leave float64.

    Plain ``sqrt(sum x^2)`` (what ``np.linalg.norm`` does) overflows to inf for
    entries above ~1e154 and loses everything below ~1e-154; those rows (only)
    are scaled by their largest absolute entry first, as LAPACK's ``dnrm2``
    does, so the L2 norm is inf only when the true norm exceeds float64's range.
    """
    ss = np.einsum('ij,ij->i', X, X)
    l2 = np.sqrt(ss)
    if linf is None:
        # Only rows whose sum of squares is outside [2 d 2^-1000, 2^999] can hold an
        # entry outside [_SAFE_MIN, _SAFE_MAX] (or a NaN or inf): their largest entry alone
        # is computed, the same test as on every row, without abs(X) of the whole batch.
        with np.errstate(invalid='ignore'):
            maybe = ~((ss >= 2.0 * max(X.shape[1], 1) * _SAFE_MIN ** 2) & (ss <= 2.0 ** 999))
        idx = np.flatnonzero(maybe)
        linf = np.zeros(len(X))
        if len(idx):
            linf[idx] = _row_max(np.abs(X[idx]))
    with np.errstate(invalid='ignore'):
        risky = np.isfinite(linf) & ((linf > _SAFE_MAX) | ((linf < _SAFE_MIN) & (linf > 0)))
    if risky.any():
        idx = np.flatnonzero(risky)
        scale = linf[idx]
        Y = X[idx] / scale[:, None]
        with np.errstate(over='ignore'):  # inf only where the true norm exceeds float64
            l2[idx] = scale * np.sqrt(np.einsum('ij,ij->i', Y, Y))
    return l2


def _l1(A: np.ndarray) -> np.ndarray:
    """Row sums of ``abs(X)``: einsum is ~10x ``A.sum(axis=1)`` for few features, and
    unlike a BLAS mat-vec it starts no threads (which stall on a busy machine)."""
    return np.einsum('ij->i', A)


def _l0(X: np.ndarray) -> np.ndarray:
    """Entries that are not 0 per row, int64 (NaN and +-inf count, as in count_nonzero)."""
    n, d = X.shape
    if d < 256:  # counts fit uint8: an integer mat-vec is ~3x count_nonzero(axis=1)
        return ((X != 0).view(np.uint8) @ np.ones(d, np.uint8)).astype(np.int64)
    return np.count_nonzero(X, axis=1).astype(np.int64, copy=False)


def row_norms(X: np.ndarray, ord: str = 'l2') -> np.ndarray:
    """Norm of each row of ``X``.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    ord : {'l0', 'l1', 'l2', 'linf'}
        ``l0`` counts the entries that are not 0 (NaN and +-inf included, as
        ``numpy.count_nonzero``), so it is never NaN. ``l2`` does not overflow
        where the true norm fits float64 (see :func:`_l2`); ``l1`` is the plain
        sum and is inf when the sum exceeds float64's range. A row with a NaN
        has NaN ``l1``, ``l2`` and ``linf``.

    Returns
    -------
    ndarray of shape (n_samples,): int64 for ``l0``, float64 for the others
    """
    X = points_matrix(X)
    if ord == 'l2':
        return _l2(X)
    if ord == 'l1':
        with np.errstate(over='ignore'):
            return _l1(np.abs(X))
    if ord == 'linf':
        return _row_max(np.abs(X))
    if ord == 'l0':
        return _l0(X)
    raise ValueError(f'unknown norm {ord!r}; one of {NORMS}')


def all_row_norms(X: np.ndarray) -> dict[str, np.ndarray]:
    """The four norms of each row, sharing one ``abs(X)``.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)

    Returns
    -------
    dict with keys ``l0, l1, l2, linf``, each an ndarray of shape (n_samples,) as
        :func:`row_norms` computes it (``l0`` int64, the others float64).
    """
    X = points_matrix(X)
    A = np.abs(X)
    linf = _row_max(A)
    with np.errstate(over='ignore'):  # an l1 sum above float64's range is inf, as in numpy
        l1 = _l1(A)
    return {'l0': _l0(X), 'l1': l1, 'l2': _l2(X, linf), 'linf': linf}


# ----------------------------------------------------------------------------- Beam: norms

def add_norms(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Append columns l0 (int64), l1, l2, linf (float64) to a points batch."""
    norms = all_row_norms(features_matrix(batch))
    for name in NORMS:
        batch = batch.append_column(name, pa.array(norms[name]))
    return batch


class ComputeNorms(beam.PTransform):
    """Append columns ``l0`` (int64), ``l1, l2, linf`` (float64) to every points RecordBatch."""

    def expand(self, batches):
        return batches | 'AddNorms' >> beam.Map(add_norms)


# ----------------------------------------------------------------------------- Beam: writing

def shard_path(prefix: str, index: int, num_shards: int, output_format: str) -> str:
    """``PREFIX-iiiii-of-NNNNN.<fmt>``: the file of shard ``index`` of ``num_shards``."""
    return f'{prefix}-{index:05d}-of-{num_shards:05d}.{output_format}'


class _WriteShardFn(beam.DoFn):
    """Write one :class:`~beamml.transforms.sorting.SortedShard` to its own file (via a
    temporary name, then a rename)."""

    def __init__(self, prefix: str, output_format: str, schema: pa.Schema | None):
        self.prefix, self.output_format, self.schema = prefix, output_format, schema

    def process(self, shard):
        final = shard_path(self.prefix, shard.index, shard.num_shards, self.output_format)
        temp = f'{final}.tmp-{uuid.uuid4().hex}'
        table = shard.table
        if self.schema is not None and table.num_rows == 0:
            table = self.schema.empty_table()
        elif self.schema is not None:
            table = table.select(self.schema.names)
        writer = ShardWriter(FileSystems.create(temp), self.output_format,
                              self.schema if self.schema is not None else table.schema)
        # Parquet: big row groups (pyarrow writes 64k-row groups ~4x slower); text
        # formats: bounded pieces (their serialisation holds a piece's text in memory).
        chunk = PARQUET_ROW_GROUP if self.output_format == 'parquet' else BATCH_ROWS
        for batch in table.to_batches(max_chunksize=chunk):
            writer.write(batch)
        writer.close()
        if FileSystems.exists(final):
            FileSystems.delete([final])
        FileSystems.rename([temp], [final])
        yield final


class WriteSortedShards(beam.PTransform):
    """Write the shards of :class:`~beamml.transforms.sorting.SortByNorm`: shard ``i``
    of ``N`` to ``PREFIX-iiiii-of-NNNNN.<fmt>``.

    File name order is the sort order. Shards of an earlier run with the same
    prefix (another shard count or format) are deleted. Returns a
    PCollection holding the sorted list of the paths written.
    """

    def __init__(self, prefix: str, output_format: str = 'parquet', *,
                 schema: pa.Schema | None = None, label: str | None = None):
        super().__init__(label)
        if output_format not in OUTPUT_FORMATS:
            raise BeammlError(f'unknown output_format {output_format!r}; one of '
                              f'{", ".join(OUTPUT_FORMATS)}', parameters=('output_format',))
        self.prefix, self.output_format, self.schema = prefix, output_format, schema

    def expand(self, shards):
        return (shards
                | 'WriteShardFiles' >> beam.ParDo(
                    _WriteShardFn(self.prefix, self.output_format, self.schema))
                | 'RemoveStaleShards' >> RemoveStaleShards(self.prefix))
