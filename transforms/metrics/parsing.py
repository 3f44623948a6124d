"""Prediction-log parsing kernels: log columns to typed arrays, and slice keys (numpy and
pyarrow only; :mod:`beamml.transforms.metrics.logs` applies them to log batches).

The parsers turn a column into labels, ranks, relevances or query ids plus masks of
missing and invalid values; :class:`~beamml.transforms.metrics.logs.ParsePredictionLogs`
applies them to log batches and refuses the unusable rows as dead letters.

Labels may be 0/1, booleans or the strings T/F/true/false (any case; also "0"/"1");
1 / true is the positive class. ``predicted_rank`` is an integer >= 0 with 0 the top
result; ``truth_relevance`` is a finite number or true/false, a row being relevant
when it is > 0; ``q_id`` is an integer or a string.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamml.transforms.core.errors import BeammlError
from beamml.transforms.core.types import INT_RE, NUMBER_RE, is_string_type

__all__ = ['ROW_INPUTS', 'RANKING_INPUTS', 'SLICE_COLUMN', 'parse_binary', 'binary_labels',
           'parse_classes', 'parse_score', 'parse_weight', 'parse_rank', 'parse_relevance',
           'parse_query_ids', 'slice_keys']

TRUE_STRINGS = ('1', '1.0', 't', 'true')
FALSE_STRINGS = ('0', '0.0', 'f', 'false')
#: the canonical columns of parsed classification rows and of parsed ranking rows
ROW_INPUTS = ('truth', 'prediction')
RANKING_INPUTS = ('q_id', 'predicted_rank', 'truth_relevance')
#: the column of per-query statistics that holds the slice key (null: overall)
SLICE_COLUMN = '_slice'


# ----------------------------------------------------------------------------- values

def _as_arrow(values) -> pa.Array:
    """A 1-D pyarrow Array of numpy / pyarrow / list input (dictionaries decoded)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not isinstance(values, pa.Array):
        a = np.asarray(values)
        if a.ndim != 1:
            raise ValueError(f'expected a 1-D array, got shape {a.shape}')
        if a.dtype.kind == 'O':
            try:
                values = pa.array(a)
            except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed Python types
                values = pa.array(a.astype(str))
        else:
            values = pa.array(a)
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    return values


def _np(arr) -> np.ndarray:
    return arr.to_numpy(zero_copy_only=False)


def _lowered(arr: pa.Array) -> pa.Array:
    return pc.utf8_lower(pc.utf8_trim_whitespace(arr))


def _in(arr: pa.Array, values: Sequence[str]) -> np.ndarray:
    return _np(pc.fill_null(pc.is_in(arr, value_set=pa.array(values)), False))


def _missing(arr: pa.Array) -> np.ndarray:
    """Nulls, and blank strings in a string column (a quoted empty CSV field)."""
    n = len(arr)
    missing = _np(arr.is_null()) if arr.null_count else np.zeros(n, bool)
    if is_string_type(arr.type):
        missing |= _np(pc.fill_null(pc.equal(pc.utf8_trim_whitespace(arr), ''), False))
    return missing


