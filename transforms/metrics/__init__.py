"""Evaluation metrics of prediction logs, each defined once for numpy arrays and for Beam.

A :class:`Metric` is called on numpy arrays with keyword arguments and ignores the
keywords it does not use, so one dict of arrays feeds any list of metrics::

    arrays = dict(truth=t, prediction=p)
    {m.name: m(**arrays) for m in (Precision(), Recall(), F1())}

    QueryPrecision()(q_id=q, predicted_rank=r, truth_relevance=rel)

``m.combine_fn()`` is the same metric as a Beam ``CombineFn`` over RecordBatches,
with a small additive numpy accumulator computed by the same code.
:class:`ComputeMetrics` computes any list of metrics, overall and per slice, in one
pass over a PCollection of log batches.

Classification (rows ``truth, prediction``). Labels may be 0/1, booleans or the
strings T/F/true/false (any case; also "0"/"1"); 1 / true is the positive class.
The accumulator is the confusion counts ``[tp, fp, tn, fn]``. ``zero_division``
is the value of a 0/0 as in scikit-learn (0.0, 1.0 or nan); every such case is
counted in the results' ``undefined``, never hidden.

Ranking (rows ``q_id, predicted_rank, truth_relevance``). ``predicted_rank`` is
an integer >= 0 with 0 the top result; a row is *relevant* when
``truth_relevance > 0``. Per query q with ``n_returned`` rows of which
``n_relevant`` are relevant:

* query precision = n_relevant / n_returned; ``AverageQueryPrecision`` is its
  mean over queries, each query weighing the same;
* ``PrecisionAtK(k)``: (relevant rows with ``predicted_rank < k``) / k, averaged
  over queries;
* ``MeanAveragePrecision``: AP(q) = (1 / n_relevant) * sum over the relevant rows i
  of P@(rank_i + 1), i.e. (relevant rows with rank <= rank_i) / (rank_i + 1); the
  divisor is the number of relevant *returned* rows. A query without a relevant
  row has AP = ``zero_division`` and is counted as undefined.

Per-query values need all rows of a query together, and a query's rows may be
spread over batches and files. Ranking is therefore computed in two stages:
:class:`QueryStats` keys row fragments by a hash bucket of ``q_id`` (of blocks of
1024 consecutive integer ids), groups each bucket, sorts it by ``(q_id,
predicted_rank)`` (no sort when it arrives in that order, as logs sorted by
query do) and reduces it to one row of counts per query (vectorised, no loop
per row); the sort is also where a
duplicate ``(q_id, predicted_rank)`` pair is found, across batches and files: the
first row in (file, row) order is kept, the others become dead letters. The
ranking metrics then combine these per-query batches with small accumulators
(sums over queries; per-query counts for :class:`QueryPrecision`), so a ranking
metric's ``combine_fn()`` takes RecordBatches of per-query statistics
(``q_id, n_returned, n_relevant, n_relevant_at_<k>, ap_sum``), not raw rows.
"""
from __future__ import annotations

import math
import pickle
import posixpath
from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from apache_beam.transforms.window import GlobalWindow, GlobalWindows

from beamml.transforms.io.types import INT_RE, NUMBER_RE, is_string_type
from beamml.transforms.io import (ERRORS, BeammlError, RecordBatchCoder, RecordCounters, RowReasons,
                           dead_letter)

__all__ = [
    'Metric', 'Precision', 'Recall', 'Accuracy', 'F1', 'ConfusionCounts',
    'QueryPrecision', 'AverageQueryPrecision', 'PrecisionAtK', 'MeanAveragePrecision',
    'QueryCount', 'CLASSIFICATION_METRICS', 'RANKING_METRICS',
    'binary_labels', 'confusion_counts', 'parse_binary', 'parse_rank', 'parse_relevance',
    'parse_query_ids', 'query_stats', 'slice_keys',
    'MetricCombineFn', 'MetricsCombineFn', 'ParsePredictionLogs', 'QueryStats',
    'ComputeMetrics', 'SLICE_COLUMN', 'RecordBatchCoder',
]

TRUE_STRINGS = ('1', '1.0', 't', 'true')
FALSE_STRINGS = ('0', '0.0', 'f', 'false')
SLICE_COLUMN = '_slice'
ROW_INPUTS = ('truth', 'prediction')
RANKING_INPUTS = ('q_id', 'predicted_rank', 'truth_relevance')


# ----------------------------------------------------------------------------- parsing

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


