"""The id rules: ids are int64 or strings, one type for the whole input, never changed.

The input's id type (``Layout.id_type``) is decided from the head of its first
file (:func:`~beamml.transforms.io.inspection.inspect_input`). Each row's id is
then read as that type or the row is refused, with one of these reasons:

* ``missing id``, ``empty id`` (blank text);
* in an integer id column: ``id is not an integer`` (text that is not one; in a CSV
  file every id is text, and ``007`` is 7), ``id is a string, the id column holds
  integers`` (the JSON or Parquet string ``"7"``: a string is not an integer),
  ``id is out of the int64 range`` (also a ``uint64`` above 2**63-1), and for a float
  ``id is not an integer (NaN)`` / ``(infinite)`` / ``(a number with a fraction)`` or
  ``id is not exactly an integer (read as a float)`` (2**53 or more: a JSON integer
  that pyarrow read as a float may have been rounded); an integral float below 2**53
  is that integer;
* in a string id column: ``id is a number, the id column holds strings`` (the JSON or
  Parquet number ``1`` is not the id ``"1"``);
* of either: ``id is a boolean``, ``id is not a string (a JSON list)`` (or object; ``not
  an integer`` in an integer id column; ``(a list)`` in Parquet), ``id is bytes, not an
  integer or a string`` and likewise for dates (``id is a date32[day], ...``),
  timestamps and other types.

Dictionary-encoded ids (a Parquet string column often is) are their values.
"""
from __future__ import annotations

import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamml.transforms.io.casts import to_type
from beamml.transforms.core.types import (INT_RE, decoded, is_list_type, is_numeric_type,
                                          is_string_type, kind)

__all__ = ['read_ids', 'ID_IS_NUMBER', 'ID_IS_STRING', 'ID_IS_BOOLEAN']

ID_IS_NUMBER = 'id is a number, the id column holds strings'
ID_IS_STRING = 'id is a string, the id column holds integers'
ID_IS_BOOLEAN = 'id is a boolean'


def _container_reason(t: pa.DataType, id_type: str, fmt: str) -> str:
    wanted = 'a string' if id_type == 'string' else 'an integer'
    what = 'list' if is_list_type(t) else ('object' if fmt == 'jsonl' else 'struct')
    return f'id is not {wanted} (a {"JSON " if fmt == "jsonl" else ""}{what})'


def _names(path: str, rows: np.ndarray) -> pa.Array:
    name = posixpath.basename(path.rstrip('/')) + ':'
    return pc.binary_join_element_wise(pa.scalar(name), pc.cast(pa.array(rows), pa.string()),
                                       '')


def read_ids(table, rows: np.ndarray, id_column: str | None, id_type: str, fmt: str,
             path: str, why) -> pa.Array:
    """The ids of a block of rows as ``id_type`` ('int64' or 'string'); every row whose
    id breaks the rules above is marked in ``why`` (a RowReasons) and null here.

    ``id_column`` None: the ids are ``<file name>:<row>``. ``fmt`` is the input format:
    a CSV block holds text (an integer id is its text: ``" 7"`` is 7).
    """
    text = fmt == 'csv'
    n = table.num_rows
    want = pa.int64() if id_type == 'int64' else pa.string()
    if not id_column:
        return _names(path, rows)
    if id_column not in table.column_names:   # a JSON block without the key
        why.mark(np.ones(n, bool), 'missing id')
        return pa.nulls(n, want)
    arr = decoded(table.column(id_column))
    t = arr.type
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    if not valid.all():
        why.mark(~valid, 'missing id')
    if pa.types.is_null(t):
        return pa.nulls(n, want)
    if is_string_type(t):
        blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(arr), ''), False)
        why.mark(blank.to_numpy(zero_copy_only=False), 'empty id')
        if id_type == 'string':
            return pc.cast(arr, want)
        if text:
            values, refusals = to_type(arr, want, text=True)
            for mask, reason in refusals:
                why.mark(mask, f'id {reason}')
            return values
        integer = pc.fill_null(pc.match_substring_regex(arr, INT_RE), False)
        why.mark(integer.to_numpy(zero_copy_only=False), ID_IS_STRING)
        why.mark(valid, 'id is not an integer')
        return pa.nulls(n, want)
    if is_numeric_type(t):
        if id_type == 'string':
            why.mark(valid, ID_IS_NUMBER)
            return pa.nulls(n, want)
        values, refusals = to_type(arr, want)
        for mask, reason in refusals:
            why.mark(mask, f'id {reason}')
        return values
    if pa.types.is_boolean(t):
        why.mark(valid, ID_IS_BOOLEAN)
    elif is_list_type(t) or pa.types.is_struct(t):
        why.mark(valid, _container_reason(t, id_type, fmt))
    else:   # bytes, a date, a timestamp, ...: no id type holds it unchanged
        why.mark(valid, f'id is {kind(t)}, not an integer or a string')
    return pa.nulls(n, want)