def parse_binary(values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binary labels of a column: ``(labels, missing, invalid)``, three bool arrays.

    Accepted: booleans, the numbers 0 and 1, and the strings 0/1, T/F, true/false
    (any case, surrounding blanks ignored). ``missing`` marks nulls, ``invalid``
    every other value (e.g. 2, NaN, 'yes'); their ``labels`` are False.

    Parameters
    ----------
    values : array-like of shape (n_samples,) (numpy or pyarrow)

    Returns
    -------
    labels, missing, invalid : ndarray of shape (n_samples,), bool
    """
    if isinstance(values, np.ndarray) and values.dtype == np.bool_:
        n = len(values)
        return values, np.zeros(n, bool), np.zeros(n, bool)
    arr = _as_arrow(values)
    n = len(arr)
    missing = _missing(arr)
    t = arr.type
    if pa.types.is_boolean(t):
        return _np(pc.fill_null(arr, False)).astype(bool), missing, np.zeros(n, bool)
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        v = _np(pc.fill_null(pc.cast(arr, pa.float64()), 0.0))
        return v == 1, missing, ~missing & (v != 0) & (v != 1)
    if is_string_type(t):
        s = _lowered(arr)
        is_t, is_f = _in(s, TRUE_STRINGS), _in(s, FALSE_STRINGS)
        return is_t, missing, ~missing & ~is_t & ~is_f
    return np.zeros(n, bool), missing, ~missing


def binary_labels(values, name: str = 'labels') -> np.ndarray:
    """Binary labels as a bool array; ValueError naming a bad value if any is not a label."""
    labels, missing, invalid = parse_binary(values)
    bad = missing | invalid
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f'{name} holds {int(bad.sum())} value(s) that are not binary labels '
                         f'(0/1, true/false, T/F), e.g. {_as_arrow(values)[i].as_py()!r} '
                         f'at index {i}')
    return labels


def parse_classes(values) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Class labels of a multiclass column as text: ``(labels, missing, invalid)``.

    Integers (and integer-valued floats: ``2.0`` is the class ``2``) are written in
    decimal, booleans as ``0`` / ``1``, strings are kept as they are (case kept) with
    surrounding blanks trimmed, so ``2``, ``2.0`` and ``" 2"`` are one class.
    ``missing`` marks nulls and blank strings; ``invalid`` a float that is not an
    integer (1.5, NaN, inf), or a value of another type (lists, structs...).

    Returns
    -------
    labels : pyarrow string Array of shape (n_samples,) (a refused row's label is '')
    missing, invalid : ndarray of shape (n_samples,), bool
    """
    arr = _as_arrow(values)
    n = len(arr)
    missing = _missing(arr)
    t = arr.type
    if pa.types.is_boolean(t):
        text = pc.cast(pc.cast(arr, pa.int8()), pa.string())
        return pc.fill_null(text, ''), missing, np.zeros(n, bool)
    if pa.types.is_integer(t):
        return pc.fill_null(pc.cast(arr, pa.string()), ''), missing, np.zeros(n, bool)
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        f = _np(pc.fill_null(pc.cast(arr, pa.float64()), 0.0))
        with np.errstate(invalid='ignore'):
            good = np.isfinite(f) & (f == np.floor(f)) & (np.abs(f) < 2.0 ** 62)
        text = pc.cast(pa.array(np.where(good, f, 0).astype(np.int64)), pa.string())
        return text, missing, ~missing & ~good
    if is_string_type(t):
        if not pa.types.is_string(t):
            arr = pc.cast(arr, pa.string())
        return pc.fill_null(pc.utf8_trim_whitespace(arr), ''), missing, np.zeros(n, bool)
    return pa.array([''] * n, pa.string()), missing, ~missing


def parse_score(values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores (or probabilities): ``(float64, missing, invalid)``; NaN and inf are invalid.

    Numbers, booleans (0 / 1) and strings holding a number are accepted.
    """
    arr = _as_arrow(values)
    n = len(arr)
    missing = _missing(arr)
    t = arr.type
    if pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_floating(t) \
            or pa.types.is_decimal(t):
        v = _np(pc.fill_null(pc.cast(arr, pa.float64()), 0.0))
    elif is_string_type(t):
        f, num = _string_numbers(arr)
        v = np.where(num, _np(pc.fill_null(f, 0.0)), np.nan)
    else:
        return np.zeros(n), missing, ~missing
    bad = ~np.isfinite(v)
    return (np.where(bad, 0.0, v) if bad.any() else v), missing, ~missing & bad


def parse_weight(values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample weights: ``(float64, missing, invalid)``; a weight is a finite number >= 0."""
    v, missing, invalid = parse_score(values)
    neg = ~missing & ~invalid & (v < 0)
    return np.where(neg, 0.0, v), missing, invalid | neg


def _string_numbers(arr: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(float64 values, is-a-number mask) of a string column."""
    ok = pc.fill_null(pc.match_substring_regex(arr, NUMBER_RE, ignore_case=True), False)
    vals = pc.cast(pc.if_else(ok, pc.utf8_trim_whitespace(arr), pa.scalar(None, pa.string())),
                   pa.float64())
    return vals, _np(ok)


def parse_rank(values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predicted ranks: ``(rank int64, missing, invalid)``; valid ranks are integers >= 0.

    Integer-valued floats and strings of integers are accepted.
    """
    arr = _as_arrow(values)
    n = len(arr)
    missing = _missing(arr)
    t = arr.type
    if pa.types.is_integer(t):
        v = _np(arr if arr.null_count == 0 else pc.fill_null(arr, 0)).astype(np.int64,
                                                                             copy=False)
        return v, missing, ~missing & (v < 0)
    if pa.types.is_floating(t) or pa.types.is_decimal(t) or is_string_type(t):
        if is_string_type(t):
            f, num = _string_numbers(arr)
            f = _np(pc.fill_null(f, 0.0))
        else:
            f, num = _np(pc.fill_null(pc.cast(arr, pa.float64()), 0.0)), np.ones(n, bool)
        with np.errstate(invalid='ignore'):
            good = num & np.isfinite(f) & (f >= 0) & (f == np.floor(f)) & (f < 2.0 ** 62)
        return np.where(good, f, 0).astype(np.int64), missing, ~missing & ~good
    return np.zeros(n, np.int64), missing, ~missing


def parse_relevance(values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truth relevance: ``(float64 values, missing, invalid)``.

    Numbers (NaN and inf are invalid), booleans (1.0 / 0.0) and strings holding a
    number or T/F/true/false. A row is relevant when its value is > 0.
    """
    arr = _as_arrow(values)
    n = len(arr)
    missing = _missing(arr)
    t = arr.type
    if pa.types.is_boolean(t):
        return _np(pc.fill_null(arr, False)).astype(np.float64), missing, np.zeros(n, bool)
    if pa.types.is_integer(t) and arr.null_count == 0:
        return _np(arr).astype(np.float64), missing, np.zeros(n, bool)
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        v = _np(pc.fill_null(pc.cast(arr, pa.float64()), 0.0))
        bad = ~np.isfinite(v)
        return (np.where(bad, 0.0, v) if bad.any() else v), missing, ~missing & bad
    if is_string_type(t):
        f, num = _string_numbers(arr)
        v = _np(pc.fill_null(f, 0.0))
        s = _lowered(arr)
        is_t, is_f = _in(s, TRUE_STRINGS), _in(s, FALSE_STRINGS)
        v = np.where(~num & is_t, 1.0, np.where(~num & is_f, 0.0, v))
        good = (num & np.isfinite(v)) | is_t | is_f
        return np.where(good, v, 0.0), missing, ~missing & ~good
    return np.zeros(n), missing, ~missing


def _check_id_type(id_type: str) -> None:
    if id_type not in ('int64', 'string'):
        raise BeammlError(f"id_type must be 'int64' or 'string', got {id_type!r}",
                          parameters=('id_type',))


def parse_query_ids(values, id_type: str = 'int64') -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Query ids as ``id_type`` ('int64' or 'string'): ``(ids, missing, invalid)``.

    With 'int64', integer-valued floats and strings of integers are accepted and
    anything else is invalid; with 'string', other types are cast to text and an
    empty (blank) id is invalid.
    """
    _check_id_type(id_type)
    arr = _as_arrow(values)
    n = len(arr)
    missing = _np(arr.is_null()) if arr.null_count else np.zeros(n, bool)
    t = arr.type
    if id_type == 'int64':
        if pa.types.is_integer(t):
            return (arr if t == pa.int64() else pc.cast(arr, pa.int64())), missing, \
                np.zeros(n, bool)
        if pa.types.is_floating(t) or pa.types.is_decimal(t):
            f = _np(pc.fill_null(pc.cast(arr, pa.float64()), 0.0))
            with np.errstate(invalid='ignore'):
                good = np.isfinite(f) & (f == np.floor(f)) & (np.abs(f) < 2.0 ** 62)
            return pa.array(np.where(good, f, 0).astype(np.int64)), missing, ~missing & ~good
        if is_string_type(t):
            ok = _np(pc.fill_null(pc.match_substring_regex(arr, INT_RE), False))
            ids = pc.cast(pc.if_else(pa.array(ok), pc.utf8_trim_whitespace(arr),
                                     pa.scalar('0', pa.string())), pa.int64())
            return ids, missing, ~missing & ~ok
        return pa.array(np.zeros(n, np.int64)), missing, ~missing
    if not pa.types.is_string(t):
        arr = pc.cast(arr, pa.string())
    empty = _np(pc.fill_null(pc.equal(pc.utf8_trim_whitespace(arr), ''), False))
    return pc.fill_null(arr, ''), missing, ~missing & empty


def slice_keys(batch: pa.RecordBatch | pa.Table, slice_by: Sequence[str]) -> pa.Array:
    """The slice of each row: ``'col=value'``, or ``'a=1,b=x'`` for several columns.

    A null value is written ``null``.
    """
    parts = []
    for i, c in enumerate(slice_by):
        col = batch.column(c)
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        vals = pc.fill_null(pc.cast(col, pa.string()), 'null')
        parts.extend([('' if i == 0 else ',') + c + '=', vals])
    return pc.binary_join_element_wise(*parts, '')


# ----------------------------------------------------------------------------- Beam