def parse_query_ids(values, id_type: str = 'int64') -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Query ids as ``id_type`` ('int64' or 'string'): ``(ids, missing, invalid)``.

    With 'int64', integer-valued floats and strings of integers are accepted and
    anything else is invalid; with 'string', other types are cast to text and an
    empty (blank) id is invalid.
    """
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
    if id_type != 'string':
        raise ValueError(f"id_type must be 'int64' or 'string', got {id_type!r}")
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


# ----------------------------------------------------------------------------- kernels

def confusion_counts(truth, prediction) -> np.ndarray:
    """Confusion counts of binary labels.

    Parameters
    ----------
    truth, prediction : array-like of shape (n_samples,)
        Binary labels (see :func:`parse_binary`); a bad value is a ValueError.

    Returns
    -------
    ndarray of shape (4,), int64
        ``[tp, fp, tn, fn]``.
    """
    t = binary_labels(truth, 'truth')
    p = binary_labels(prediction, 'prediction')
    if len(t) != len(p):
        raise ValueError(f'truth has {len(t)} rows, prediction {len(p)}')
    # cell = 2 * truth + prediction: 0 tn, 1 fp, 2 fn, 3 tp
    c = np.bincount(t.astype(np.int64) * 2 + p, minlength=4)
    return np.array([c[3], c[1], c[0], c[2]], dtype=np.int64)


def _divide(num: float, den: float, zero_division: float) -> tuple[float, int]:
    """num / den, or (zero_division, 1 undefined case) when den == 0."""
    if den == 0:
        return float(zero_division), 1
    return float(num) / float(den), 0


def _factorize(values) -> tuple[np.ndarray, pa.Array]:
    """Dense int64 codes (first-appearance order) and the unique values."""
    arr = _as_arrow(values)
    enc = arr.dictionary_encode()
    return _np(enc.indices).astype(np.int64), enc.dictionary


def _query_codes(q) -> tuple[np.ndarray, pa.Array | int]:
    """Integer codes of query ids and how to get the ids back.

    Integer ids with a range below 2**31 are their own codes minus the minimum
    (returned as an int: id = code + minimum), which saves a hash table; other ids
    are factorized (returned with the Array of unique ids).
    """
    if isinstance(q, np.ndarray) and len(q):
        lo, hi = int(q.min()), int(q.max())
        if hi - lo < 2 ** 31:
            return q - lo, lo
    return _factorize(q)


def _sort_dedup(codes: np.ndarray, rank: np.ndarray, origin: tuple[np.ndarray, ...] = ()):
    """Sort rows by (code, rank) and find repeated (code, rank) pairs.

    Returns ``(order, dup_sorted, first_sorted)``: row indices in sorted order; a
    mask over the sorted rows of the repeats (all but the first of each pair, the
    first being the smallest ``origin``, compared lexicographically); and for
    each sorted row the sorted position of the first row of its pair (None when
    there is no repeat).
    """
    n = len(codes)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0, np.int64)
    m = int(rank.max()) + 1
    if int(codes.max()) < (2 ** 62) // m:
        key = codes * m + rank
        order = np.argsort(key, kind='stable')  # timsort: fast on logs sorted by query
        ks = key[order]
        same = ks[1:] == ks[:-1]
    else:
        order = np.lexsort((rank, codes))
        ks = None
        same = (codes[order][1:] == codes[order][:-1]) & (rank[order][1:] == rank[order][:-1])
    dup_sorted = np.empty(n, bool)
    dup_sorted[0] = False
    dup_sorted[1:] = same
    if not same.any():
        return order, dup_sorted, None
    if origin:
        # Among the rows of a repeated pair, keep the smallest origin (file, row).
        tie = dup_sorted | np.r_[same, False]
        pos = np.flatnonzero(tie)
        group = np.cumsum(~dup_sorted)[pos]
        sub = order[pos]
        keys = tuple(o[sub] for o in reversed(origin)) + (group,)
        order[pos] = sub[np.lexsort(keys)]
    first = np.maximum.accumulate(np.where(dup_sorted, 0, np.arange(n)))
    return order, dup_sorted, first


def _strictly_increasing(codes: np.ndarray, rank: np.ndarray) -> bool:
    """Whether the rows are sorted by (code, rank) with no repeated pair."""
    if len(codes) < 2:
        return True
    a, b = codes[:-1], codes[1:]
    return bool(((b > a) | ((b == a) & (rank[1:] > rank[:-1]))).all())


def _group_stats(group: np.ndarray, rank: np.ndarray, relevant: np.ndarray,
                 ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-group counts of rows sorted by (group, rank), one group per query.

    Returns ``group`` (the group of each output row), ``n_returned``,
    ``n_relevant``, ``n_relevant_at_<k>`` for each k and ``ap_sum`` (the sum over
    the relevant rows of P@(rank + 1); AP = ap_sum / n_relevant).
    """
    n = len(group)
    out = {'group': group[:0], 'n_returned': np.zeros(0, np.int64),
           'n_relevant': np.zeros(0, np.int64), 'ap_sum': np.zeros(0)}
    for k in ks:
        out[f'n_relevant_at_{k}'] = np.zeros(0, np.int64)
    if n == 0:
        return out
    new = np.empty(n, bool)
    new[0] = True
    np.not_equal(group[1:], group[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    n_groups = len(starts)
    n_returned = np.diff(np.append(starts, n))
    # The relevant rows only: their group, and their count within the group so far.
    rel_idx = np.flatnonzero(relevant)
    gid = np.cumsum(new, dtype=np.int64)[rel_idx] - 1
    n_relevant = np.bincount(gid, minlength=n_groups)
    before = np.cumsum(n_relevant) - n_relevant
    within = np.arange(1, len(rel_idx) + 1) - before[gid]
    r = rank[rel_idx]
    out.update(group=group[starts], n_returned=n_returned.astype(np.int64),
               n_relevant=n_relevant.astype(np.int64),
               ap_sum=np.bincount(gid, weights=within / (r + 1.0), minlength=n_groups))
    for k in ks:
        out[f'n_relevant_at_{k}'] = np.bincount(gid[r < k], minlength=n_groups).astype(
            np.int64)
    return out


def query_stats(q_id, predicted_rank, truth_relevance, ks: Sequence[int] = (),
                *, duplicates: str = 'raise') -> dict[str, Any]:
    """Per-query statistics of ranking rows (all rows of every query).

    Parameters
    ----------
    q_id : array-like of shape (n_samples,), integers or strings
    predicted_rank : array-like of shape (n_samples,), integers >= 0 (0 = top)
    truth_relevance : array-like of shape (n_samples,), numbers; > 0 is relevant
    ks : the k of each ``n_relevant_at_<k>`` to count
    duplicates : {'raise', 'drop'}
        A repeated (q_id, predicted_rank) pair is a ValueError, or with 'drop'
        only its first row is used.

    Returns
    -------
    dict of arrays of shape (n_queries,), queries sorted by q_id
        ``q_id, n_returned, n_relevant, n_relevant_at_<k>..., ap_sum``, and
        ``duplicates``: the number of rows dropped.
    """
    rank, r_missing, r_bad = parse_rank(predicted_rank)
    if (r_missing | r_bad).any():
        i = int(np.flatnonzero(r_missing | r_bad)[0])
        raise ValueError(f'predicted_rank must hold integers >= 0; index {i} holds '
                         f'{_as_arrow(predicted_rank)[i].as_py()!r}')
    relevance, v_missing, v_bad = parse_relevance(truth_relevance)
    if (v_missing | v_bad).any():
        i = int(np.flatnonzero(v_missing | v_bad)[0])
        raise ValueError(f'truth_relevance must hold finite numbers; index {i} holds '
                         f'{_as_arrow(truth_relevance)[i].as_py()!r}')
    q = _as_arrow(q_id)
    if q.null_count:
        raise ValueError('q_id holds missing values')
    if not (len(q) == len(rank) == len(relevance)):
        raise ValueError(f'q_id, predicted_rank and truth_relevance differ in length: '
                         f'{len(q)}, {len(rank)}, {len(relevance)}')
    codes, uniques = _factorize(q)
    order, dup, _ = _sort_dedup(codes, rank)
    if dup.any() and duplicates == 'raise':
        i = int(order[np.flatnonzero(dup)[0]])
        raise ValueError(f'duplicate (q_id, predicted_rank) pair ({q[i].as_py()!r}, '
                         f'{int(rank[i])}) at index {i}; {int(dup.sum())} repeated row(s)')
    keep = order[~dup]
    s = _group_stats(codes[keep], rank[keep], relevance[keep] > 0, ks)
    ids = uniques.take(pa.array(s.pop('group')))
    by_id = _np(pc.sort_indices(ids))
    out = {'q_id': _np(ids)[by_id]}
    out.update({k: v[by_id] for k, v in s.items()})
    out['duplicates'] = int(dup.sum())
    return out


# ----------------------------------------------------------------------------- states
#
# A state is the accumulator of one or more metrics: create / add / merge, the
# add reading numpy columns. Metrics with equal states share one accumulator in
# ComputeMetrics (Precision, Recall, F1, Accuracy and ConfusionCounts all read
# the same confusion counts).

class _State:
    level = 'rows'        # 'rows': log rows; 'queries': per-query statistics
    inputs: tuple[str, ...] = ()

    def _params(self) -> tuple:
        return ()

    def __eq__(self, other):
        return type(self) is type(other) and self._params() == other._params()

    def __hash__(self):
        return hash((type(self).__name__,) + self._params())

    def create(self):
        raise NotImplementedError

    def add(self, acc, cols: dict[str, np.ndarray]):
        raise NotImplementedError

    def merge(self, accs):
        accs = iter(accs)
        first = next(accs)
        for a in accs:
            first += a
        return first


class _Confusion(_State):
    inputs = ROW_INPUTS

    def create(self):
        return np.zeros(4, np.int64)

    def add(self, acc, cols):
        acc += confusion_counts(cols['truth'], cols['prediction'])
        return acc


class _QuerySums(_State):
    """[n_queries, sum of query precision, sum of defined APs, queries without relevant]."""
    level = 'queries'
    inputs = ('n_returned', 'n_relevant', 'ap_sum')

    def create(self):
        return np.zeros(4)

    def add(self, acc, cols):
        n_ret = cols['n_returned'].astype(np.float64)
        n_rel = cols['n_relevant'].astype(np.float64)
        has = n_rel > 0
        acc[0] += len(n_ret)
        acc[1] += (n_rel / n_ret).sum() if len(n_ret) else 0.0
        acc[2] += (cols['ap_sum'][has] / n_rel[has]).sum()
        acc[3] += len(n_rel) - int(has.sum())
        return acc


class _AtK(_State):
    """[n_queries, sum of relevant rows with rank < k]."""
    level = 'queries'

    def __init__(self, k: int):
        self.k = k
        self.inputs = (f'n_relevant_at_{k}',)

    def _params(self):
        return (self.k,)

    def create(self):
        return np.zeros(2)

    def add(self, acc, cols):
        c = cols[self.inputs[0]]
        acc[0] += len(c)
        acc[1] += c.sum()
        return acc


class _QueryTable(_State):
    """Per-query counts (q_id, n_returned, n_relevant): a list of chunks, summed by q_id."""
    level = 'queries'
    inputs = ('q_id', 'n_returned', 'n_relevant')
    _COMPACT_ROWS = 1 << 16

    def create(self):
        return []

    def add(self, acc, cols):
        acc.append((np.asarray(cols['q_id']), np.asarray(cols['n_returned'], np.int64),
                     np.asarray(cols['n_relevant'], np.int64)))
        if sum(len(c[0]) for c in acc) > 2 * self._COMPACT_ROWS and len(acc) > 2:
            acc[:] = [self.compact(acc)]
        return acc

    def merge(self, accs):
        accs = iter(accs)
        first = next(accs)
        for a in accs:
            first.extend(a)
        return first

    @staticmethod
    def compact(acc):
        if not acc:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        q = np.concatenate([c[0] for c in acc])
        u, inv = np.unique(q, return_inverse=True)
        inv = inv.reshape(-1)
        n_ret = np.bincount(inv, np.concatenate([c[1] for c in acc]), len(u)).astype(np.int64)
        n_rel = np.bincount(inv, np.concatenate([c[2] for c in acc]), len(u)).astype(np.int64)
        return u, n_ret, n_rel


# ----------------------------------------------------------------------------- metrics

def _check_zero_division(z) -> float:
    z = float(z)
    if not (z in (0.0, 1.0) or math.isnan(z)):
        raise ValueError(f'zero_division must be 0, 1 or nan, got {z}')
    return z


class Metric:
    """A metric: called on numpy arrays (keyword arguments), or as a Beam CombineFn.

    ``m(**arrays)`` returns the value; ``m.evaluate(**arrays)`` returns
    ``(value, n_undefined)``, the number of 0/0 cases replaced by
    ``zero_division``. Keywords the metric does not use are ignored.
    ``m.combine_fn()`` is the same metric over RecordBatches (log rows for
    classification metrics, per-query statistics for ranking metrics).
    """
    name: str = ''
    inputs: tuple[str, ...] = ()       # keyword arguments of the numpy call
    can_be_undefined = True

    def __init__(self, *, zero_division: float = 0.0, name: str | None = None):
        self.zero_division = _check_zero_division(zero_division)
        if name:
            self.name = name

    @property
    def state(self) -> _State:
        raise NotImplementedError

    @property
    def level(self) -> str:
        return self.state.level

    def value(self, acc) -> tuple[Any, int]:
        """(value, number of undefined cases) from the state's accumulator."""
        raise NotImplementedError

    def _prepare(self, arrays: dict[str, Any]) -> dict[str, np.ndarray]:
        return arrays

    def evaluate(self, **arrays) -> tuple[Any, int]:
        missing = [k for k in self.inputs if k not in arrays]
        if missing:
            raise TypeError(f'{type(self).__name__} needs the keyword argument(s) '
                            f'{", ".join(missing)}')
        cols = self._prepare({k: arrays[k] for k in self.inputs})
        acc = self.state.add(self.state.create(), cols)
        return self.value(acc)

    def __call__(self, **arrays):
        return self.evaluate(**arrays)[0]

    def combine_fn(self) -> 'MetricCombineFn':
        return MetricCombineFn(self)

    def __repr__(self):
        return f'{type(self).__name__}(name={self.name!r})'


class _ClassificationMetric(Metric):
    inputs = ROW_INPUTS
    _state = _Confusion()

    @property
    def state(self):
        return self._state

    def _prepare(self, arrays):
        return {'truth': binary_labels(arrays['truth'], 'truth'),
                'prediction': binary_labels(arrays['prediction'], 'prediction')}

    def value(self, acc):
        tp, fp, tn, fn = (int(x) for x in acc)
        return self._value(tp, fp, tn, fn)


class Precision(_ClassificationMetric):
    """tp / (tp + fp)."""
    name = 'precision'

    def _value(self, tp, fp, tn, fn):
        return _divide(tp, tp + fp, self.zero_division)


class Recall(_ClassificationMetric):
    """tp / (tp + fn)."""
    name = 'recall'

    def _value(self, tp, fp, tn, fn):
        return _divide(tp, tp + fn, self.zero_division)


class Accuracy(_ClassificationMetric):
    """(tp + tn) / n; undefined for no rows."""
    name = 'accuracy'

    def _value(self, tp, fp, tn, fn):
        return _divide(tp + tn, tp + fp + tn + fn, self.zero_division)


class F1(_ClassificationMetric):
    """2 tp / (2 tp + fp + fn), as scikit-learn's f1_score (undefined only when all are 0)."""
    name = 'f1'

    def _value(self, tp, fp, tn, fn):
        return _divide(2 * tp, 2 * tp + fp + fn, self.zero_division)


class ConfusionCounts(_ClassificationMetric):
    """``{'tp', 'fp', 'tn', 'fn'}`` counts."""
    name = 'confusion'
    can_be_undefined = False

    def _value(self, tp, fp, tn, fn):
        return {'tp': tp, 'fp': fp, 'tn': tn, 'fn': fn}, 0


class _RankingMetric(Metric):
    inputs = RANKING_INPUTS
    ks: tuple[int, ...] = ()

    def _prepare(self, arrays):
        return query_stats(arrays['q_id'], arrays['predicted_rank'],
                           arrays['truth_relevance'], self.ks)


class QueryPrecision(_RankingMetric):
    """Per query: relevant / returned rows.

    The value is a dict of arrays sorted by q_id: ``q_id, n_returned, n_relevant,
    precision``. Its accumulator holds per-query counts, summed by q_id on merge.
    """
    name = 'query_precision'
    can_be_undefined = False
    _state = _QueryTable()

    @property
    def state(self):
        return self._state

    def value(self, acc):
        q, n_ret, n_rel = _QueryTable.compact(acc)
        with np.errstate(invalid='ignore', divide='ignore'):
            prec = n_rel / n_ret
        return {'q_id': q, 'n_returned': n_ret, 'n_relevant': n_rel, 'precision': prec}, 0


class AverageQueryPrecision(_RankingMetric):
    """Mean over queries of relevant / returned (each query weighs the same)."""
    name = 'average_query_precision'
    _state = _QuerySums()

    @property
    def state(self):
        return self._state

    def value(self, acc):
        return _divide(acc[1], acc[0], self.zero_division)


class MeanAveragePrecision(_RankingMetric):
    """Mean over queries of AP (see the module docstring).

    Undefined cases: the queries without a relevant row (their AP is
    ``zero_division``), or 1 when there is no query at all.
    """
    name = 'mean_average_precision'
    _state = _QuerySums()

    @property
    def state(self):
        return self._state

    def value(self, acc):
        n, ap, n_without = acc[0], acc[2], int(acc[3])
        if n == 0:
            return float(self.zero_division), 1
        total = ap + (self.zero_division * n_without if n_without else 0.0)
        return float(total / n), n_without


class QueryCount(_RankingMetric):
    """The number of queries."""
    name = 'n_queries'
    can_be_undefined = False
    _state = _QuerySums()

    @property
    def state(self):
        return self._state

    def value(self, acc):
        return int(acc[0]), 0


class PrecisionAtK(_RankingMetric):
    """Per query (relevant rows with predicted_rank < k) / k, averaged over queries."""
    name = 'precision_at_k'

    def __init__(self, k: int = 5, **kwargs):
        super().__init__(**kwargs)
        if int(k) != k or k < 1:
            raise ValueError(f'k must be an integer >= 1, got {k}')
        self.k = int(k)
        self.ks = (self.k,)
        self._state = _AtK(self.k)

    @property
    def state(self):
        return self._state

    def value(self, acc):
        return _divide(acc[1] / self.k, acc[0], self.zero_division)


CLASSIFICATION_METRICS = {
    'precision': Precision, 'recall': Recall, 'accuracy': Accuracy, 'f1': F1,
    'confusion': ConfusionCounts,
}
RANKING_METRICS = {
    'average_query_precision': AverageQueryPrecision, 'precision_at_k': PrecisionAtK,
    'mean_average_precision': MeanAveragePrecision, 'n_queries': QueryCount,
}


# ----------------------------------------------------------------------------- CombineFns

def _columns(batch, names) -> dict[str, np.ndarray]:
    out = {}
    for name in names:
        col = batch.column(name)
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if pa.types.is_boolean(col.type) and col.null_count == 0:
            out[name] = _np(col).astype(bool)
        else:
            out[name] = col if (is_string_type(col.type) or pa.types.is_dictionary(col.type)
                                or col.null_count) else _np(col)
    return out


def _take(cols: dict, idx: np.ndarray) -> dict:
    return {k: (v.take(pa.array(idx)) if isinstance(v, pa.Array) else v[idx])
            for k, v in cols.items()}


def _groups(keys: pa.Array) -> Iterator[tuple[str | None, np.ndarray]]:
    """(key, row indices) of each distinct key (null -> None)."""
    enc = keys.dictionary_encode()
    codes = _np(pc.fill_null(enc.indices, -1)).astype(np.int64)
    names = enc.dictionary.to_pylist()
    order = np.argsort(codes, kind='stable')
    bounds = np.searchsorted(codes[order], np.arange(-1, len(names) + 1))
    for j in range(-1, len(names)):
        lo, hi = bounds[j + 1], bounds[j + 2]
        if hi > lo:
            yield (None if j < 0 else names[j]), order[lo:hi]


class MetricsCombineFn(beam.CombineFn):
    """Any list of metrics of one level, overall and per slice, over RecordBatches.

    Rows-level metrics (classification) read batches with columns ``truth`` and
    ``prediction`` and slice them by the values of ``slice_by``; query-level
    metrics (ranking) read per-query statistics batches and slice them by their
    ``_slice`` column (null = overall). The accumulator is a dict
    ``{slice key (None = overall): [one small array per distinct state]}``;
    merges sum into the first accumulator.

    The output is ``{'overall': section, 'slices': {key: section}}``, a section
    being ``{metric name: value, ..., 'undefined': {metric name: n}}``.
    """

    def __init__(self, metrics: Sequence[Metric], slice_by: Sequence[str] = ()):
        metrics = list(metrics)
        if not metrics:
            raise ValueError('no metric to compute')
        names = [m.name for m in metrics]
        if len(set(names)) != len(names):
            raise ValueError(f'metric names must be unique, got {names}')
        levels = {m.level for m in metrics}
        if len(levels) != 1:
            raise ValueError('MetricsCombineFn takes metrics of one level; '
                             'use ComputeMetrics to mix classification and ranking')
        self.level = levels.pop()
        self.metrics = metrics
        self.slice_by = tuple(slice_by or ())
        self.states = list(dict.fromkeys(m.state for m in metrics))
        self._state_of = [self.states.index(m.state) for m in metrics]
        self.inputs = tuple(dict.fromkeys(c for s in self.states for c in s.inputs))

    def create_accumulator(self):
        return {None: [s.create() for s in self.states]}

    def _add_cols(self, acc, key, cols):
        accs = acc.get(key)
        if accs is None:
            accs = acc[key] = [s.create() for s in self.states]
        for i, s in enumerate(self.states):
            accs[i] = s.add(accs[i], cols)

    def add_input(self, acc, batch):
        if batch.num_rows == 0:
            return acc
        cols = _columns(batch, self.inputs)
        if self.level == 'rows':
            self._add_cols(acc, None, cols)
            if self.slice_by:
                for key, idx in _groups(slice_keys(batch, self.slice_by)):
                    self._add_cols(acc, key, _take(cols, idx))
        elif SLICE_COLUMN in batch.schema.names:
            col = batch.column(SLICE_COLUMN)
            if isinstance(col, pa.ChunkedArray):
                col = col.combine_chunks()
            if col.null_count == len(col):  # overall rows only
                self._add_cols(acc, None, cols)
            else:
                for key, idx in _groups(col):
                    self._add_cols(acc, key, _take(cols, idx))
        else:
            self._add_cols(acc, None, cols)
        return acc

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        first = next(accumulators)
        for a in accumulators:
            for key, accs in a.items():
                mine = first.get(key)
                if mine is None:
                    first[key] = accs
                else:
                    first[key] = [s.merge([x, y]) for s, x, y in zip(self.states, mine, accs)]
        return first

    def _section(self, accs) -> dict:
        out, undefined = {}, {}
        for m, i in zip(self.metrics, self._state_of):
            value, n_undefined = m.value(accs[i])
            out[m.name] = value
            if m.can_be_undefined:
                undefined[m.name] = int(n_undefined)
        out['undefined'] = undefined
        return out

    def extract_output(self, acc):
        return {'overall': self._section(acc[None]),
                'slices': {k: self._section(acc[k]) for k in sorted(k for k in acc if k)}}


class MetricCombineFn(MetricsCombineFn):
    """One metric as a CombineFn; its output is the overall value."""

    def __init__(self, metric: Metric):
        super().__init__([metric])
        self.metric = metric

    def extract_output(self, acc):
        return self.metric.value(acc[None][0])[0]


def merge_results(results: Iterable[dict]) -> dict:
    """Merge the outputs of several MetricsCombineFns (disjoint metric names)."""
    out = {'overall': {'undefined': {}}, 'slices': {}}

    def merge_section(dst, src):
        dst['undefined'].update(src.get('undefined', {}))
        dst.update({k: v for k, v in src.items() if k != 'undefined'})

    for r in results:
        merge_section(out['overall'], r['overall'])
        for key, section in r['slices'].items():
            merge_section(out['slices'].setdefault(key, {'undefined': {}}), section)
    out['slices'] = dict(sorted(out['slices'].items()))
    return out


# ----------------------------------------------------------------------------- Beam: parsing



def _batch_path(batch) -> str | None:
    if '_file' not in batch.schema.names:
        return None
    col = batch.column('_file')
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if len(col) == 0:
        return None
    return col[0].as_py()


class _ParseLogsFn(beam.DoFn):
    def __init__(self, task: str, columns: dict[str, str], slice_by: Sequence[str],
                 id_type: str):
        self.task, self.columns = task, dict(columns)
        self.slice_by, self.id_type = tuple(slice_by), id_type
        self.counters = RecordCounters()

    def process(self, batch):
        n = batch.num_rows
        if n == 0:
            return
        src = self.columns
        names = batch.schema.names
        absent = [c for c in [*src.values(), *self.slice_by] if c not in names]
        if absent:
            raise BeammlError(f'{_batch_path(batch) or "a batch"} has no column '
                              f'{", ".join(map(repr, absent))}; its columns are '
                              f'{", ".join(c for c in names if c not in ("_file", "_row"))}')
        why = RowReasons(n)
        out = {}
        if self.task == 'classification':
            for name in ROW_INPUTS:
                labels, missing, invalid = parse_binary(batch.column(src[name]))
                why.mark(missing, f'missing {name} ({src[name]!r})')
                why.mark(invalid, f'{name} ({src[name]!r}) is not a binary label '
                                  '(0/1, true/false, T/F)')
                out[name] = pa.array(labels)
        else:
            ids, missing, invalid = parse_query_ids(batch.column(src['q_id']), self.id_type)
            why.mark(missing, f'missing q_id ({src["q_id"]!r})')
            if self.id_type == 'int64':
                why.mark(invalid, f'q_id ({src["q_id"]!r}) is not an integer (the first '
                                  "file's query ids are integers)")
            else:
                why.mark(invalid, f'empty q_id ({src["q_id"]!r})')
            rank, missing, invalid = parse_rank(batch.column(src['predicted_rank']))
            why.mark(missing, f'missing predicted_rank ({src["predicted_rank"]!r})')
            why.mark(invalid, f'predicted_rank ({src["predicted_rank"]!r}) is not an '
                              'integer >= 0')
            rel, missing, invalid = parse_relevance(batch.column(src['truth_relevance']))
            why.mark(missing, f'missing truth_relevance ({src["truth_relevance"]!r})')
            why.mark(invalid, f'truth_relevance ({src["truth_relevance"]!r}) is not a '
                              'finite number or true/false')
            out.update(q_id=ids, predicted_rank=pa.array(rank), truth_relevance=pa.array(rel))
        for c in self.slice_by:
            out[c] = batch.column(c)
        for c in ('_file', '_row'):
            if c in batch.schema.names:
                out[c] = batch.column(c)
        parsed = pa.RecordBatch.from_arrays(list(out.values()), names=list(out))
        if why.refused.any():
            rows = _np(batch.column('_row')) if '_row' in batch.schema.names else None
            keep_cols = [c for c in batch.schema.names if c not in ('_file', '_row')]
            dead = why.dead_letters(batch.select(keep_cols), _batch_path(batch), rows)
            for letter in dead:
                yield beam.pvalue.TaggedOutput(ERRORS, letter)
            self.counters.refuse_accepted(len(dead))
            keep = np.flatnonzero(~why.refused)
            if not len(keep):
                return
            parsed = parsed.take(pa.array(keep))
        yield parsed


class ParsePredictionLogs(beam.PTransform):
    """Turn log batches (the files' own columns) into canonical, typed batches.

    ``columns`` maps the canonical names (``truth, prediction`` for
    classification; ``q_id, predicted_rank, truth_relevance`` for ranking) to the
    log's column names. The output ``rows`` batches hold the canonical columns
    (bool labels; int64 or string q_id, int64 rank, float64 relevance), the
    ``slice_by`` columns and ``_file`` / ``_row`` when present; a row with a
    missing or unusable value is a dead letter on ``errors`` (and moved from
    records_ok to records_refused).
    """

    def __init__(self, task: str, columns: dict[str, str] | None = None,
                 slice_by: Sequence[str] = (), id_type: str = 'int64',
                 label: str | None = None):
        super().__init__(label)
        if task not in ('classification', 'ranking'):
            raise ValueError(f"task must be 'classification' or 'ranking', got {task!r}")
        names = ROW_INPUTS if task == 'classification' else RANKING_INPUTS
        self.task = task
        self.columns = {n: n for n in names}
        self.columns.update(columns or {})
        self.slice_by, self.id_type = tuple(slice_by or ()), id_type

    def expand(self, batches):
        return batches | 'ParseLogRows' >> beam.ParDo(_ParseLogsFn(
            self.task, self.columns, self.slice_by, self.id_type)
        ).with_output_types(pa.RecordBatch).with_outputs(ERRORS, main='rows')


# ----------------------------------------------------------------------------- Beam: queries

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(31))
    h = h * _GOLDEN
    return h ^ (h >> np.uint64(29))


def _blocks(q: np.ndarray, block: int) -> np.ndarray:
    """q // block (a shift when block is a power of 2)."""
    if block & (block - 1) == 0:
        return q >> (block.bit_length() - 1)
    return q // block


def query_buckets(q_id: pa.Array, n_buckets: int, block: int = 1) -> np.ndarray:
    """A deterministic bucket in [0, n_buckets) for each query id (int64 or string).

    With ``block`` > 1, integer ids ``q // block`` share a bucket (the blocks are
    hashed), so logs sorted by query give a few long runs of one bucket; string
    ids are hashed one by one whatever ``block``.
    """
    n = len(q_id)
    if n_buckets == 1 or n == 0:
        return np.zeros(n, np.int64)
    if pa.types.is_integer(q_id.type):
        h = _np(pc.cast(q_id, pa.int64()))
        if block > 1:
            h = _blocks(h, block)
        h = h.view(np.uint64)
    else:
        s = pc.cast(q_id, pa.large_string())
        offsets = np.frombuffer(s.buffers()[1], np.int64)[s.offset:s.offset + n + 1]
        data = np.frombuffer(s.buffers()[2], np.uint8) if s.buffers()[2] else np.zeros(0, np.uint8)
        lengths = np.diff(offsets)
        total = int(offsets[-1] - offsets[0])
        h = lengths.astype(np.uint64)
        if total:
            starts = offsets[:-1] - offsets[0]
            pos = np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)
            b = data[offsets[0]:offsets[-1]].astype(np.uint64)
            with np.errstate(over='ignore'):
                terms = b * ((pos.astype(np.uint64) * np.uint64(2) + np.uint64(1)) * _GOLDEN)
            nonempty = lengths > 0
            sums = np.add.reduceat(terms, starts[nonempty])
            h = h.copy()
            h[nonempty] += sums
    with np.errstate(over='ignore'):
        return (_mix(h) % np.uint64(n_buckets)).astype(np.int64)


