"""Rows read from a file become points or checked table rows: RowBatch, RowReasons, to_points.

The checks are vectorised over a whole batch: one small integer reason code per
row (:class:`RowReasons`, the first reason wins), and Python touches single rows
only to write the dead letters of the refused ones.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamml.transforms.core.errors import BeammlError, ZERO_VECTOR, dead_letter
from beamml.transforms.io.ids import read_ids
from beamml.transforms.io.layout import Layout
from beamml.transforms.core.types import (NUMBER_RE, SOURCE_COLUMNS, decoded, is_list_type,
                                          is_numeric_type, is_string_type, kind)

__all__ = ['BATCH_ROWS', 'RawRecords', 'RowBatch', 'RowReasons', 'features_matrix',
           'points_batch', 'to_points', 'table_checks', 'with_source_columns', 'source_of']

#: rows per RowBatch a reader yields
BATCH_ROWS = 65536


class RawRecords:
    """The bytes each row of a batch was read from, ``data[starts[i]:ends[i]]``, and
    ``decode``, which turns a list of them back into records as the file writes them:
    a refused row is quoted as read (the CSV text ``1e400``, not the float inf; a JSON
    integer beyond int64 exactly, not rounded). ``decode`` returns None when it cannot
    (the caller then quotes the parsed values)."""
    __slots__ = ('data', 'starts', 'ends', 'decode')

    def __init__(self, data: bytes, starts: np.ndarray, ends: np.ndarray, decode):
        self.data, self.starts, self.ends, self.decode = data, starts, ends, decode

    def take(self, selection) -> 'RawRecords':
        return RawRecords(self.data, self.starts[selection], self.ends[selection], self.decode)

    def records(self, positions: np.ndarray) -> list | None:
        spans = zip(self.starts[positions].tolist(), self.ends[positions].tolist())
        return self.decode([self.data[s:e] for s, e in spans])   # refused rows only


class RowBatch:
    """A block of rows read from one file: the table, each row's place in the file and,
    for a text format, the bytes each row was read from (:class:`RawRecords`)."""
    __slots__ = ('table', 'rows', 'lines', 'raw')

    def __init__(self, table: pa.RecordBatch, rows: np.ndarray, lines: np.ndarray | None,
                 raw: RawRecords | None = None):
        self.table, self.rows, self.lines, self.raw = table, rows, lines, raw


class RowReasons:
    """Why each row of a batch is refused: a small int code per row, first reason wins."""
    __slots__ = ('code', 'texts')

    def __init__(self, n: int):
        self.code = np.zeros(n, dtype=np.int16)
        self.texts: list[str | None] = [None]

    def mark(self, mask: np.ndarray, text: str) -> None:
        """Refuse the rows of ``mask`` not refused yet, for ``text``."""
        m = mask & (self.code == 0)
        if m.any():
            self.texts.append(text)
            self.code[m] = len(self.texts) - 1

    @property
    def refused(self) -> np.ndarray:
        return self.code != 0

    def dead_letters(self, table, path: str | None, rows=None, lines=None,
                     raw: RawRecords | None = None) -> list[dict]:
        """Dead letters of the refused rows of ``table``; ``rows`` / ``lines`` give each
        row's place in its file (None: unknown); ``raw``, the bytes each row was read
        from, lets the record quote the row as read."""
        bad_idx = np.flatnonzero(self.code)
        if not len(bad_idx):
            return []
        records = raw.records(bad_idx) if raw is not None else None
        if records is None:
            records = table.take(pa.array(bad_idx)).to_pylist()
        return [dead_letter(path, None if rows is None else rows[i],
                            None if lines is None else lines[i], self.texts[self.code[i]], rec)
                for i, rec in zip(bad_idx, records)]  # a loop over bad rows only


# ----------------------------------------------------------------------------- kernels

def features_matrix(batch: pa.RecordBatch, column: str = 'features') -> np.ndarray:
    """Zero-copy (n, d) float64 view of a fixed_size_list<float64> column."""
    arr = batch.column(column)
    d = arr.type.list_size
    if arr.offset == 0 and arr.values.offset == 0 and arr.null_count == 0:
        flat = arr.values
    else:
        flat = arr.flatten()
    return flat.to_numpy(zero_copy_only=False).reshape(len(arr), d)


def points_matrix(points) -> np.ndarray:
    """The (n_samples, n_features) float64 matrix of points given as a points
    RecordBatch or Table (its ``features`` column, zero-copy for a batch) or as an
    array-like; anything that is not 2-D is a ValueError."""
    if isinstance(points, pa.RecordBatch):
        return features_matrix(points)
    if isinstance(points, pa.Table):
        if not points.num_rows:
            return np.empty((0, points.schema.field('features').type.list_size))
        return features_matrix(points.combine_chunks().to_batches()[0])
    X = np.asarray(points, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f'X must be 2-D (n_samples, n_features), got shape {X.shape}')
    return X


def points_batch(ids: pa.Array, X: np.ndarray, **columns) -> pa.RecordBatch:
    """A points RecordBatch: id, features (fixed_size_list<float64>[d]) and extra columns."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    feats = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), X.shape[1])
    arrays, names = [ids, feats], ['id', 'features']
    for k, v in columns.items():
        arrays.append(v if isinstance(v, (pa.Array, pa.ChunkedArray)) else pa.array(v))
        names.append(k)
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _string_to_float(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(values, bad) of a string column: bad where a present value is not a number."""
    ok = pc.fill_null(pc.match_substring_regex(arr, NUMBER_RE, ignore_case=True), True)
    okn = ok.to_numpy(zero_copy_only=False)
    cleaned = pc.if_else(ok, pc.utf8_trim_whitespace(arr), pa.scalar(None, pa.string()))
    vals = pc.cast(cleaned, pa.float64())
    return vals, ~okn


def _column_values(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float64 values, missing mask, non-numeric mask) of one scalar column."""
    arr = decoded(arr)
    bad = np.zeros(len(arr), dtype=bool)
    if is_string_type(arr.type):
        arr, bad = _string_to_float(arr)
    elif pa.types.is_null(arr.type):
        arr = pa.nulls(len(arr), pa.float64())
    elif not is_numeric_type(arr.type) and not pa.types.is_boolean(arr.type):
        return (np.full(len(arr), np.nan), np.zeros(len(arr), bool), np.ones(len(arr), bool))
    missing = arr.is_null().to_numpy(zero_copy_only=False) & ~bad
    values = pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)
    return values, missing, bad


