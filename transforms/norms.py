"""Vector norms: L0 (non-zero count), L1, L2 and L-inf per row, and a distributed sort by norm.

Kernels work on ``(n_samples, n_features)`` arrays; the Beam transforms apply
them to whole RecordBatches (columns ``id``, ``features``) and append columns.

``SortByNorm`` orders a point cloud by one norm without gathering it on one
worker: a mergeable random sample of the sort keys gives range boundaries, each
batch is split into per-shard sub-batches, and each shard is grouped and sorted
on its own. ``WriteSortedShards`` writes shard ``i`` to file ``i``, so reading
the files in name order gives the whole data set in norm order.
"""
from __future__ import annotations

import math
import typing
import uuid
import zlib

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from beamml.transforms.io import (BATCH_ROWS, OUTPUT_FORMATS, BeammlError,
                                  ShardWriter as _ShardWriter, features_matrix)

__all__ = ['NORMS', 'row_norms', 'all_row_norms', 'sort_keys', 'lex_order', 'shard_of',
           'range_boundaries', 'ComputeNorms', 'SortByNorm', 'SortedShard', 'SortPlan',
           'WriteSortedShards', 'ROWS_PER_SHARD', 'SORT_KEY']

NORMS = ('l0', 'l1', 'l2', 'linf')
SORT_KEY = '_sort_key'      # column added while sorting, dropped before output
ROWS_PER_SHARD = 1_000_000  # default num_shards = ceil(rows / ROWS_PER_SHARD)
PARQUET_ROW_GROUP = 1 << 20  # rows per row group of a sorted Parquet shard
_SAFE_MAX = 2.0 ** 500      # |x| above this: x*x may overflow in a row sum
_SAFE_MIN = 2.0 ** -500     # |x| below this: x*x underflows to a subnormal or 0


# ----------------------------------------------------------------------------- kernels

def _as_matrix(X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f'X must be 2-D (n_samples, n_features), got shape {X.shape}')
    return X


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
    l2 = np.sqrt(np.einsum('ij,ij->i', X, X))
    if linf is None:
        linf = _row_max(np.abs(X))
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
    n, d = X.shape
    if d < 256:  # counts fit uint8: an integer mat-vec is ~3x count_nonzero(axis=1)
        return ((X != 0).view(np.uint8) @ np.ones(d, np.uint8)).astype(np.float64)
    return np.count_nonzero(X, axis=1).astype(np.float64)


def row_norms(X: np.ndarray, ord: str = 'l2') -> np.ndarray:
    """Norm of each row of ``X``.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    ord : {'l0', 'l1', 'l2', 'linf'}
        ``l0`` counts the non-zero entries (as float64; NaN counts as non-zero).
        ``l2`` does not overflow where the true norm fits float64 (see
        :func:`_l2`); ``l1`` is the plain sum and is inf when the sum exceeds
        float64's range. A row with a NaN has NaN norms (``l0`` excepted).

    Returns
    -------
    ndarray of shape (n_samples,), float64
    """
    X = _as_matrix(X)
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
    dict with keys ``l0, l1, l2, linf``, each an ndarray of shape (n_samples,), float64
        as :func:`row_norms` computes them.
    """
    X = _as_matrix(X)
    A = np.abs(X)
    linf = _row_max(A)
    with np.errstate(over='ignore'):  # an l1 sum above float64's range is inf, as in numpy
        l1 = _l1(A)
    return {'l0': _l0(X), 'l1': l1, 'l2': _l2(X, linf), 'linf': linf}


def sort_keys(norms: np.ndarray, descending: bool = True) -> np.ndarray:
    """Keys whose ascending order is the requested order of the norms (NaN last either way)."""
    norms = np.asarray(norms, dtype=np.float64)
    return -norms if descending else norms.copy()


def lex_order(keys: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Indices that sort rows by (key ascending, id ascending); NaN keys last.

    Parameters
    ----------
    keys : ndarray of shape (n_samples,), float64
    ids : ndarray of shape (n_samples,), int64 or object (str)

    Returns
    -------
    ndarray of shape (n_samples,), int64
    """
    return np.lexsort((ids, keys))