def _pack(a: np.ndarray) -> tuple[int, np.ndarray]:
    """An integer array as (base, a - base) in the narrowest unsigned dtype that holds it."""
    if len(a) == 0:
        return 0, a
    lo, hi = int(a.min()), int(a.max())
    for dtype in (np.uint8, np.uint16, np.uint32):
        if hi - lo <= np.iinfo(dtype).max:
            return lo, (a - lo).astype(dtype)
    return 0, a


def _unpack(packed: tuple[int, np.ndarray]) -> np.ndarray:
    base, a = packed
    return a.astype(np.int64) + base if a.dtype != np.int64 else a


def _concat(parts):
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts) if len(parts) > 1 else parts[0]
    return pa.concat_arrays(parts) if len(parts) > 1 else parts[0]


def _run_starts(q: np.ndarray) -> np.ndarray:
    """Start of each run of equal values."""
    if not len(q):
        return np.zeros(0, np.int64)
    change = np.flatnonzero(q[1:] != q[:-1])
    starts = np.empty(len(change) + 1, np.int64)
    starts[0] = 0
    np.add(change, 1, out=starts[1:])
    return starts


def _run_lengths(starts: np.ndarray, n: int) -> np.ndarray:
    lengths = np.empty_like(starts)
    if len(starts):
        np.subtract(starts[1:], starts[:-1], out=lengths[:-1])
        lengths[-1] = n - starts[-1]
    return lengths


