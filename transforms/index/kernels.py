"""Beam-free id kernels: normalise id columns, order rows by source position, number the ids.

Ids are int64 or strings. Two orders:

* ``first_seen``: by first appearance, files in path order and rows in file
  order: ids ``[15, 12, 14, 10, 1, 2, 1]`` give idx ``[0, 1, 2, 3, 4, 5, 4]``;
* ``sorted``: distinct ids in ascending order (strings by code point).

A row's position is one int64 *source key* ``(file rank << 40) | row``
(:func:`source_keys`); :func:`first_keys` reduces a batch to its distinct ids
with the smallest key they appear with, :func:`merge_first_keys` merges such
tables, and :func:`number_ids` ranks the result.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamml.transforms.core.types import is_string_type

__all__ = [
    'ORDERS', 'ROW_BITS', 'MAX_FILES', 'normalise_ids', 'as_ids', 'to_arrow', 'file_ranks',
    'source_keys', 'first_keys_schema', 'first_keys', 'merge_first_keys', 'number_ids',
    'id2idx_schema', 'dense_index',
]

ORDERS = ('first_seen', 'sorted')
ROW_BITS = 40                      # rows per file < 2**40; files < 2**23
MAX_FILES = 1 << (63 - ROW_BITS)
_SORT_ROWS = 1 << 18               # first_keys of int ids up to this size: numpy sort


# ----------------------------------------------------------------------------- id arrays

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


def to_arrow(values) -> pa.Array:
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


def as_ids(values) -> pa.Array:
    """Ids given as a list, numpy array or pyarrow array -> int64 or string pyarrow Array."""
    try:
        arr = to_arrow(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise TypeError(f'ids must be all integers or all strings: {e}') from None
    if pa.types.is_integer(arr.type):
        return pc.cast(arr, pa.int64())
    if is_string_type(arr.type) or pa.types.is_null(arr.type):
        return pc.cast(arr, pa.string())
    raise TypeError(f'ids must be integers or strings, got {arr.type}')


# ----------------------------------------------------------------------------- source keys

def file_ranks(files, rank: Mapping[str, int]) -> np.ndarray:
    """Rank of each row's file (a ``_file`` column) among the input files.

    Parameters
    ----------
    files : pyarrow (Chunked)Array of shape (n_samples,), string or dictionary of strings
    rank : mapping of file path -> position in path order

    Returns
    -------
    ndarray of shape (n_samples,), int64
    """
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


# ----------------------------------------------------------------------------- numbering

def first_keys_schema(id_type: pa.DataType) -> pa.Schema:
    """Schema of a :func:`first_keys` table: ``id`` (``id_type``), ``key`` (int64)."""
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


def merge_first_keys(tables: Iterable[pa.Table], schema: pa.Schema) -> pa.Table:
    """Several :func:`first_keys` tables -> one: each id once, with its smallest key.

    ``schema`` is :func:`first_keys_schema` of the id type; empty tables are
    skipped, and a single table is returned as it is.
    """
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return schema.empty_table()
    if len(tables) == 1:
        return tables[0]
    t = pa.concat_tables([t.cast(schema) for t in tables])
    return first_keys(t.column('id'), t.column('key'))


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
    """Schema of an id2idx table: ``id`` (``id_type``), ``idx`` (int64)."""
    return pa.schema([('id', id_type), ('idx', pa.int64())])


def dense_index(ids, order: str = 'first_seen') -> pa.Table:
    """id2idx (``id, idx``, ordered by idx) of an array of ids, in this process.

    >>> dense_index([15, 12, 14, 10, 1, 2, 1]).column('id').to_pylist()
    [15, 12, 14, 10, 1, 2]
    """
    ids = as_ids(ids)
    return number_ids(first_keys(ids, np.arange(len(ids), dtype=np.int64)), order)