def _list_features(arr, col: str, d: int, why: RowReasons) -> np.ndarray:
    n = len(arr)
    arr = decoded(arr)
    if not is_list_type(arr.type):
        why.mark(np.ones(n, bool), f'column {col!r} does not hold lists')
        return np.zeros((n, d))
    values = pc.list_flatten(arr)
    if arr.null_count == 0 and values.null_count == 0 and len(values) == n * d and (
            pa.types.is_fixed_size_list(arr.type) or
            bool(pc.all(pc.equal(pc.list_value_length(arr), d)).as_py() if n else True)):
        vals, _, bad = _column_values(values)
        if not bad.any():
            return vals.reshape(n, d)  # the clean path: one reshape
    lengths = pc.fill_null(pc.list_value_length(arr), -1).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)
    vals, missing, bad = _column_values(values)
    why.mark(lengths < 0, f'missing value in {col!r}')
    row_bad = np.zeros(n, bool)
    row_bad[parents[bad]] = True
    why.mark(row_bad, f'value in {col!r} is not a number')
    row_missing = np.zeros(n, bool)
    row_missing[parents[missing]] = True
    why.mark(row_missing, f'missing value in {col!r}')
    for L in np.unique(lengths[(lengths != d) & (lengths >= 0)]):
        why.mark(lengths == L, f'dimension {int(L)}, expected {d}')
    X = np.zeros((n, d))
    good = lengths == d
    if good.any():
        X[good] = vals[good[parents]].reshape(-1, d)
    return X


def _weights(t, layout: Layout, why: RowReasons) -> np.ndarray:
    """The float64 sample weights of a batch (``layout.weight_column``); a row whose
    weight is missing, not a number, NaN, infinite or negative is marked in ``why``
    (zero is a weight, as scikit-learn's ``sample_weight``)."""
    n = t.num_rows
    col = layout.weight_column
    if col not in t.column_names:   # a JSON block without the key
        why.mark(np.ones(n, bool), 'missing weight')
        return np.zeros(n)
    arr = decoded(t.column(col))
    if pa.types.is_boolean(arr.type):   # true / false is not a weight
        why.mark(arr.is_valid().to_numpy(zero_copy_only=False), 'weight is not a number')
        why.mark(np.ones(n, bool), 'missing weight')
        return np.zeros(n)
    w, missing, bad = _column_values(arr)
    why.mark(bad, 'weight is not a number')
    why.mark(missing, 'missing weight')
    with np.errstate(invalid='ignore'):
        why.mark(np.isnan(w), 'weight is NaN')
        why.mark(np.isinf(w), 'weight is infinite')
        why.mark(w < 0, 'weight is negative')
    return w