def _within_runs(q: np.ndarray, starts: np.ndarray | None = None) -> np.ndarray:
    """0, 1, 2, ... within each run of equal values of ``q`` (runs start at ``starts``)."""
    n = len(q)
    starts = _run_starts(q) if starts is None else starts
    return np.arange(n) - np.repeat(starts, _run_lengths(starts, n))


def _enc_int(a: np.ndarray, starts: np.ndarray | None = None) -> tuple:
    """An integer array, compact: ('a', first) for first, first + 1, ...; ('r', values,
    lengths) for long runs of equal values (runs start at ``starts`` when given);
    else ('p', base, offsets) (see _pack)."""
    n = len(a)
    if n and int(a[-1]) - int(a[0]) == n - 1 and (n == 1 or bool((np.diff(a) == 1).all())):
        return ('a', int(a[0]))
    starts = _run_starts(a) if starts is None else starts
    if 4 * len(starts) <= n:
        return ('r', _pack(a[starts]), _pack(_run_lengths(starts, n)))
    return ('p',) + _pack(a)


def _dec_int(code: tuple, n: int) -> np.ndarray:
    if code[0] == 'a':
        return np.arange(code[1], code[1] + n, dtype=np.int64)
    if code[0] == 'r':
        return np.repeat(_unpack(code[1]), _unpack(code[2]))
    return _unpack(code[1:]).astype(np.int64, copy=False)


