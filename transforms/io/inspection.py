"""Deciding an input's Layout before the graph is built, from the head of its first file
that has data rows.

A missing input, an empty file, an input of no data rows (every file empty or a
header only), an unreadable format or a missing column is a
:class:`~beamml.transforms.core.errors.BeammlError` here, naming the file and what
exists, not a stack trace from a worker.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamml.transforms.core.objects import open_file
from beamml.transforms.io.csvio import csv_head
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.io.jsonio import jsonl_head, read_head_bytes
from beamml.transforms.io.layout import Layout, format_of, match_input, printable
from beamml.transforms.io.npyio import npy_header
from beamml.transforms.io.parquetio import parquet_head
from beamml.transforms.core.types import (NUMBER_RE, is_list_type, is_numeric_type, is_string_type,
                                          value_type)

__all__ = ['inspect_input']


def _head_table(path: str, fmt: str, id_column: str | None) -> tuple[pa.Table, bool]:
    """A table of the first rows of a file, every column as its reader infers, and
    whether the file has data rows (refused ones count)."""
    with open_file(path) as f:
        if fmt == 'parquet':
            head = parquet_head(f)
            return head, head.num_rows > 0
        if fmt == 'csv':
            head, n_records = csv_head(f, path, id_column)
            return head, n_records > 0
        if fmt == 'jsonl':
            has_rows = bool(read_head_bytes(f).strip())
            f.seek(0)
            return jsonl_head(f, path, id_column), has_rows
        raise AssertionError(fmt)


def _first_head(paths: list[str], fmt: str, id_column: str | None, file_pattern: str
                ) -> tuple[str, pa.Table]:
    """(path, head) of the first file whose head has rows; a BeammlError when no file
    has a data row."""
    first = None
    for path in paths:
        try:
            head, has_rows = _head_table(path, fmt, id_column)
        except BeammlError:
            raise
        except Exception as e:
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BeammlError(f'{path} is not a readable {fmt} file: '
                              f'{printable(first_line)}') from e
        if head.num_rows:
            return path, head
        if first is None and has_rows:
            first = (path, head)   # rows, none of them readable: its head says why
    if first is None:
        raise _no_rows(file_pattern, len(paths))
    return first


def _id_type(fmt: str, t: pa.DataType) -> str:
    """The input's id type from its first file's: 'int64' for integers (a CSV head of
    integer texts, see csv_head) and, but in CSV, numbers (an integral float or decimal
    is an integer, others are refused); else 'string' (values of other kinds are refused:
    :mod:`~beamml.transforms.io.ids`)."""
    t = value_type(t)
    if pa.types.is_integer(t) or (fmt != 'csv' and (pa.types.is_floating(t) or
                                                   pa.types.is_decimal(t))):
        return 'int64'
    return 'string'


def _no_rows(file_pattern: str, n: int) -> BeammlError:
    return BeammlError(f'{file_pattern}: no data rows ({n} file(s), header only / empty)')


def _numeric_share(arr: pa.ChunkedArray | pa.Array) -> float:
    """Share of the non-blank values of a string column that parse as numbers (a blank
    value is a missing one, refused later)."""
    arr = pc.drop_null(arr)
    arr = arr.filter(pc.not_equal(pc.utf8_trim_whitespace(arr), ''))
    if len(arr) == 0:
        return 0.0
    return pc.sum(pc.match_substring_regex(arr, NUMBER_RE, ignore_case=True)).as_py() / len(arr)


def _mode_length(arr) -> int | None:
    lengths = pc.drop_null(pc.list_value_length(arr)).to_numpy(zero_copy_only=False)
    if len(lengths) == 0:
        return None
    values, counts = np.unique(lengths, return_counts=True)
    return int(values[np.argmax(counts)])


def _npy_layout(paths: list[str], id_column: str | None, dimension: int | None,
                file_pattern: str) -> Layout:
    if id_column:
        raise BeammlError('.npy input has no columns; drop id_column '
                          '(ids are <file name>:<row>)', parameters=('id_column',))
    for path in paths:   # the first file that has rows decides d
        shape, _, _ = npy_header(path)
        if len(shape) != 2:
            raise BeammlError(f'{path}: expected a 2-D (n, d) array, got shape {shape}')
        if shape[0]:
            break
    else:
        raise _no_rows(file_pattern, len(paths))
    d = shape[1]
    if dimension is not None and dimension != d:
        raise BeammlError(f'{path} has {d} features, dimension says {dimension}',
                          parameters=('dimension',))
    return Layout('npy', ('features',), None, 'string', ('features',), True, d)


def check_weight_column(weight_column: str | None, need_features: bool) -> str | None:
    """The weight column's name, stripped; BeammlError when it is empty or given for a
    table read (weights are for points)."""
    if weight_column is None:
        return None
    weight_column = weight_column.strip()
    if not weight_column:
        raise BeammlError('weight_column is empty; name a column of the input',
                          parameters=('weight_column',))
    if not need_features:
        raise BeammlError('weight_column is for reading points, not tables',
                          parameters=('weight_column',))
    return weight_column


def check_feature_roles(id_column: str | None, weight_column: str | None,
                        feature_columns: Sequence[str]) -> None:
    """BeammlError when the id or the weight column is also named a feature column."""
    if id_column is not None and id_column in feature_columns:
        raise BeammlError(f'the id column {id_column!r} cannot also be a feature column '
                          '(feature_columns); give the features only, or another '
                          'id_column', parameters=('feature_columns', 'id_column'))
    if weight_column is not None and weight_column in feature_columns:
        raise BeammlError(f'the weight column {weight_column!r} cannot also be a feature '
                          'column (feature_columns); give the features only, or another '
                          'weight_column', parameters=('feature_columns', 'weight_column'))


def inspect_input(file_pattern: str, *, input_format: str | None = None,
                  id_column: str | None = None,
                  feature_columns: Sequence[str] | None = None,
                  dimension: int | None = None,
                  need_features: bool = True,
                  weight_column: str | None = None) -> tuple[list[str], Layout]:
    """Match the input and decide its :class:`Layout` from the head of the first file
    that has data rows (a file of a header only has none).

    ``weight_column`` names a column of per-row sample weights: it must exist, is
    never a feature (refused in ``feature_columns``, left out of the inferred
    features) nor the id column.

    Returns the matched paths (in path order) and the layout. Every problem a
    user can fix is a :class:`BeammlError` naming the file and what exists.
    """
    files = match_input(file_pattern)
    paths = [p for p, _ in files]
    fmt = format_of(paths[0], input_format)
    for p in paths[1:]:
        if input_format is None and format_of(p, None) != fmt:
            raise BeammlError(f'{file_pattern} mixes formats ({paths[0]} is {fmt}, {p} is '
                              f'{format_of(p, None)}); read them separately')
    if dimension is not None and dimension < 1:
        raise BeammlError(f'dimension must be >= 1, got {dimension}',
                          parameters=('dimension',))
    weight_column = check_weight_column(weight_column, need_features)
    if fmt == 'npy':
        if weight_column:
            raise BeammlError('.npy input has no columns, so no weight column; drop '
                              'weight_column', parameters=('weight_column',))
        return paths, _npy_layout(paths, id_column, dimension, file_pattern)

    first, head = _first_head(paths, fmt, id_column or 'id', file_pattern)
    columns = tuple(head.column_names)
    if not columns:
        raise BeammlError(f'{first} has no columns')
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise BeammlError(f'{first} names column {", ".join(map(repr, repeated))} more than '
                          'once; every column needs its own name')
    schema = head.schema

    if id_column is None and 'id' in columns:
        id_column = 'id'
    if id_column is not None and id_column not in columns:
        raise BeammlError(f'{first} has no id column {id_column!r}; '
                          f'its columns are {", ".join(columns)}')
    id_type = _id_type(fmt, schema.field(id_column).type) if id_column else 'string'
    if weight_column is not None:
        if weight_column not in columns:
            raise BeammlError(f'{first} has no weight column {weight_column!r}; '
                              f'its columns are {", ".join(columns)}',
                              parameters=('weight_column',))
        if weight_column == id_column:
            raise BeammlError(f'the id column {id_column!r} cannot also be the weight column '
                              '(weight_column)', parameters=('weight_column', 'id_column'))

    if not need_features:
        return paths, Layout(fmt, columns, id_column, id_type, (), False, 0, schema)

    if feature_columns:
        feature_columns = tuple(c.strip() for c in feature_columns)
        check_feature_roles(id_column, weight_column, feature_columns)
        missing = [c for c in feature_columns if c not in columns]
        if missing:
            raise BeammlError(f'{first} has no column {", ".join(map(repr, missing))}; '
                              f'its columns are {", ".join(columns)}')
        list_cols = [c for c in feature_columns if is_list_type(schema.field(c).type)]
        if list_cols and len(feature_columns) > 1:
            raise BeammlError(f'feature column {list_cols[0]!r} holds lists; give it alone '
                              'or give scalar columns')
        list_features = bool(list_cols)
    else:
        candidates = [c for c in columns if c != id_column and c != weight_column]
        numeric = []
        for c in candidates:
            t = schema.field(c).type
            if is_numeric_type(t):
                numeric.append(c)
            elif is_string_type(t) and _numeric_share(head.column(c)) >= 0.5:
                numeric.append(c)  # numbers with a few bad values: bad rows are refused later
        lists = [c for c in candidates if is_list_type(schema.field(c).type)]
        if 'features' in lists:
            feature_columns, list_features = ('features',), True
        elif numeric:
            feature_columns, list_features = tuple(numeric), False
        elif len(lists) == 1:
            feature_columns, list_features = (lists[0],), True
        else:
            raise BeammlError(f'{first} has no numeric column to use as features; its '
                              f'columns are {", ".join(columns)}; pass feature_columns',
                              parameters=('feature_columns',))

    if list_features:
        t = schema.field(feature_columns[0]).type
        d = t.list_size if pa.types.is_fixed_size_list(t) else _mode_length(
            head.column(feature_columns[0]))
    else:
        d = len(feature_columns)
    if dimension is not None:
        if not list_features and dimension != d:
            raise BeammlError(f'{len(feature_columns)} feature columns '
                              f'({", ".join(feature_columns)}) but dimension is {dimension}',
                              parameters=('dimension',))
        d = dimension
    if not d:
        raise BeammlError(f'cannot tell the number of features of {first}: its first rows '
                          f'have none; pass dimension', parameters=('dimension',))
    return paths, Layout(fmt, columns, id_column, id_type, tuple(feature_columns),
                         list_features, int(d), schema, weight_column=weight_column)
