"""Numpy kernels of the metrics: confusion counts, and per-query statistics of ranking rows.

Per-query statistics: rows sorted by ``(q_id, predicted_rank)``, repeated pairs
found, one row of counts per query; shared by the metric definitions (on arrays)
and the Beam ranking path (:mod:`beamml.transforms.metrics.ranking`).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamml.transforms.metrics.parsing import (_as_arrow, _np, binary_labels, parse_rank,
                                               parse_relevance)

__all__ = ['confusion_counts', 'query_stats']


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