def _encode_part(path, q, rank, relevant, row, slices) -> tuple:
    """Rows of one batch for one bucket, compact: integer columns by _enc_int (logs
    sorted by query: q in runs, row numbers consecutive), ``rank`` ('w',) when it is
    0, 1, 2, ... within each run of q (ranks listed in order), ``relevant`` as bits;
    string ``q`` and ``slices`` (dictionary) stay Arrow Arrays."""
    n = len(rank)
    if isinstance(q, np.ndarray):
        starts = _run_starts(q)
        q_code = _enc_int(q, starts)
        r_code = (('w',) if np.array_equal(rank, _within_runs(q, starts)) else _enc_int(rank))
    else:
        q_code, r_code = q, _enc_int(rank)
    return (path, n, q_code, r_code, np.packbits(relevant), _enc_int(row), slices)


def _decode_part(part) -> tuple:
    """(path, q, rank, relevant, row function, slices) of an :func:`_encode_part`."""
    path, n, q_code, r_code, bits, row_code, slices = part
    q = _dec_int(q_code, n) if isinstance(q_code, tuple) else q_code
    rank = _within_runs(q) if r_code == ('w',) else _dec_int(r_code, n)
    relevant = np.unpackbits(bits, count=n).view(bool)
    return path, q, rank, relevant, (lambda: _dec_int(row_code, n)), slices