def range_boundaries(keys: np.ndarray, ids: np.ndarray, num_shards: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``num_shards - 1`` split points (key, id) taken at even ranks of a sample.

    Parameters
    ----------
    keys, ids : ndarray of shape (n_sample,)
        A uniform sample of the rows' sort keys and ids.
    num_shards : int

    Returns
    -------
    (boundary_keys, boundary_ids), each of shape (num_shards - 1,) (fewer, 0, for an
    empty sample), sorted in (key, id) order. Shard ``i`` holds the rows from
    boundary ``i - 1`` (inclusive) to boundary ``i`` (exclusive).
    """
    m = len(keys)
    if m == 0 or num_shards <= 1:
        return np.empty(0), ids[:0]
    order = lex_order(keys, ids)
    ranks = (np.arange(1, num_shards) * m) // num_shards
    pick = order[ranks]
    return keys[pick], ids[pick]


def shard_of(keys: np.ndarray, ids: np.ndarray, boundary_keys: np.ndarray,
             boundary_ids: np.ndarray) -> np.ndarray:
    """Shard index of each row: how many boundaries are <= (key, id) in (key, id) order.

    Parameters
    ----------
    keys, ids : ndarray of shape (n_samples,)
    boundary_keys, boundary_ids : ndarray of shape (n_boundaries,), sorted as a pair

    Returns
    -------
    ndarray of shape (n_samples,), int64, in ``0 .. n_boundaries``
    """
    lo = np.searchsorted(boundary_keys, keys, side='left')   # boundaries with a smaller key
    hi = np.searchsorted(boundary_keys, keys, side='right')  # ... with a smaller or equal key
    shard = lo.astype(np.int64)
    tied = np.flatnonzero(hi > lo)
    if len(tied):
        # Rows whose key equals boundary keys: the ids decide. Boundaries with
        # one key have ascending ids; one searchsorted per distinct tied key (a
        # loop over boundaries, never over rows).
        for start in np.unique(lo[tied]):
            rows = tied[lo[tied] == start]
            end = hi[rows[0]]
            shard[rows] += np.searchsorted(boundary_ids[start:end], ids[rows], side='right')
    return shard


# ----------------------------------------------------------------------------- Beam: norms

def add_norms(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Append columns l0, l1, l2, linf to a points batch."""
    norms = all_row_norms(features_matrix(batch))
    for name in NORMS:
        batch = batch.append_column(name, pa.array(norms[name]))
    return batch


class ComputeNorms(beam.PTransform):
    """Append columns ``l0, l1, l2, linf`` to every points RecordBatch."""

    def expand(self, batches):
        return batches | 'AddNorms' >> beam.Map(add_norms)


# ----------------------------------------------------------------------------- Beam: sort

class SortPlan(typing.NamedTuple):
    """What every worker needs to place a row: the shard count and the split points."""
    num_rows: int
    num_shards: int
    boundary_keys: np.ndarray
    boundary_ids: np.ndarray
    schema: pa.Schema | None  # of the input batches (None when the input was empty)


class SortedShard(typing.NamedTuple):
    """Shard ``index`` of ``num_shards``: a Table sorted by (norm, id)."""
    index: int
    num_shards: int
    table: pa.Table


def _ids_array(batch) -> np.ndarray:
    return batch.column('id').to_numpy(zero_copy_only=False)


def _add_sort_key(batch: pa.RecordBatch, norm: str, descending: bool) -> pa.RecordBatch:
    """Append ``_sort_key``: the norm (taken from its column when there is one), negated
    when descending."""
    if norm in batch.schema.names:
        values = batch.column(norm).to_numpy(zero_copy_only=False)
    else:
        values = row_norms(features_matrix(batch), norm)
    return batch.append_column(SORT_KEY, pa.array(sort_keys(values, descending)))


class _SampleAccumulator:
    """A bottom-k sample: the rows with the smallest random priorities seen so far."""
    __slots__ = ('num_rows', 'priority', 'keys', 'ids', 'schema')

    def __init__(self):
        self.num_rows = 0
        self.priority = np.empty(0)
        self.keys = np.empty(0)
        self.ids = None
        self.schema = None

    def absorb(self, num_rows, priority, keys, ids, schema, size):
        self.num_rows += num_rows
        if self.schema is None:
            self.schema = schema
        if len(priority) == 0:
            return
        if self.ids is None:
            self.priority, self.keys, self.ids = priority, keys, ids
        else:
            self.priority = np.concatenate([self.priority, priority])
            self.keys = np.concatenate([self.keys, keys])
            self.ids = np.concatenate([self.ids, ids])
        if len(self.priority) > size:
            keep = np.argpartition(self.priority, size)[:size]
            self.priority, self.keys, self.ids = (
                self.priority[keep], self.keys[keep], self.ids[keep])


class _SortSampleFn(beam.CombineFn):
    """Count the rows and keep a uniform random sample of (sort key, id) of fixed size.

    Each row draws a random priority; the sample is the ``sample_size`` rows with
    the smallest priorities, which is uniform and merges exactly (bottom-k
    sampling). Priorities are seeded from the batch itself, so a run is
    reproducible. The output is the :class:`SortPlan`.
    """

    def __init__(self, num_shards: int | None, sample_size: int, rows_per_shard: int,
                 random_state: int = 0):
        self.num_shards, self.sample_size = num_shards, sample_size
        self.rows_per_shard, self.random_state = rows_per_shard, random_state

    def create_accumulator(self):
        return _SampleAccumulator()

    def add_input(self, acc, batch):
        n = batch.num_rows
        keys = batch.column(SORT_KEY).to_numpy(zero_copy_only=False)
        ids = _ids_array(batch)
        if n:
            seed = zlib.crc32(repr((ids[0], ids[-1], float(keys[0]))).encode())
            rng = np.random.default_rng([self.random_state, seed, n])
            priority = rng.random(n)
            if n > self.sample_size:
                keep = np.argpartition(priority, self.sample_size)[:self.sample_size]
                priority, keys, ids = priority[keep], keys[keep], ids[keep]
            else:
                keys, ids = keys.copy(), ids.copy()
        else:
            priority = np.empty(0)
        schema = batch.schema.remove(batch.schema.get_field_index(SORT_KEY))
        acc.absorb(n, priority, keys, ids, schema, self.sample_size)
        return acc

    def merge_accumulators(self, accs):
        accs = iter(accs)
        first = next(accs)
        for a in accs:
            first.absorb(a.num_rows, a.priority, a.keys,
                         a.ids if a.ids is not None else np.empty(0), a.schema,
                         self.sample_size)
        return first

    def extract_output(self, acc):
        n = acc.num_rows
        num_shards = self.num_shards or max(1, math.ceil(n / self.rows_per_shard))
        ids = acc.ids if acc.ids is not None else np.empty(0, np.int64)
        bkeys, bids = range_boundaries(acc.keys, ids, num_shards)
        return SortPlan(n, num_shards, bkeys, bids, acc.schema)


class _RangePartitionFn(beam.DoFn):
    """Split a batch into per-shard sub-batches: (shard index, RecordBatch)."""

    def process(self, batch, plan):
        n = batch.num_rows
        if not n:
            return
        keys = batch.column(SORT_KEY).to_numpy(zero_copy_only=False)
        shard = shard_of(keys, _ids_array(batch), plan.boundary_keys, plan.boundary_ids)
        order = np.argsort(shard, kind='stable')
        counts = np.bincount(shard, minlength=plan.num_shards)
        ends = np.cumsum(counts)
        for s in np.flatnonzero(counts):  # a loop over shards, not rows
            idx = order[ends[s] - counts[s]:ends[s]]
            # take() copies: a pickled slice would carry the whole batch's buffers.
            yield int(s), batch.take(pa.array(idx))


class _SortShardFn(beam.DoFn):
    """Concatenate one shard's sub-batches and sort them by (key, id)."""

    def process(self, item, plan):
        index, parts = item
        batches = [b for b in parts if b is not None]
        if not batches:
            schema = plan.schema if plan.schema is not None else pa.schema([])
            yield SortedShard(index, plan.num_shards, schema.empty_table())
            return
        table = pa.Table.from_batches(batches)
        keys = table.column(SORT_KEY).to_numpy()
        ids = table.column('id').to_numpy()
        order = lex_order(keys, ids)
        table = table.drop_columns([SORT_KEY]).take(pa.array(order))
        yield SortedShard(index, plan.num_shards, table.combine_chunks())


class SortByNorm(beam.PTransform):
    """Sort points RecordBatches by one norm into ordered shards, without a global gather.

    Input: RecordBatches with ``id`` and ``features`` (and any other columns,
    kept). When the batch has a column named ``norm`` (e.g. after
    :class:`ComputeNorms`), its values are the key; otherwise the norm is
    computed. Output: one :class:`SortedShard` ``(index, num_shards, table)`` per
    shard, ``0 .. num_shards - 1``, every shard present (possibly empty).

    Order: (norm descending, id ascending) by default, (norm ascending, id
    ascending) with ``descending=False``; NaN norms (only with ``--allow_nan``
    input) come last either way. This is a total order respected across shards:
    every row of shard ``i`` comes before every row of shard ``i + 1``, and each
    shard's table is sorted. Rows with equal norm may sit on both sides of a
    shard boundary, ordered by id.

    Parameters
    ----------
    norm : {'l0', 'l1', 'l2', 'linf'}
    descending : bool
    num_shards : int or None
        None: ``ceil(rows / rows_per_shard)`` (1 up to a million rows), decided
        from the row count at run time.
    rows_per_shard : int
    sample_size : int or None
        Rows sampled to choose the boundaries; None: ``max(16384, 64 * num_shards)``.
        Shard sizes are balanced to about ``1 / sqrt(sample_size / num_shards)``.
    random_state : int
    """

    def __init__(self, norm: str = 'l2', descending: bool = True,
                 num_shards: int | None = None, *, rows_per_shard: int = ROWS_PER_SHARD,
                 sample_size: int | None = None, random_state: int = 0,
                 label: str | None = None):
        super().__init__(label)
        if norm not in NORMS:
            raise BeammlError(f'unknown norm {norm!r}; one of {", ".join(NORMS)}')
        if num_shards is not None and num_shards < 1:
            raise BeammlError(f'num_shards must be >= 1, got {num_shards}')
        if rows_per_shard < 1:
            raise BeammlError(f'rows_per_shard must be >= 1, got {rows_per_shard}')
        self.norm, self.descending, self.num_shards = norm, descending, num_shards
        self.rows_per_shard, self.random_state = rows_per_shard, random_state
        self.sample_size = sample_size or max(16384, 64 * (num_shards or 0))

    def expand(self, batches):
        keyed = batches | 'AddSortKey' >> beam.Map(_add_sort_key, self.norm, self.descending)
        plan = beam.pvalue.AsSingleton(
            keyed | 'SampleSortKeys' >> beam.CombineGlobally(_SortSampleFn(
                self.num_shards, self.sample_size, self.rows_per_shard, self.random_state)))
        parts = keyed | 'RangePartition' >> beam.ParDo(_RangePartitionFn(), plan)
        # Every shard gets a (possibly empty) group, so every output file exists.
        every = (batches.pipeline
                 | 'ShardSeed' >> beam.Create([None])
                 | 'EveryShard' >> beam.FlatMap(
                     lambda _, p: [(i, None) for i in range(p.num_shards)], plan))
        return ((parts, every)
                | 'FlattenShards' >> beam.Flatten()
                | 'GroupByShard' >> beam.GroupByKey()
                | 'SortShards' >> beam.ParDo(_SortShardFn(), plan))


# ----------------------------------------------------------------------------- Beam: writing

def shard_path(prefix: str, index: int, num_shards: int, output_format: str) -> str:
    return f'{prefix}-{index:05d}-of-{num_shards:05d}.{output_format}'


class _WriteShardFn(beam.DoFn):
    """Write one SortedShard to its own file (via a temporary name, then a rename)."""

    def __init__(self, prefix: str, output_format: str, schema: pa.Schema | None):
        self.prefix, self.output_format, self.schema = prefix, output_format, schema

    def process(self, shard: SortedShard):
        final = shard_path(self.prefix, shard.index, shard.num_shards, self.output_format)
        temp = f'{final}.tmp-{uuid.uuid4().hex}'
        table = shard.table
        if self.schema is not None and table.num_rows == 0:
            table = self.schema.empty_table()
        elif self.schema is not None:
            table = table.select(self.schema.names)
        writer = _ShardWriter(FileSystems.create(temp), self.output_format,
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


def _remove_stale_shards(paths: list[str], prefix: str, output_format: str) -> list[str]:
    """Delete ``prefix-?????-of-?????.<fmt>`` files that this run did not write."""
    keep = set(paths)
    pattern = f'{prefix}-?????-of-?????.{output_format}'
    stale = [m.path for r in FileSystems.match([pattern]) for m in r.metadata_list
             if m.path not in keep]
    if stale:
        FileSystems.delete(stale)
    return sorted(paths)


class WriteSortedShards(beam.PTransform):
    """Write :class:`SortedShard`s: shard ``i`` of ``N`` to ``PREFIX-iiiii-of-NNNNN.<fmt>``.

    File name order is the sort order. Files of an earlier run with the same
    prefix and format but another shard count are deleted. Returns a
    PCollection holding the sorted list of the paths written.
    """

    def __init__(self, prefix: str, output_format: str = 'parquet', *,
                 schema: pa.Schema | None = None, label: str | None = None):
        super().__init__(label)
        if output_format not in OUTPUT_FORMATS:
            raise BeammlError(f'unknown output format {output_format!r}; one of {OUTPUT_FORMATS}')
        self.prefix, self.output_format, self.schema = prefix, output_format, schema

    def expand(self, shards):
        return (shards
                | 'WriteShardFiles' >> beam.ParDo(
                    _WriteShardFn(self.prefix, self.output_format, self.schema))
                | 'ListShardFiles' >> beam.combiners.ToList()
                | 'RemoveStaleShards' >> beam.Map(
                    _remove_stale_shards, self.prefix, self.output_format))