# ----------------------------------------------------------------------------- checks

def to_points(rb: RowBatch, layout: Layout, path: str, allow_nan: bool = False,
              source_columns: bool = False, refuse_zero: bool = False
              ) -> tuple[pa.RecordBatch | None, list[dict]]:
    """Turn one RowBatch into a points batch and the dead letters of its bad rows.

    A row is refused with the first reason that applies: a missing or empty id, an id
    of another type (:mod:`~beamml.transforms.io.ids`), a value that is not a number, a missing value, a dimension other than the
    layout's (a list of another length, a .npy file of another width), NaN or inf
    (unless ``allow_nan``), and with ``refuse_zero`` a zero vector (every feature 0:
    what cosine distance is undefined for, :data:`ZERO_VECTOR`); then, with a
    ``layout.weight_column``, a weight that is missing, not a number, NaN, infinite
    or negative (the batch then carries a float64 ``weight`` column). With
    ``source_columns`` the points batch also carries
    :data:`SOURCE_COLUMNS`, so later steps (assignment) can name each row's origin.
    """
    t = rb.table
    n = t.num_rows
    d = layout.dimension
    why = RowReasons(n)
    ids = read_ids(t, rb.rows, layout.id_column, layout.id_type, layout.input_format, path,
                   why)
    if layout.input_format == 'npy':
        X = features_matrix(t)
        if X.shape[1] != d:   # a later file of the glob: one mark for the whole batch
            why.mark(np.ones(n, bool), f'dimension {X.shape[1]}, expected {d}')
            X = np.zeros((n, d))
    elif layout.list_features:
        col = layout.feature_columns[0]
        arr = (t.column(col) if col in t.column_names
               else pa.nulls(n, pa.list_(pa.float64())))
        X = _list_features(arr, col, d, why)
    else:
        X = np.empty((n, d), dtype=np.float64)
        for j, c in enumerate(layout.feature_columns):
            arr = t.column(c) if c in t.column_names else pa.nulls(n, pa.float64())
            vals, missing, bad = _column_values(arr)
            X[:, j] = vals
            if bad.any():
                why.mark(bad, f'value in {c!r} is not a number')
            if missing.any():
                why.mark(missing, f'missing value in {c!r}')
    if not allow_nan:
        finite = np.isfinite(X).all(axis=1)
        if not finite.all():
            nan = np.isnan(X).any(axis=1)
            why.mark(~finite & nan, 'NaN feature value')
            why.mark(~finite, 'infinite feature value')
    if refuse_zero:
        why.mark(~(X != 0).any(axis=1), ZERO_VECTOR)
    weights = _weights(t, layout, why) if layout.weight_column else None
    dead = why.dead_letters(rb.table, path, rb.rows, rb.lines, rb.raw)
    rows, lines = rb.rows, rb.lines
    if dead:
        keep = np.flatnonzero(~why.refused)
        if len(keep) == 0:
            return None, dead
        ids = ids.take(pa.array(keep))
        X = X[keep]
        weights = None if weights is None else weights[keep]
        rows = rows[keep]
        lines = None if lines is None else lines[keep]
    extra = {} if weights is None else {'weight': pa.array(weights, pa.float64())}
    out = points_batch(pc.cast(ids, layout.id_arrow_type), X, **extra)
    if source_columns:
        out = with_source_columns(out, path, rows, lines)
    return out, dead


