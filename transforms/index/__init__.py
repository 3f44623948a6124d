"""Dense id index: number the distinct ids of a table 0..n-1 (id2idx) and re-encode rows with it.

Ids are int64 or strings. Two orders:

* ``first_seen``: by first appearance, files in path order and rows in file
  order: ids ``[15, 12, 14, 10, 1, 2, 1]`` give idx ``[0, 1, 2, 3, 4, 5, 4]``;
* ``sorted``: distinct ids in ascending order (strings by code point).

The module reads top to bottom in three parts: kernels on pyarrow / numpy arrays
(:func:`first_keys`, :func:`number_ids`, :func:`dense_index`), the plain-Python
:class:`IdIndex` (id <-> idx, vectorised, no Beam), then the Beam adapters and
composites (:class:`BuildIdIndex`, :class:`EncodeIds`, :class:`IndexIds`).

How the Beam graph numbers ids without gathering rows: every batch is reduced to
its distinct ids with the smallest *source key* ``(file rank << 40) | row`` they
appear with (:func:`first_keys`); :class:`MinKeyPerIdFn` merges those per-batch
tables (concatenate, then a hash group-by keeping the minimum key), and
:func:`number_ids` ranks the result. The rows themselves never leave their
workers: the id2idx table goes back to them as a side input.

Limitation: the final merge and the ranking hold every *distinct* id (not every
row) on one worker, about 16 bytes per int64 id (more for strings): tens of
millions of distinct ids fit in a few GB; beyond that the numbering needs a
distributed sort.
"""
from __future__ import annotations

import os
import posixpath
from typing import Any, Iterable, Mapping, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beamml.transforms.io import BeammlError
from beamml.transforms.io.types import SOURCE_COLUMNS, is_string_type

__all__ = [
    'ORDERS', 'SOURCE_COLUMNS', 'ROW_BITS', 'source_keys', 'first_keys', 'number_ids',
    'dense_index', 'id2idx_schema', 'normalise_ids', 'promote_types', 'conform_batch',
    'read_id2idx', 'IdIndex', 'MinKeyPerIdFn', 'UnifySchemasFn', 'BuildIdIndex', 'EncodeIds',
    'IndexIds', 'table_batches',
]

ORDERS = ('first_seen', 'sorted')
ROW_BITS = 40                      # rows per file < 2**40; files < 2**23
MAX_FILES = 1 << (63 - ROW_BITS)
_MAX_SORT_WIDTH = 64               # string ids up to this many bytes use a sorted bytes array
_SHOW = 10                         # unknown ids named in a KeyError
_SORT_ROWS = 1 << 18               # first_keys of int ids up to this size: numpy sort


# ----------------------------------------------------------------------------- kernels

def normalise_ids(values, id_type: pa.DataType) -> pa.Array:
    """The id column of a batch as ``id_type`` (int64 or string).

    A CSV file that fell back to text gives its integer ids as strings (already
    checked to be integers by the reader); they are trimmed and cast back.
    """
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if arr.type.equals(id_type):
        return arr
    if pa.types.is_integer(id_type) and is_string_type(arr.type):
        arr = pc.utf8_trim_whitespace(arr)
    return pc.cast(arr, id_type)


def source_keys(file_rank: np.ndarray, row: np.ndarray) -> np.ndarray:
    """One int64 per row ordering rows by (file rank, row): ``(file_rank << 40) | row``.

    Parameters
    ----------
    file_rank : ndarray of shape (n_samples,), int
        Position of the row's file among the input files (path order).
    row : ndarray of shape (n_samples,), int
        Data row in its file (0 = first data row).

    Returns
    -------
    ndarray of shape (n_samples,), int64
    """
    file_rank = np.asarray(file_rank, dtype=np.int64)
    row = np.asarray(row, dtype=np.int64)
    if len(row) and (row.min() < 0 or row.max() >= (1 << ROW_BITS)):
        raise ValueError(f'row numbers must be in [0, 2**{ROW_BITS})')
    if len(file_rank) and (file_rank.min() < 0 or file_rank.max() >= MAX_FILES):
        raise ValueError(f'at most {MAX_FILES} input files')
    return (file_rank << ROW_BITS) | row


def _first_keys_schema(id_type: pa.DataType) -> pa.Schema:
    return pa.schema([('id', id_type), ('key', pa.int64())])


