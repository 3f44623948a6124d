"""The numpy kernels of shadow and canary deployment (no Beam).

* :func:`max_weight_matching`: the rectangular assignment problem (Hungarian method in
  the Jonker-Volgenant shortest augmenting path form, vectorised over the columns), and
  :func:`agreement`, labels matched up to the best one-to-one relabelling;
* :func:`id_hash`, :func:`unit_hash`, :func:`canary_mask`: a stable 64-bit hash of the
  ids, the same on every machine and Python run;
* :func:`comparison_report`: the shadow comparison document of a contingency table.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

from beamml.transforms.core.errors import BeammlError

__all__ = ['max_weight_matching', 'agreement', 'id_hash', 'unit_hash', 'canary_mask',
           'comparison_report']


# ----------------------------------------------------------------------------- matching

def max_weight_matching(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The one-to-one matching of rows to columns with the largest total weight.

    ``W`` may be rectangular: ``min(n, m)`` pairs are matched. The same answer as
    ``scipy.optimize.linear_sum_assignment(W, maximize=True)`` (up to ties between
    equally good matchings): the shortest augmenting path algorithm (Hungarian method in
    the Jonker-Volgenant form, with potentials), O(n^2 m) arithmetic, of which the inner
    loop over the columns is one numpy operation: about a second for 300 x 300.

    Parameters
    ----------
    W : ndarray of shape (n, m), finite

    Returns
    -------
    rows, cols : ndarray of int64, shape (min(n, m),)
        Row ``rows[i]`` is matched to column ``cols[i]``; sorted by row.
    """
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2:
        raise ValueError(f'W must be 2-D, got shape {W.shape}')
    if not np.isfinite(W).all():
        raise ValueError('W contains NaN or infinite values')
    if W.shape[0] > W.shape[1]:
        cols, rows = max_weight_matching(W.T)
        order = np.argsort(rows)
        return rows[order], cols[order]
    n, m = W.shape
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cost = W.max() - W          # minimise a non-negative cost
    u = np.zeros(n + 1)
    v = np.zeros(m + 1)
    p = np.zeros(m + 1, dtype=np.int64)      # p[j]: the row (1-based) on column j; 0: free
    way = np.zeros(m + 1, dtype=np.int64)
    for i in range(1, n + 1):
        p[0] = i
        j0 = 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = p[j0]
            free = ~used
            free[0] = False
            cur = cost[i0 - 1] - u[i0] - v[1:]
            better = free[1:] & (cur < minv[1:])
            minv[1:][better] = cur[better]
            way[1:][better] = j0
            masked = np.where(free, minv, np.inf)
            j1 = int(np.argmin(masked))
            delta = masked[j1]
            u[p[used]] += delta
            v[used] -= delta
            minv[free] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
    cols = np.flatnonzero(p[1:]).astype(np.int64)
    rows = p[1:][cols] - 1
    order = np.argsort(rows)
    return rows[order].astype(np.int64), cols[order]


def agreement(table: np.ndarray) -> tuple[float | None, np.ndarray, np.ndarray]:
    """The share of points whose labels agree under the best one-to-one relabelling.

    ``table[a, b]`` counts the points model 1 puts in cluster ``a`` and model 2 in
    ``b``; the relabelling is the maximum-weight matching of the table. Returns
    ``(agreement, rows, cols)``; agreement is None for an empty table.
    """
    table = np.asarray(table)
    total = int(table.sum())
    rows, cols = max_weight_matching(table)
    if total == 0:
        return None, rows, cols
    return float(table[rows, cols].sum()) / total, rows, cols

# ----------------------------------------------------------------------------- canary

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser of ``x + golden`` (uint64, wrapping)."""
    with np.errstate(over='ignore'):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def _fnv1a_strings(arr: pa.Array) -> np.ndarray:
    """FNV-1a 64 of each string's UTF-8 bytes, vectorised over the strings: one numpy
    step per byte position (cost: n x the longest id's length)."""
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64 if pa.types.is_large_string(
        arr.type) else np.int32)[arr.offset:arr.offset + n + 1].astype(np.int64)
    data_buf = arr.buffers()[2]
    data = (np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None
            else np.zeros(0, np.uint8))
    lengths = np.diff(offsets)
    order = np.argsort(-lengths, kind='stable')    # longest first: active rows a prefix
    starts, lens = offsets[:-1][order], lengths[order]
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    longest = int(lens[0]) if n else 0
    # lens is sorted descending: the strings longer than j are the first active[j]
    active = np.searchsorted(-lens, -np.arange(longest), side='left')
    with np.errstate(over='ignore'):
        for j in range(longest):
            c = int(active[j])
            h[:c] = (h[:c] ^ data[starts[:c] + j].astype(np.uint64)) * _FNV_PRIME
    out = np.empty(n, dtype=np.uint64)
    out[order] = h
    return out


def id_hash(ids) -> np.ndarray:
    """A stable 64-bit hash of each id (uint64), the same on every machine and run.

    Integer ids: splitmix64 of the id's int64 value (its little-endian bytes read as
    one uint64), vectorised. String ids: FNV-1a 64 over the UTF-8 bytes, then the
    splitmix64 finaliser (FNV's low bits mix poorly), vectorised over the strings.
    """
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if not isinstance(ids, pa.Array):
        ids = pa.array(ids)
    if ids.null_count:
        raise BeammlError('an id is null: it cannot be hashed')
    if pa.types.is_integer(ids.type):
        x = ids.cast(pa.int64()).to_numpy(zero_copy_only=False).view(np.uint64)
        return _splitmix64(x)
    if pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type):
        return _splitmix64(_fnv1a_strings(ids))
    raise BeammlError(f'ids of type {ids.type} cannot be hashed (int64 or string ids)')


def unit_hash(ids) -> np.ndarray:
    """:func:`id_hash` mapped to [0, 1): its top 53 bits over 2**53 (float64)."""
    return (id_hash(ids) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def canary_mask(ids, fraction: float) -> np.ndarray:
    """Which ids go to the canary model: ``unit_hash(id) < fraction`` (bool array).

    Deterministic (a property of the id alone), so the same points go to the canary in
    every run, on every machine, in batch and in streaming.
    """
    if not 0.0 <= fraction <= 1.0:
        raise BeammlError(f'canary fraction must be in [0, 1], got {fraction}')
    return unit_hash(ids) < fraction

# ----------------------------------------------------------------------------- comparison

def comparison_report(table: np.ndarray, loss: Sequence[float],
                      shadow_refused: int = 0) -> dict:
    """The shadow comparison document of a contingency table and the two loss sums."""
    table = np.asarray(table, dtype=np.int64)
    n = int(table.sum())
    agree, rows, cols = agreement(table)

    def model(counts, total_loss):
        counts = np.asarray(counts, dtype=np.int64)
        return {'points': n, 'inertia': float(total_loss),
                'inertia_per_point': float(total_loss) / n if n else None,
                'cluster_counts': counts.tolist(),
                'cluster_shares': (counts / n).tolist() if n else [None] * len(counts),
                'empty_clusters': int((counts == 0).sum())}

    return {'points': n, 'shadow_refused': int(shadow_refused), 'agreement': agree,
            'matching': [[int(a), int(b)] for a, b in zip(rows, cols)],
            'production': model(table.sum(axis=1), loss[0]),
            'candidate': model(table.sum(axis=0), loss[1]),
            'contingency': table.tolist()}