def table_checks(rb: RowBatch, layout: Layout, path: str, source_columns: bool
                 ) -> tuple[pa.RecordBatch | None, list[dict]]:
    """ReadTable's check: the id column, when there is one, holds ids by the id rules
    (:mod:`~beamml.transforms.io.ids`: no missing or empty id, none of another type);
    it is given the layout's id type. A JSON value of another kind than its column's
    (a list where the input has numbers) refuses its row.

    With ``source_columns`` the batch gets :data:`SOURCE_COLUMNS`: ``_file``
    (dictionary-encoded), ``_row`` (data row in the file) and ``_line`` (int64, the
    physical line; null for a binary format), so later steps can write dead letters
    too. A file with a column of one of those names is a BeammlError.
    """
    t, rows, lines, dead = rb.table, rb.rows, rb.lines, []
    if source_columns:
        clash = [c for c in SOURCE_COLUMNS if c in t.column_names]
        if clash:
            raise BeammlError(f'{path} has a column {clash[0]!r}, a name beamml gives the '
                              'source of each row; rename it')
    why = RowReasons(t.num_rows)
    conflicts = _mark_type_conflicts(t, layout, why)
    if layout.id_column:
        ids = read_ids(t, rows, layout.id_column, layout.id_type, layout.input_format, path,
                       why)
        if layout.id_column in t.column_names and t.schema.field(
                layout.id_column).type != layout.id_arrow_type:
            # one id type for the whole input: a block read as text (after a bad value),
            # as floats (a JSON id beyond int64) or dictionary-encoded gets the ids as
            # the layout types them
            i = t.schema.get_field_index(layout.id_column)
            t = t.set_column(i, layout.id_column, ids)
    dead = why.dead_letters(rb.table, path, rb.rows, rb.lines, rb.raw)
    if dead:
        keep = np.flatnonzero(~why.refused)
        if not len(keep):
            return None, dead
        t, rows = t.take(pa.array(keep)), rows[keep]
        lines = None if lines is None else lines[keep]
    for i, want in conflicts.items():   # only nulls are left there: of the input's type
        t = t.set_column(i, t.schema.field(i).name, pa.nulls(t.num_rows, want))
    if source_columns:
        t = with_source_columns(t, path, rows, lines)
    return t, dead


def _mark_type_conflicts(t, layout: Layout, why: RowReasons) -> dict[int, pa.DataType]:
    """Refuse the rows of a JSON block whose column holds lists or objects where the
    input's (the first file's) holds scalars, or the other way round, or objects where
    it holds lists: no table can hold both, and the rest of the input must not be
    refused for them. Returns {column index: the input's type} of those columns: the
    block's rows left there are all null, and must take that type (else the block's
    type would clash with the other blocks')."""
    conflicts: dict[int, pa.DataType] = {}
    if layout.head_schema is None or layout.input_format != 'jsonl':
        return conflicts
    for i, field in enumerate(t.schema):
        if field.name == layout.id_column or field.name not in layout.head_schema.names:
            continue   # (ids have rules of their own: read_ids)
        want = layout.head_schema.field(field.name).type
        got = field.type
        if pa.types.is_null(got) or pa.types.is_null(want):
            continue
        if (pa.types.is_nested(got) or pa.types.is_nested(want)) and kind(got) != kind(want):
            col = t.column(i)
            why.mark(~col.is_null().to_numpy(zero_copy_only=False),
                     f'value in {field.name!r} is {kind(got)}, the column holds {kind(want)}')
            # (the head types objects as struct<>, a kind only: their nulls give way)
            conflicts[i] = pa.null() if pa.types.is_struct(want) and not want.num_fields \
                else want
    return conflicts


def with_source_columns(t, path: str, rows: np.ndarray, lines: np.ndarray | None):
    """``t`` with :data:`SOURCE_COLUMNS` appended: ``_file`` (dictionary-encoded),
    ``_row`` and ``_line`` (null when ``lines`` is None)."""
    file_column, row_column, line_column = SOURCE_COLUMNS
    n = t.num_rows
    t = t.append_column(file_column, pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(n, np.int32)), pa.array([path])))
    t = t.append_column(row_column, pa.array(rows, pa.int64()))
    return t.append_column(line_column, pa.nulls(n, pa.int64()) if lines is None
                           else pa.array(lines, pa.int64()))


def source_of(batch, positions) -> list[tuple[str | None, int | None, int | None]]:
    """(file, row, line) of the rows at ``positions`` of a batch that carries
    :data:`SOURCE_COLUMNS` (all None when it does not): for dead letters of later steps."""
    names = batch.schema.names
    if SOURCE_COLUMNS[0] not in names:
        return [(None, None, None)] * len(positions)
    idx = pa.array(np.asarray(positions, dtype=np.int64))
    cols = [batch.column(c).take(idx).to_pylist() if c in names else [None] * len(positions)
            for c in SOURCE_COLUMNS]
    return list(zip(*cols))