def _encode_fragment(parts) -> bytes:
    """Encoded parts (:func:`_encode_part`) of one bucket as bytes; Beam's shuffle
    copies these bytes without looking into them."""
    return pickle.dumps(parts, protocol=5)


def _decode_fragments(fragments) -> tuple:
    """(segments [(path, n)], q, rank, relevant, row, slices list or None) of fragments.

    ``row`` is a function returning the row numbers (only needed for duplicates).
    """
    parts = [_decode_part(p) for data in fragments for p in pickle.loads(data) if p[1]]
    if not parts:
        return None
    segments = [(p[0], len(p[2])) for p in parts]
    q = _concat([p[1] for p in parts])
    rank = _concat([p[2] for p in parts])
    relevant = _concat([p[3] for p in parts])

    def row():
        return _concat([p[4]() for p in parts])
    slices = None if parts[0][5] is None else [p[5] for p in parts]
    return segments, q, rank, relevant, row, slices


class _KeyByQueryBucketFn(beam.DoFn):
    """Split canonical ranking batches into (bucket, fragment bytes) by a hash of q_id.

    In the global window, a bundle's rows are buffered per bucket and sent as one
    fragment per bucket at the end of the bundle (or when ``flush_rows`` rows are
    buffered), so the shuffle moves a few large elements rather than
    batches x buckets small ones.
    """

    # Integer ids are bucketed by blocks of QUERY_BLOCK consecutive ids (see
    # query_buckets): a batch of logs sorted by query then holds a few runs of one
    # bucket, cut without a sort, and each bucket receives its queries in order.
    QUERY_BLOCK = 1024

    def __init__(self, n_buckets: int, slice_by: Sequence[str], flush_rows: int = 1 << 22):
        self.n_buckets, self.slice_by = n_buckets, tuple(slice_by)
        self.flush_rows = flush_rows
        self.block = self.QUERY_BLOCK
        self.max_runs = max(64, 2 * n_buckets)

    def start_bundle(self):
        self._parts: dict[int, list] = {}
        self._buffered = 0

    def _flush(self):
        parts, self._parts, self._buffered = self._parts, {}, 0
        for b, ps in parts.items():  # a loop over buckets
            yield b, _encode_fragment(ps)

    def process(self, batch, window=beam.DoFn.WindowParam):
        n = batch.num_rows
        if n == 0:
            return
        path = _batch_path(batch)
        q_col = batch.column('q_id')
        q = _np(q_col) if pa.types.is_integer(q_col.type) else q_col
        rank = _np(batch.column('predicted_rank'))
        relevant = _np(batch.column('truth_relevance')) > 0
        row = (_np(batch.column('_row')) if '_row' in batch.schema.names
               else np.full(n, -1, np.int64))
        slices = (slice_keys(batch, self.slice_by).dictionary_encode() if self.slice_by
                  else None)

        def part(lo, hi, take=None):
            """The packed rows lo:hi (of the batch, or of its rows ``take``)."""
            idx = slice(lo, hi) if take is None else take[lo:hi]
            rs, rel, rw = rank[idx], relevant[idx], row[idx]
            qs = q[idx] if isinstance(q, np.ndarray) else None
            arrow_rows = None
            if not isinstance(q, np.ndarray) or slices is not None:
                # a pickled Arrow slice would carry the whole batch's buffers: copy
                arrow_rows = pa.array(np.arange(lo, hi) if take is None else take[lo:hi])
            return _encode_part(path, qs if isinstance(q, np.ndarray) else q.take(arrow_rows),
                                rs, rel, rw, None if slices is None else slices.take(arrow_rows))

        starts = (_run_starts(_blocks(q, self.block)) if isinstance(q, np.ndarray)
                  else None)
        if starts is not None and len(starts) <= self.max_runs:
            # logs sorted by query: a few runs of one id block each (hence of one
            # bucket), sliced in place; the bucket of a run is that of its first id
            run_bucket = query_buckets(pa.array(q[starts]), self.n_buckets, self.block)
            ends = starts + _run_lengths(starts, n)
            split = [(int(b), part(lo, hi)) for b, lo, hi in
                     zip(run_bucket, starts, ends)]  # a loop over runs
        else:
            bucket = query_buckets(q_col, self.n_buckets, self.block)
            counts = np.bincount(bucket, minlength=self.n_buckets)
            order = np.argsort(bucket.astype(np.uint16 if self.n_buckets < 65536
                                             else np.int64), kind='stable')
            bounds = np.r_[0, np.cumsum(counts)]
            split = [(int(b), part(bounds[b], bounds[b + 1], order))
                     for b in np.flatnonzero(counts)]  # a loop over buckets, not rows
        if not isinstance(window, GlobalWindow):
            for b, p in split:
                yield b, _encode_fragment([p])
            return
        for b, p in split:
            self._parts.setdefault(b, []).append(p)
        self._buffered += n
        if self._buffered >= self.flush_rows:
            yield from self._flush()

    def finish_bundle(self):
        for kv in self._flush():
            yield GlobalWindows.windowed_value(kv)