def first_keys(ids, keys) -> pa.Table:
    """Each distinct id once, with the smallest key it appears with.

    Parameters
    ----------
    ids : pyarrow Array of shape (n_samples,), int64 or string, no nulls
    keys : array-like of shape (n_samples,), int64
        Position of each row (see :func:`source_keys`).

    Returns
    -------
    pyarrow.Table with columns ``id`` and ``key``, one row per distinct id
    (in no particular order).
    """
    ids = ids if isinstance(ids, (pa.Array, pa.ChunkedArray)) else pa.array(ids)
    if ids.null_count:
        raise ValueError(f'{ids.null_count} null id(s): every row needs an id')
    keys = keys if isinstance(keys, (pa.Array, pa.ChunkedArray)) else pa.array(
        np.asarray(keys, dtype=np.int64))
    if len(keys) != len(ids):
        raise ValueError(f'{len(ids)} ids but {len(keys)} keys')
    if pa.types.is_integer(ids.type) and 0 < len(ids) <= _SORT_ROWS:
        # a batch of int ids: a numpy sort beats the hash group-by (~3x at 65536 rows)
        a = ids.to_numpy() if isinstance(ids, pa.Array) else ids.combine_chunks().to_numpy()
        k = keys.to_numpy() if isinstance(keys, pa.Array) else keys.combine_chunks().to_numpy()
        order = np.lexsort((k, a))
        s = a[order]
        first = np.empty(len(s), dtype=bool)
        first[0] = True
        np.not_equal(s[1:], s[:-1], out=first[1:])
        return pa.table({'id': pa.array(s[first], ids.type), 'key': pa.array(k[order][first])})
    t = pa.table({'id': ids, 'key': keys})
    g = t.group_by('id', use_threads=False).aggregate([('key', 'min')])
    return pa.table({'id': g.column('id'), 'key': g.column('key_min')})


def number_ids(first: pa.Table, order: str = 'first_seen') -> pa.Table:
    """Dense idx 0..n-1 for the distinct ids of a :func:`first_keys` table.

    ``first_seen`` numbers by ascending key (ties, which real positions never
    have, by id); ``sorted`` by ascending id. Returns a table ``id, idx``
    ordered by idx.
    """
    if order not in ORDERS:
        raise ValueError(f'unknown order {order!r}; one of {ORDERS}')
    sort_keys = ([('key', 'ascending'), ('id', 'ascending')] if order == 'first_seen'
                 else [('id', 'ascending')])
    perm = pc.sort_indices(first, sort_keys=sort_keys)
    ids = first.column('id').take(perm).combine_chunks()
    return pa.table({'id': ids, 'idx': pa.array(np.arange(len(ids), dtype=np.int64))})


def id2idx_schema(id_type: pa.DataType) -> pa.Schema:
    return pa.schema([('id', id_type), ('idx', pa.int64())])


