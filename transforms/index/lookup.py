"""The plain-Python dense id index: :class:`IdIndex` (id <-> idx, vectorised, no Beam), its files.

An :class:`IdIndex` is built from an id2idx table (``id, idx``), a file or glob
of one (Parquet, CSV or JSON lines; local or gs://), a mapping or an array of
ids; lookups are exact and vectorised (:class:`_IdLookup`).
"""
from __future__ import annotations

import os
import posixpath
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beamml.transforms.index.kernels import as_ids, dense_index, normalise_ids, to_arrow
from beamml.transforms.core.documents import write_bytes

__all__ = ['read_id2idx', 'IdIndex']

_MAX_SORT_WIDTH = 64               # string ids up to this many bytes use a sorted bytes array
_SHOW = 10                         # unknown ids named in a KeyError


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
            table = pa.table({'id': as_ids(list(source.keys())),
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
        ids = as_ids(table.column('id'))
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
        """Write the id2idx table as one Parquet file (local path or gs://), whole:
        a reader never sees half a file."""
        sink = pa.BufferOutputStream()
        pq.write_table(self.to_table(), sink)
        write_bytes(path, sink.getvalue().to_pybytes())

    def _query(self, ids) -> tuple[pa.Array, pa.Array, bool]:
        """(ids as given, ids as this index's type with null where not castable, scalar?)."""
        scalar = not isinstance(ids, (pa.Array, pa.ChunkedArray)) and np.ndim(ids) == 0
        if scalar:
            ids = [ids.item() if isinstance(ids, np.generic) else ids]
        try:
            arr = to_arrow(ids)
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