class _QueryStatsFn(beam.DoFn):
    """All fragments of one bucket -> per-query statistics (overall and per slice)."""

    def __init__(self, ks: Sequence[int]):
        self.ks = tuple(ks)
        self.counters = RecordCounters()

    def process(self, element):
        decoded = _decode_fragments(element[1])
        if decoded is None:
            return
        segments, q, rank, relevant, row, slices = decoded
        codes, uniques = _query_codes(q)
        if _strictly_increasing(codes, rank):
            keep = None  # already in (q_id, rank) order without a repeated pair
        else:
            row = row()
            paths = sorted({p for p, _ in segments if p is not None})
            file_rank = {p: i for i, p in enumerate(paths)}
            file_idx = np.repeat(np.array([file_rank.get(p, -1) for p, _ in segments],
                                          np.int64), [m for _, m in segments])
            order, dup, first = _sort_dedup(codes, rank, (file_idx, row))
            if dup.any():
                yield from self._dead_letters(order, dup, first, paths, file_idx, row, q,
                                              rank, relevant)
            keep = order[~dup]
            codes, rank, relevant = codes[keep], rank[keep], relevant[keep]
        out = [self._stats(_group_stats(codes, rank, relevant, self.ks), uniques, None, 0)]
        if slices is not None:
            sl = pa.concat_arrays([a.dictionary_decode() for a in slices])
            s_codes, s_names = _factorize(sl)
            if keep is not None:
                s_codes = s_codes[keep]
            by_slice = np.argsort(s_codes, kind='stable')  # keeps (q, rank) order within
            ncodes = int(codes.max()) + 1 if len(codes) else 1
            group = s_codes[by_slice] * ncodes + codes[by_slice]
            out.append(self._stats(_group_stats(group, rank[by_slice], relevant[by_slice],
                                                self.ks), uniques, s_names, ncodes))
        for b in out:
            if b.num_rows:
                yield b

    def _stats(self, s, uniques, slice_names, ncodes) -> pa.RecordBatch:
        group = s.pop('group')
        if slice_names is None:
            sl = pa.nulls(len(group), pa.string())
            code = group
        else:
            sl = slice_names.take(pa.array(group // ncodes))
            code = group % ncodes
        q = pa.array(code + uniques) if isinstance(uniques, int) else uniques.take(
            pa.array(code))
        cols = {SLICE_COLUMN: sl, 'q_id': q}
        cols.update({k: pa.array(v) for k, v in s.items()})
        return pa.RecordBatch.from_arrays(list(cols.values()), names=list(cols))

    def _dead_letters(self, order, dup, first, paths, file_idx, row, q, rank, relevant):
        pos = np.flatnonzero(dup)
        rows_dup, rows_kept = order[pos], order[first[pos]]
        self.counters.refuse_accepted(len(pos))
        for i, j in zip(rows_dup, rows_kept):  # a loop over refused rows only
            path = paths[file_idx[i]] if file_idx[i] >= 0 else None
            kept = (f'{posixpath.basename(paths[file_idx[j]])}:' if file_idx[j] >= 0 else
                    'row ') + str(int(row[j]))
            yield beam.pvalue.TaggedOutput(ERRORS, dead_letter(
                path, int(row[i]) if row[i] >= 0 else None, None,
                f'duplicate (q_id, predicted_rank) pair; the row kept is {kept}',
                {'q_id': q[int(i)].item() if isinstance(q, np.ndarray) else q[int(i)].as_py(),
                 'predicted_rank': int(rank[i]), 'relevant': bool(relevant[i])}))


class QueryStats(beam.PTransform):
    """Canonical ranking rows -> per-query statistics batches, plus dead letters.

    Rows are keyed by a hash bucket of ``q_id`` (``n_buckets`` keys, the
    parallelism of this step; integer ids by blocks of
    ``_KeyByQueryBucketFn.QUERY_BLOCK`` consecutive ids, so that a batch of logs
    sorted by query is cut into a few slices without a sort), so all rows of a
    query meet in one group whatever batch or file they came from; each group is
    sorted by ``(q_id, predicted_rank)`` unless already in that order, and
    reduced with numpy. Output ``stats`` batches have
    columns ``_slice`` (null for the overall rows, else the slice key),
    ``q_id, n_returned, n_relevant, n_relevant_at_<k>..., ap_sum``; ``errors``
    holds a dead letter for each repeated (q_id, predicted_rank) row.

    Rows travel packed (logs sorted by query with ranks 0, 1, 2...: about one
    bit per row plus a few bytes per query; else about 3-20 bytes per row, see
    :func:`_encode_part`); a bundle buffers at most
    ``flush_rows`` of them before sending. The grouped step holds one bucket's
    rows in memory (about 60 bytes per row while it sorts), so raise ``n_buckets``
    with the data. Meant for the global window (batch).
    """

    def __init__(self, ks: Sequence[int] = (), slice_by: Sequence[str] = (),
                 n_buckets: int = 32, flush_rows: int = 1 << 22, label: str | None = None):
        super().__init__(label)
        if n_buckets < 1:
            raise ValueError(f'n_buckets must be >= 1, got {n_buckets}')
        self.ks = tuple(sorted(set(ks)))
        self.slice_by, self.n_buckets = tuple(slice_by or ()), n_buckets
        self.flush_rows = flush_rows

    def expand(self, rows):
        return (rows
                | 'KeyByQueryBucket' >> beam.ParDo(
                    _KeyByQueryBucketFn(self.n_buckets, self.slice_by, self.flush_rows))
                | 'GroupQueryBuckets' >> beam.GroupByKey()
                | 'ReduceQueries' >> beam.ParDo(_QueryStatsFn(self.ks))
                .with_output_types(pa.RecordBatch).with_outputs(ERRORS, main='stats'))


class ComputeMetrics(beam.PTransform):
    """Any list of metrics, overall and per slice, in one pass over canonical log batches.

    Classification metrics are one ``CombineGlobally`` over the row batches;
    ranking metrics go through :class:`QueryStats` and one ``CombineGlobally``
    over the per-query batches. Returns a dict of PCollections: ``metrics`` (one
    element, see :class:`MetricsCombineFn`), ``query_stats`` (per-query
    batches, empty without ranking metrics) and ``errors`` (dead letters of
    duplicate ranking rows). ``ks`` adds ``n_relevant_at_<k>`` columns to the
    per-query statistics beyond those the metrics need.

    With ``defaults=False`` and metrics of one level, ``metrics`` is empty when
    there is no row (no query for ranking) instead of holding the metrics of
    nothing, which :meth:`empty_result` gives; this spares Beam's default-value
    branch (an extra stage and a side input).
    """

    def __init__(self, metrics: Sequence[Metric], slice_by: Sequence[str] | None = None,
                 *, ks: Sequence[int] = (), n_buckets: int = 32, defaults: bool = True,
                 label: str | None = None):
        super().__init__(label)
        self.defaults = defaults
        self.metrics = list(metrics)
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError(f'metric names must be unique, got {names}')
        if not self.metrics:
            raise ValueError('no metric to compute')
        self.slice_by = tuple(slice_by or ())
        self.rows_metrics = [m for m in self.metrics if m.level == 'rows']
        self.query_metrics = [m for m in self.metrics if m.level == 'queries']
        self.ks = tuple(sorted(set(ks) | {k for m in self.query_metrics
                                          for k in getattr(m, 'ks', ())}))
        self.n_buckets = n_buckets

    def _combine_fns(self) -> list[MetricsCombineFn]:
        return ([MetricsCombineFn(self.rows_metrics, self.slice_by)] if self.rows_metrics
                else []) + ([MetricsCombineFn(self.query_metrics)] if self.query_metrics
                            else [])

    def empty_result(self) -> dict:
        """The ``metrics`` element of an input without rows."""
        results = [fn.extract_output(fn.create_accumulator()) for fn in self._combine_fns()]
        return results[0] if len(results) == 1 else merge_results(results)

    def expand(self, rows):
        parts = []
        stats = errors = None
        fns = self._combine_fns()

        def combine(fn):
            c = beam.CombineGlobally(fn)
            return c if self.defaults or len(fns) > 1 else c.without_defaults()
        if self.rows_metrics:
            parts.append(rows | 'CombineRowMetrics' >> combine(fns[0]))
        if self.query_metrics or self.ks:
            qs = rows | 'QueryStats' >> QueryStats(self.ks, self.slice_by, self.n_buckets)
            stats, errors = qs.stats, qs[ERRORS]
            if self.query_metrics:
                parts.append(stats | 'CombineQueryMetrics' >> combine(fns[-1]))
        if len(parts) == 1:
            metrics = parts[0]
        else:
            metrics = (parts | 'FlattenMetricParts' >> beam.Flatten()
                       | 'MetricParts' >> beam.combiners.ToList()
                       | 'MergeMetricParts' >> beam.Map(merge_results))
        if stats is None:
            stats = rows.pipeline | 'NoQueryStats' >> beam.Create([])
            errors = rows.pipeline | 'NoDuplicateErrors' >> beam.Create([])
        return {'metrics': metrics, 'query_stats': stats, 'errors': errors}
