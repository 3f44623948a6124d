"""Vectorised casts that refuse rather than change: a column to the input's type.

A value either converts exactly (an integral float to an integer, an int to a
wider int, an integer text to an int64) or its row is refused with a reason; a
value is never rounded, wrapped or turned into another kind (the number ``5`` is
not the text ``"5"``). :func:`to_type` returns the converted column and a list of
``(mask, reason)`` pairs, the reasons worded after a subject the caller gives
(``id``, ``value in 'v'``). Python runs per row only inside :func:`cast_each`'s
bisection, whose calls grow with the refused values, not with the rows.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamml.transforms.core.types import (INT_RE, NUMBER_RE, decoded, is_nested_type,
                                          is_string_type, is_temporal_type, kind)

__all__ = ['int64_or_null', 'cast_each', 'to_type', 'INF_RE', 'CSV_TRUE', 'CSV_FALSE']

#: the spellings of an infinity a text number may use (matched case-insensitively)
INF_RE = r'^\s*[-+]?inf(inity)?\s*$'
#: the words pyarrow's CSV reader takes for a boolean (its defaults)
CSV_TRUE = ['1', 'True', 'TRUE', 'true']
CSV_FALSE = ['0', 'False', 'FALSE', 'false']

_INT64_MAX = str(2 ** 63 - 1)
_INT64_MIN_DIGITS = str(2 ** 63)
_EXACT = 2.0 ** 53   # beyond it a float64 does not hold every integer

Refusals = list  # of (mask: np.ndarray, reason: str)


def _np_bool(arr) -> np.ndarray:
    return pc.fill_null(arr, False).to_numpy(zero_copy_only=False)


def int64_or_null(arr: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(int64 values, out of range) of a string column of integers (``INT_RE``, or
    null): a value beyond int64 is null in the values and True in the mask.
    Vectorised: the digits without sign and leading zeros, compared as text."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    text = pc.replace_substring_regex(pc.utf8_trim_whitespace(arr), r'^\+', '')  # pyarrow: no '+'
    digits = pc.replace_substring_regex(text, r'^-?0*', '')
    length = pc.utf8_length(digits)
    negative = pc.starts_with(text, '-')
    limit = pc.if_else(negative, pa.scalar(_INT64_MIN_DIGITS), pa.scalar(_INT64_MAX))
    over = pc.or_(pc.greater(length, 19),
                  pc.and_(pc.equal(length, 19), pc.greater(digits, limit)))
    over = pc.fill_null(over, False)
    values = pc.cast(pc.if_else(over, pa.scalar(None, pa.string()), text), pa.int64())
    return values, over.to_numpy(zero_copy_only=False)


def cast_each(arr: pa.Array, want: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """(values, failed) of pyarrow's safe cast of ``arr`` to ``want``, value by value
    in effect: the whole array is cast at once, and only when that fails is it split in
    halves (a bisection), so the calls grow with the values that do not cast."""
    n = len(arr)
    failed = np.zeros(n, dtype=bool)
    try:
        return pc.cast(arr, want), failed
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError):
        failed[:] = arr.is_valid().to_numpy(zero_copy_only=False)   # no such cast at all
        return pa.nulls(n, want), failed
    except pa.ArrowInvalid:
        pass
    pieces = []

    def part(lo: int, hi: int) -> None:
        try:
            pieces.append(pc.cast(arr.slice(lo, hi - lo), want))
            return
        except pa.ArrowInvalid:
            if hi - lo == 1:
                failed[lo] = True
                pieces.append(pa.nulls(1, want))
                return
        mid = (lo + hi) // 2
        part(lo, mid)
        part(mid, hi)

    part(0, n)
    return pa.concat_arrays(pieces), failed


def _int_bounds(t: pa.DataType) -> tuple[int, int]:
    info = np.iinfo(np.dtype(str(t)))
    return int(info.min), int(info.max)


def _int_to_int(arr: pa.Array, want: pa.DataType) -> tuple[pa.Array, Refusals]:
    lo, hi = _int_bounds(want)
    glo, ghi = _int_bounds(arr.type)
    out = np.zeros(len(arr), dtype=bool)
    if lo > glo:
        out |= _np_bool(pc.less(arr, pa.scalar(lo, arr.type)))
    if hi < ghi:
        out |= _np_bool(pc.greater(arr, pa.scalar(hi, arr.type)))
    if out.any():
        arr = pc.if_else(pa.array(out), pa.scalar(None, arr.type), arr)
        return pc.cast(arr, want), [(out, f'is out of the {want} range')]
    return pc.cast(arr, want), []


def _float_to_int(arr: pa.Array, want: pa.DataType) -> tuple[pa.Array, Refusals]:
    """Integral floats become integers when exact: below 2**53 (a JSON integer beyond it
    read as a float may have been rounded); NaN, inf, fractions and others refused."""
    v = pc.fill_null(pc.cast(arr, pa.float64()), 0.0).to_numpy(zero_copy_only=False)
    lo, hi = _int_bounds(want)
    with np.errstate(invalid='ignore'):
        nan, inf = np.isnan(v), np.isinf(v)
        fraction = ~nan & ~inf & (np.floor(v) != v)
        out = ~nan & ~inf & ((v <= float(lo) - 1) | (v >= float(hi) + 1))
        inexact = np.abs(v) >= _EXACT
    ok = ~(nan | inf | fraction | out | inexact)
    ids = np.where(ok, v, 0).astype(np.int64)
    values = pc.cast(pa.array(ids, pa.int64(), mask=~ok | ~arr.is_valid().to_numpy(
        zero_copy_only=False)), want)
    return values, [(nan, 'is not an integer (NaN)'), (inf, 'is not an integer (infinite)'),
                    (fraction, 'is not an integer (a number with a fraction)'),
                    (out, f'is out of the {want} range'),
                    (inexact, 'is not exactly an integer (read as a float)')]


def _decimal_to_int(arr: pa.Array, want: pa.DataType) -> tuple[pa.Array, Refusals]:
    fraction = ~_np_bool(pc.equal(arr, pc.floor(arr))) & arr.is_valid().to_numpy(
        zero_copy_only=False)
    integral = pc.if_else(pa.array(fraction), pa.scalar(None, arr.type), arr)
    values, failed = cast_each(integral, want)
    return values, [(fraction, 'is not an integer (a number with a fraction)'),
                    (failed, f'is out of the {want} range')]


def _to_float(arr: pa.Array, want: pa.DataType) -> tuple[pa.Array, Refusals]:
    """Numbers into a float column, when the float holds them exactly (a round trip)."""
    try:
        if pa.types.is_decimal(arr.type):
            raise pa.ArrowNotImplementedError('decimals: cast value by value')
        values = pc.cast(arr, want, safe=False)
    except pa.ArrowNotImplementedError:
        values, failed = cast_each(arr, want)
        return values, [(failed, f'does not fit {want}')]
    f = pc.fill_null(pc.cast(values, pa.float64()), 0.0).to_numpy(zero_copy_only=False)
    if pa.types.is_integer(arr.type):
        a = pc.fill_null(arr, 0).to_numpy(zero_copy_only=False)
        lo, hi = (0.0, 2.0 ** 64) if a.dtype.kind == 'u' else (-2.0 ** 63, 2.0 ** 63)
        with np.errstate(invalid='ignore'):
            fits = (f >= lo) & (f < hi)
            ok = fits & (np.where(fits, f, 0).astype(a.dtype) == a)
    else:
        a = pc.fill_null(pc.cast(arr, pa.float64()), 0.0).to_numpy(zero_copy_only=False)
        ok = (a == f) | (np.isnan(a) & np.isnan(f))
    inexact = ~ok & arr.is_valid().to_numpy(zero_copy_only=False)
    if inexact.any():
        values = pc.if_else(pa.array(inexact), pa.scalar(None, want), values)
    return values, [(inexact, f'is not exactly a {want}')]


def _from_text(arr: pa.Array, want: pa.DataType) -> tuple[pa.Array, Refusals]:
    """A CSV column read as text, into ``want``: the text rules of the typed read; a
    blank value (``""``, spaces) is a missing one."""
    blank = pc.equal(pc.utf8_trim_whitespace(arr), '')
    arr = pc.if_else(pc.fill_null(blank, False), pa.scalar(None, arr.type), arr)
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_integer(want):
        ok = _np_bool(pc.match_substring_regex(arr, INT_RE)) | ~valid
        values, over = int64_or_null(pc.if_else(pa.array(ok), arr, pa.scalar(None, arr.type)))
        refusals = [(~ok, 'is not an integer'), (over, 'is out of the int64 range')]
        if not want.equals(pa.int64()):
            values, more = _int_to_int(values, want)
            refusals += more
        return values, refusals
    if pa.types.is_floating(want):
        ok = _np_bool(pc.match_substring_regex(arr, NUMBER_RE, ignore_case=True)) | ~valid
        trimmed = pc.if_else(pa.array(ok), pc.utf8_trim_whitespace(arr),
                             pa.scalar(None, pa.string()))
        values = pc.cast(trimmed, pa.float64())
        # a number beyond float64 (1e400) reads as inf: out of range, unless it says inf
        inf = _np_bool(pc.is_inf(values))
        over = inf & ~_np_bool(pc.match_substring_regex(trimmed, INF_RE, ignore_case=True))
        refusals = [(~ok, 'is not a number'), (over, 'is out of the float64 range')]
        if not want.equals(pa.float64()):
            values, more = _to_float(values, want)
            refusals += more
        return values, refusals
    if pa.types.is_boolean(want):
        true = _np_bool(pc.is_in(arr, pa.array(CSV_TRUE)))
        false = _np_bool(pc.is_in(arr, pa.array(CSV_FALSE)))
        bad = valid & ~true & ~false
        return pa.array(true, mask=~(true | false)), [(bad, 'is not a boolean')]
    values, failed = cast_each(arr, want)
    return values, [(failed, f'is not a valid {want}')]


_FAMILIES = (('int', pa.types.is_integer), ('float', pa.types.is_floating),
             ('decimal', pa.types.is_decimal), ('bool', pa.types.is_boolean),
             ('text', is_string_type), ('temporal', is_temporal_type),
             ('bytes', lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t) or
              pa.types.is_fixed_size_binary(t)))


def _family(t: pa.DataType) -> str:
    return next((name for name, test in _FAMILIES if test(t)), str(t))


def to_type(arr, want: pa.DataType, text: bool = False) -> tuple[pa.Array, Refusals]:
    """``arr`` (a scalar column) as ``want``, and the refusals ``[(mask, reason)]`` of the
    values that are not exactly of that type (null in the result). ``text``: a string
    ``arr`` holds the text of a CSV file, to be read as ``want`` (``"7"`` is 7);
    otherwise a value of another kind (the number 5 in a text column, text in a
    number column, a boolean) is refused, never converted. Nested types are the
    caller's (``want`` and ``arr`` must both be scalar)."""
    arr = decoded(arr)
    got = arr.type
    n = len(arr)
    if got.equals(want):
        return arr, []
    if pa.types.is_null(got):
        return pa.nulls(n, want), []
    if is_nested_type(got) or is_nested_type(want):
        raise ValueError(f'to_type is for scalar columns, not {got} -> {want}')
    fam, wfam = _family(got), _family(want)
    if text and fam == 'text' and wfam != 'text':
        return _from_text(arr, want)
    if fam == wfam and fam in ('text', 'bytes'):
        return pc.cast(arr, want), []
    if wfam == 'int' and fam == 'int':
        return _int_to_int(arr, want)
    if wfam == 'int' and fam == 'float':
        return _float_to_int(arr, want)
    if wfam == 'int' and fam == 'decimal':
        return _decimal_to_int(arr, want)
    if wfam == 'float' and fam in ('int', 'float', 'decimal'):
        return _to_float(arr, want)
    if fam == wfam or (wfam == 'decimal' and fam in ('int', 'float')):
        values, failed = cast_each(arr, want)   # temporal units, decimal scales
        return values, [(failed, f'does not fit {want}')]
    present = arr.is_valid().to_numpy(zero_copy_only=False)
    return pa.nulls(n, want), [(present, f'is {kind(got)}, the column holds {kind(want)}')]