def _to_arrow(values) -> pa.Array:
    """A list, tuple, numpy or pyarrow array as one pyarrow Array (no copy of numeric arrays)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        arr = values
    elif isinstance(values, (list, tuple)):
        arr = pa.array(values)
    else:
        a = np.asarray(values)
        if a.ndim != 1:
            raise ValueError(f'ids must be 1-D, got shape {a.shape}')
        # pyarrow cuts numpy's fixed-width text at a NUL: go through Python strings
        arr = pa.array(a.tolist() if a.dtype.kind in 'US' else a)
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    return arr


def _as_ids(values) -> pa.Array:
    """Ids given as a list, numpy array or pyarrow array -> int64 or string pyarrow Array."""
    try:
        arr = _to_arrow(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise TypeError(f'ids must be all integers or all strings: {e}') from None
    if pa.types.is_integer(arr.type):
        return pc.cast(arr, pa.int64())
    if is_string_type(arr.type) or pa.types.is_null(arr.type):
        return pc.cast(arr, pa.string())
    raise TypeError(f'ids must be integers or strings, got {arr.type}')


def dense_index(ids, order: str = 'first_seen') -> pa.Table:
    """id2idx (``id, idx``, ordered by idx) of an array of ids, in this process.

    >>> dense_index([15, 12, 14, 10, 1, 2, 1]).column('id').to_pylist()
    [15, 12, 14, 10, 1, 2]
    """
    ids = _as_ids(ids)
    return number_ids(first_keys(ids, np.arange(len(ids), dtype=np.int64)), order)


# ----------------------------------------------------------------------------- IdIndex

def _examples(values: Sequence[Any], total: int) -> str:
    shown = ', '.join(repr(v) for v in values[:_SHOW])
    return shown + (f' and {total - _SHOW} more' if total > _SHOW else '')


def _duplicates(ids: pa.Array) -> list:
    t = pa.table({'id': ids}).group_by('id', use_threads=False).aggregate([('id', 'count')])
    dup = t.filter(pc.greater(t.column('id_count'), 1))
    return dup.column('id').to_pylist()


class _IdLookup:
    """Exact, vectorised lookup of ids -> their position in an array of unique ids.

    int64 ids: a sorted numpy copy and ``searchsorted``. String ids up to 64
    bytes: the same over a fixed-width bytes array, each hit then checked
    against the real string. Longer strings, or strings holding NUL bytes:
    pyarrow's ``index_in`` (which rebuilds its hash table at every call, so it
    is the slow path).
    """

    def __init__(self, ids: pa.Array):
        self.ids = ids
        self.n = len(ids)
        self.kind = 'hash'
        if pa.types.is_integer(ids.type):
            a = ids.to_numpy(zero_copy_only=False)
            self.order = np.argsort(a, kind='stable')
            self.sorted = a[self.order]
            self.kind = 'int'
            if self.n > 1 and (self.sorted[1:] == self.sorted[:-1]).any():
                self._raise_duplicates()
            return
        width = pc.max(pc.binary_length(ids)).as_py() if self.n else 1
        # numpy's fixed-width bytes drop trailing NULs and mis-order embedded ones
        nul = self.n and pc.any(pc.match_substring(ids, '\x00')).as_py()
        if width is not None and width <= _MAX_SORT_WIDTH and not nul:
            self.width = max(int(width), 1)
            b = self._fixed(ids)
            order = np.argsort(b, kind='stable')
            s = b[order]
            if self.n > 1 and (s[1:] == s[:-1]).any():
                self._raise_duplicates()
            self.order, self.sorted, self.kind = order, s, 'bytes'
            return
        if pc.count_distinct(ids).as_py() != self.n:
            self._raise_duplicates()

    def _raise_duplicates(self):
        dup = _duplicates(self.ids)
        raise ValueError(f'ids are not unique: {_examples(dup, len(dup))} appear more than once')

    def _fixed(self, arr: pa.Array) -> np.ndarray:
        # Longer values are cut to the width: a cut value can only match falsely,
        # and every match is checked against the real string.
        return pc.cast(arr, pa.binary()).to_numpy(zero_copy_only=False).astype(f'S{self.width}')

    def positions(self, q: pa.Array) -> np.ndarray:
        """Position of each id of ``q`` (same type as the ids) in the ids; -1 if absent."""
        nulls = q.is_null().to_numpy(zero_copy_only=False) if q.null_count else None
        if self.n == 0:
            return np.full(len(q), -1, dtype=np.int64)
        if self.kind == 'hash':
            out = pc.fill_null(pc.index_in(q, value_set=self.ids), -1)
            return out.to_numpy(zero_copy_only=False).astype(np.int64)
        if self.kind == 'int':
            qa = pc.fill_null(q, 0).to_numpy(zero_copy_only=False)
        else:
            qa = self._fixed(pc.fill_null(q, ''))
        pos = np.minimum(np.searchsorted(self.sorted, qa), self.n - 1)
        out = np.where(self.sorted[pos] == qa, self.order[pos], -1).astype(np.int64)
        if self.kind == 'bytes':
            hit = np.flatnonzero(out >= 0)
            if len(hit):
                same = pc.equal(self.ids.take(pa.array(out[hit])), q.take(pa.array(hit)))
                out[hit[~pc.fill_null(same, False).to_numpy(zero_copy_only=False)]] = -1
        if nulls is not None:
            out[nulls] = -1
        return out


def _match_paths(path: str) -> list[str]:
    results = FileSystems.match([path])
    paths = sorted(m.path for r in results for m in r.metadata_list if not m.path.endswith('/'))
    if not paths:
        raise FileNotFoundError(f'no id2idx file matches {path}')
    return paths


def read_id2idx(path: str) -> pa.Table:
    """Read an id2idx table (``id, idx``) from a file or glob (Parquet, CSV or JSON lines).

    Shards (``PREFIX-id2idx-*.parquet``) are concatenated; local and gs:// paths.
    """
    tables = []
    for p in _match_paths(path):
        ext = posixpath.splitext(p)[1].lower()
        with FileSystems.open(p, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            if ext in ('.parquet', '.pq'):
                tables.append(pq.read_table(f))
            elif ext == '.csv':
                tables.append(pcsv.read_csv(f))
            elif ext in ('.jsonl', '.json', '.ndjson'):
                tables.append(pjson.read_json(f))
            else:
                raise ValueError(f'cannot read {p}: expected .parquet, .csv or .jsonl')
    return pa.concat_tables(tables, promote_options='permissive')


class IdIndex:
    """A dense id index: ids (int64 or string) <-> idx 0..n-1, vectorised, no Beam.

    Parameters
    ----------
    source : pyarrow Table / RecordBatch with columns ``id`` and ``idx``; a path
        or glob of such a table (Parquet, CSV or JSON lines; e.g. the
        ``PREFIX-id2idx-*.parquet`` shards of ``beamml index_ids``); a mapping
        ``{id: idx}``; or an array of ids (with repeats), numbered by ``order``.
    order : {'first_seen', 'sorted'}, optional
        Only for an array of ids; default ``first_seen``.

    Examples
    --------
    >>> index = IdIndex([15, 12, 14, 10, 1, 2, 1])
    >>> index.get_users_idx([15, 12, 14, 10, 1, 2, 1]).tolist()
    [0, 1, 2, 3, 4, 5, 4]
    >>> index.get_users_id([4, 0]).tolist()
    [1, 15]
    """

    def __init__(self, source, *, order: str | None = None):
        if isinstance(source, (str, os.PathLike)):
            table = read_id2idx(os.fspath(source))
        elif isinstance(source, (pa.Table, pa.RecordBatch)):
            table = source
        elif isinstance(source, Mapping):
            table = pa.table({'id': _as_ids(list(source.keys())),
                              'idx': pa.array(list(source.values()), pa.int64())})
        else:
            table = dense_index(source, order or 'first_seen')
            order = None
        if order is not None:
            raise ValueError('order applies only when the index is built from an array of ids')
        self._ids = self._ids_by_idx(table)
        self._lookup = _IdLookup(self._ids)

    @staticmethod
    def _ids_by_idx(table) -> pa.Array:
        missing = [c for c in ('id', 'idx') if c not in table.schema.names]
        if missing:
            raise ValueError(f'an id2idx table needs columns id and idx; it has '
                             f'{", ".join(table.schema.names) or "none"}')
        ids = _as_ids(table.column('id'))
        idx = table.column('idx')
        if isinstance(idx, pa.ChunkedArray):
            idx = idx.combine_chunks()
        if ids.null_count:
            raise ValueError(f'{ids.null_count} null id(s) in the id2idx table')
        if idx.null_count or not pa.types.is_integer(idx.type):
            raise ValueError(f'idx must be integers without nulls, got {idx.type} '
                             f'with {idx.null_count} null(s)')
        n = len(ids)
        idx = idx.to_numpy(zero_copy_only=False).astype(np.int64)
        if n and (idx.min() < 0 or idx.max() >= n or
                  np.bincount(idx, minlength=n).max() != 1):
            raise ValueError(f'idx must be a permutation of 0..{n - 1} (dense, each once)')
        if n and not (idx == np.arange(n)).all():
            inverse = np.empty(n, dtype=np.int64)
            inverse[idx] = np.arange(n)
            ids = ids.take(pa.array(inverse))
        return ids

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return f'IdIndex({len(self)} ids, {self.id_type})'

    @property
    def id_type(self) -> pa.DataType:
        return self._ids.type

    @property
    def ids(self) -> np.ndarray:
        """The ids in idx order: ``ids[i]`` has idx ``i`` (int64, or an object array of str)."""
        return self._ids.to_numpy(zero_copy_only=False)

    def to_table(self) -> pa.Table:
        """The id2idx table: columns ``id, idx``, ordered by idx."""
        return pa.table({'id': self._ids,
                         'idx': pa.array(np.arange(len(self), dtype=np.int64))})

    def save(self, path: str) -> None:
        """Write the id2idx table as one Parquet file (local path or gs://)."""
        with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            pq.write_table(self.to_table(), f)

    def _query(self, ids) -> tuple[pa.Array, pa.Array, bool]:
        """(ids as given, ids as this index's type with null where not castable, scalar?)."""
        scalar = not isinstance(ids, (pa.Array, pa.ChunkedArray)) and np.ndim(ids) == 0
        if scalar:
            ids = [ids.item() if isinstance(ids, np.generic) else ids]
        try:
            arr = _to_arrow(ids)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed ints and strings
            arr = pa.array([None if v is None else str(v) for v in ids], pa.string())
        try:
            return arr, normalise_ids(arr, self.id_type), scalar
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            # e.g. 'abc' asked of an integer index: that id is unknown. Error path
            # only: test each distinct value, then null the ones that do not cast.
            distinct = pc.unique(arr)
            bad = []
            for v in distinct.to_pylist():
                try:
                    normalise_ids(pa.array([v], arr.type), self.id_type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                    bad.append(v)
            castable = pc.if_else(pc.is_in(arr, value_set=pa.array(bad, arr.type)),
                                  pa.scalar(None, arr.type), arr)
            return arr, normalise_ids(castable, self.id_type), scalar

    def get_users_idx(self, ids):
        """idx of each id.

        Parameters
        ----------
        ids : array-like of shape (n,) or a scalar; int or str, as the index

        Returns
        -------
        ndarray of shape (n,), int64 (an int for a scalar)

        Raises
        ------
        KeyError naming the ids that are not in the index.
        """
        given, q, scalar = self._query(ids)
        pos = self._lookup.positions(q)
        missing = np.flatnonzero(pos < 0)
        if len(missing):
            bad = given.take(pa.array(missing[:_SHOW])).to_pylist()
            raise KeyError(f'{len(missing)} unknown id(s): {_examples(bad, len(missing))} '
                           f'(not among the {len(self)} ids of this index)')
        return int(pos[0]) if scalar else pos

    def get_users_id(self, idx):
        """Id of each idx.

        Parameters
        ----------
        idx : array-like of shape (n,) or a scalar, integers in [0, len(self))

        Returns
        -------
        ndarray of shape (n,) (int64, or object holding str); a scalar for a scalar

        Raises
        ------
        KeyError naming the idx out of range; TypeError for non-integers.
        """
        a = np.asarray(idx)
        scalar = a.ndim == 0
        a = np.atleast_1d(a)
        if a.ndim != 1:
            raise ValueError(f'idx must be 1-D, got shape {a.shape}')
        if a.dtype.kind not in 'iu' and not (a.dtype.kind in 'fO' and len(a) == 0):
            raise TypeError(f'idx must be integers, got {a.dtype}')
        a = a.astype(np.int64)
        bad = np.flatnonzero((a < 0) | (a >= len(self)))
        if len(bad):
            raise KeyError(f'{len(bad)} idx out of range [0, {len(self)}): '
                           f'{_examples(a[bad[:_SHOW]].tolist(), len(bad))}')
        if scalar:
            return self._ids[int(a[0])].as_py()
        return self._ids.take(pa.array(a)).to_numpy(zero_copy_only=False)


# ----------------------------------------------------------------------------- schemas

def promote_types(a: pa.DataType, b: pa.DataType, name: str = '') -> pa.DataType:
    """The type two files' versions of a column are written as.

    Equal types stay; null gives way; integers widen to int64, integers and
    floats to float64; anything else scalar meets as string. Nested types that
    differ are an error.
    """
    if pa.types.is_dictionary(a):
        a = a.value_type
    if pa.types.is_dictionary(b):
        b = b.value_type
    if a.equals(b):
        return a
    if pa.types.is_null(a):
        return b
    if pa.types.is_null(b):
        return a
    if pa.types.is_integer(a) and pa.types.is_integer(b):
        return pa.int64()
    num = (pa.types.is_integer, pa.types.is_floating)
    if any(f(a) for f in num) and any(f(b) for f in num):
        return pa.float64()
    if pa.types.is_nested(a) or pa.types.is_nested(b):
        raise BeammlError(f'column {name!r} is {a} in one input file and {b} in another; '
                          'make the files agree')
    return pa.string()


def conform_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """The batch with exactly the schema's columns and types (missing columns are null)."""
    arrays = []
    names = batch.schema.names
    for field in schema:
        if field.name in names:
            col = batch.column(field.name)
            if pa.types.is_dictionary(col.type) and not pa.types.is_dictionary(field.type):
                col = col.dictionary_decode()
            if not col.type.equals(field.type):
                col = pc.cast(col, field.type)
            arrays.append(col)
        else:
            arrays.append(pa.nulls(batch.num_rows, field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


# ----------------------------------------------------------------------------- Beam

def _file_ranks(files, rank: Mapping[str, int]) -> np.ndarray:
    if isinstance(files, pa.ChunkedArray):
        files = files.combine_chunks()
    if not pa.types.is_dictionary(files.type):
        files = pc.dictionary_encode(files)
    try:
        # a loop over the batch's distinct files (one), not its rows
        ranks = np.array([rank[p] for p in files.dictionary.to_pylist()], dtype=np.int64)
    except KeyError as e:
        raise ValueError(f'batch from a file that is not among the input files: {e}') from None
    return ranks[files.indices.to_numpy(zero_copy_only=False)]


class _FirstKeysFn(beam.DoFn):
    """Batch (with ``_file``, ``_row``) -> table of its distinct ids and first source key."""

    def __init__(self, id_column: str, paths: Sequence[str]):
        self.id_column = id_column
        self.rank = {p: i for i, p in enumerate(paths)}
        if len(self.rank) >= MAX_FILES:
            raise BeammlError(f'{len(paths)} input files; at most {MAX_FILES - 1}')

    def process(self, batch: pa.RecordBatch):
        if batch.num_rows == 0:
            return
        keys = source_keys(_file_ranks(batch.column('_file'), self.rank),
                           batch.column('_row').to_numpy(zero_copy_only=False))
        yield first_keys(batch.column(self.id_column), keys)


class MinKeyPerIdFn(beam.CombineFn):
    """Tables ``(id, key)`` -> one table with each distinct id once and its smallest key.

    The accumulator is a list of tables, the first compacted; the others are
    compacted into it (concatenate, then a hash group-by keeping the minimum)
    once they hold as many rows as it, so each row is re-merged O(log n) times.
    It holds distinct ids, never rows.
    """

    def __init__(self, id_type: pa.DataType = pa.int64(), compact_rows: int = 1 << 16):
        self.schema = _first_keys_schema(id_type)
        self.compact_rows = compact_rows

    def create_accumulator(self):
        return [self.schema.empty_table()]

    def _reduce(self, tables) -> pa.Table:
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return self.schema.empty_table()
        if len(tables) == 1:
            return tables[0]
        t = pa.concat_tables([t.cast(self.schema) for t in tables])
        return first_keys(t.column('id'), t.column('key'))

    def _maybe_compact(self, acc):
        pending = sum(t.num_rows for t in acc[1:])
        if pending >= max(acc[0].num_rows, self.compact_rows):
            acc[:] = [self._reduce(acc)]
        return acc

    def add_input(self, acc, table):
        acc.append(table)
        return self._maybe_compact(acc)

    def merge_accumulators(self, accumulators):
        it = iter(accumulators)
        first = next(it)
        for acc in it:
            first.extend(acc)
        return self._maybe_compact(first)

    def compact(self, acc):
        return [self._reduce(acc)]

    def extract_output(self, acc):
        return self._reduce(acc)


def _schema_without_source(batch: pa.RecordBatch) -> pa.Schema:
    return pa.schema([f for f in batch.schema if f.name not in SOURCE_COLUMNS])


class UnifySchemasFn(beam.CombineFn):
    """Batch schemas -> the one schema every batch is written with (:func:`promote_types`).

    Columns come in ``columns`` order (the first file's), then any others by name.
    """

    def __init__(self, columns: Sequence[str] = ()):
        self.columns = tuple(columns)

    def create_accumulator(self):
        return {}

    def add_input(self, acc, schema: pa.Schema):
        for field in schema:
            acc[field.name] = (promote_types(acc[field.name], field.type, field.name)
                               if field.name in acc else field.type)
        return acc

    def merge_accumulators(self, accumulators):
        it = iter(accumulators)
        first = next(it)
        for acc in it:
            self.add_input(first, pa.schema(list(acc.items())))
        return first

    def extract_output(self, acc):
        names = [c for c in self.columns if c in acc]
        names += sorted(set(acc) - set(names))
        return pa.schema([(n, acc[n]) for n in names])


class _EncodeFn(beam.DoFn):
    """Append ``idx`` to a batch (its id column looked up in the id2idx side input)."""

    def __init__(self, id_column: str, idx_column: str = 'idx'):
        self.id_column, self.idx_column = id_column, idx_column
        self._table = None
        self._index = None

    def _index_of(self, table: pa.Table) -> IdIndex:
        # The side input is decoded again for some bundles: rebuild only when it changed.
        if self._table is None or (self._table is not table and not self._table.equals(table)):
            self._index, self._table = IdIndex(table), table
        return self._index

    def process(self, batch: pa.RecordBatch, id2idx: pa.Table, schema: pa.Schema):
        index = self._index_of(id2idx)
        batch = conform_batch(batch, schema)
        idx = index.get_users_idx(batch.column(self.id_column))
        yield batch.append_column(self.idx_column, pa.array(idx))


def table_batches(table: pa.Table, max_rows: int = 1 << 16) -> Iterable[pa.RecordBatch]:
    return table.to_batches(max_chunksize=max_rows)


class BuildIdIndex(beam.PTransform):
    """Batches with ``_file`` and ``_row`` -> a PCollection of one id2idx table ``id, idx``.

    Parameters
    ----------
    id_column : the column holding the ids (already of type ``id_type``)
    paths : the input files in path order (``ReadTable(...).paths``): a row's
        first-seen position is (its file's place in this list, its row)
    order : 'first_seen' or 'sorted'
    """

    def __init__(self, id_column: str, paths: Sequence[str], *, order: str = 'first_seen',
                 id_type: pa.DataType = pa.int64(), label: str | None = None):
        super().__init__(label)
        if order not in ORDERS:
            raise BeammlError(f'unknown order {order!r}; one of {", ".join(ORDERS)}')
        self.id_column, self.paths = id_column, list(paths)
        self.order, self.id_type = order, id_type

    def expand(self, batches):
        return (batches
                | 'FirstKeysPerBatch' >> beam.ParDo(_FirstKeysFn(self.id_column, self.paths))
                | 'FirstKeysGlobally' >> beam.CombineGlobally(MinKeyPerIdFn(self.id_type))
                | 'NumberIds' >> beam.Map(number_ids, order=self.order))


class EncodeIds(beam.PTransform):
    """Batches -> the same rows with an ``idx`` column, looked up in an id2idx side input.

    ``_file`` and ``_row`` are dropped; every batch is cast to one schema (a CSV
    file read as text and another read as numbers meet as text, ints and floats
    as floats), so the output shards agree.
    """

    def __init__(self, id_column: str, id2idx, *, columns: Sequence[str] = (),
                 label: str | None = None):
        super().__init__(label)
        self.id_column, self.id2idx, self.columns = id_column, id2idx, tuple(columns)

    def expand(self, batches):
        schema = (batches
                  | 'BatchSchemas' >> beam.Map(_schema_without_source)
                  | 'UnifySchemas' >> beam.CombineGlobally(UnifySchemasFn(self.columns)))
        return batches | 'AppendIdx' >> beam.ParDo(
            _EncodeFn(self.id_column), beam.pvalue.AsSingleton(self.id2idx),
            beam.pvalue.AsSingleton(schema))


class IndexIds(beam.PTransform):
    """Batches of ``ReadTable(..., id_column=C, source_columns=True)`` -> id2idx and encoded.

    Returns ``{'id2idx': PCollection of one pa.Table (id, idx), 'encoded':
    PCollection of RecordBatches (the input columns + idx)}``.
    """

    def __init__(self, id_column: str, paths: Sequence[str], *, order: str = 'first_seen',
                 id_type: pa.DataType = pa.int64(), columns: Sequence[str] = (),
                 label: str | None = None):
        super().__init__(label)
        self.id_column, self.paths, self.order = id_column, list(paths), order
        self.id_type, self.columns = id_type, tuple(columns)

    def expand(self, batches):
        ids = batches | 'NormaliseIds' >> beam.Map(self._normalise, self.id_column, self.id_type)
        id2idx = ids | 'BuildIdIndex' >> BuildIdIndex(
            self.id_column, self.paths, order=self.order, id_type=self.id_type)
        encoded = ids | 'EncodeIds' >> EncodeIds(self.id_column, id2idx, columns=self.columns)
        return {'id2idx': id2idx, 'encoded': encoded}

    @staticmethod
    def _normalise(batch: pa.RecordBatch, id_column: str, id_type: pa.DataType):
        i = batch.schema.get_field_index(id_column)
        return batch.set_column(i, id_column, normalise_ids(batch.column(i), id_type))
