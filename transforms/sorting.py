"""Distributed sort of points by one norm: sampled range boundaries, per-shard sort, ordered shards.

``SortByNorm`` orders a point cloud by one norm without gathering it on one
worker: a mergeable random sample of the sort keys gives range boundaries, each
batch is split into per-shard sub-batches, and each shard is grouped and sorted
on its own. :class:`~beamml.transforms.norms.WriteSortedShards` writes shard
``i`` to file ``i``, so reading the files in name order gives the whole data set
in norm order.

The module reads: the numpy kernels of the order (:func:`sort_keys`,
:func:`lex_order`, :func:`range_boundaries`, :func:`shard_of`), the Beam
adapters (the bottom-k sample CombineFn, the range partition and per-shard sort
DoFns), then :class:`SortByNorm`.
"""
from __future__ import annotations

import math
import typing
import zlib

import apache_beam as beam
import numpy as np
import pyarrow as pa

from beamml.transforms.core.combining import merge_into_first
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.io import features_matrix
from beamml.transforms.norms import NORMS, row_norms

__all__ = ['sort_keys', 'lex_order', 'range_boundaries', 'shard_of', 'SortPlan',
           'SortedShard', 'SortByNorm', 'ROWS_PER_SHARD', 'SORT_KEY']

SORT_KEY = '_sort_key'      # column added while sorting, dropped before output
ROWS_PER_SHARD = 1_000_000  # default num_shards = ceil(rows / ROWS_PER_SHARD)


# ----------------------------------------------------------------------------- kernels

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


# ----------------------------------------------------------------------------- adapters

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


@beam.typehints.with_input_types(pa.RecordBatch)
@beam.typehints.with_output_types(SortPlan)
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
        return merge_into_first(accs, lambda first, a: first.absorb(
            a.num_rows, a.priority, a.keys, a.ids if a.ids is not None else np.empty(0),
            a.schema, self.sample_size))

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


# ----------------------------------------------------------------------------- composite

class SortByNorm(beam.PTransform):
    """Sort points RecordBatches by one norm into ordered shards, without a global gather.

    Input: RecordBatches with ``id`` and ``features`` (and any other columns,
    kept). When the batch has a column named ``norm`` (e.g. after
    :class:`~beamml.transforms.norms.ComputeNorms`), its values are the key;
    otherwise the norm is computed. Output: one :class:`SortedShard` ``(index,
    num_shards, table)`` per shard, ``0 .. num_shards - 1``, every shard present
    (possibly empty).

    Order: (norm descending, id ascending) by default, (norm ascending, id
    ascending) with ``descending=False``; NaN norms (only where the reader let
    NaN features through) come last either way. ``l0`` is never NaN (it counts
    NaN entries as non-zero), so by ``l0`` a row with a NaN sorts by its count.
    This is a total order respected across shards: every row of shard ``i``
    comes before every row of shard ``i + 1``, and each shard's table is sorted.
    Rows with equal norm may sit on both sides of a shard boundary, ordered by id.

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
            raise BeammlError(f'num_shards must be >= 1, got {num_shards}',
                              parameters=('num_shards',))
        if rows_per_shard < 1:
            raise BeammlError(f'rows_per_shard must be >= 1, got {rows_per_shard}',
                              parameters=('rows_per_shard',))
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
