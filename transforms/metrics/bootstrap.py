"""Numpy kernels of the Poisson bootstrap (TFMA's method): per-row Poisson(1) weights and
the interval of a measure from its replicates.

Each row carries ``num_bootstrap`` weights drawn from Poisson(1), so the B replicates
of every measure are computed in the same single pass as the measure itself (a row
weighted 2 counts twice, 0 drops out: a bootstrap resample without materialising
it). The weights are a pure function of ``(random_state, row key, replicate)``: a
counter-based generator (splitmix64), so they do not depend on how a runner cuts
the input into batches or bundles, and a run is reproducible with ``random_state``.
The row key is the row's file and row number (``row_keys``); ranking resamples
queries, keyed by their q_id.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

__all__ = ['splitmix64', 'row_keys', 'text_keys', 'poisson_weights', 'bootstrap_interval',
           'POISSON_CDF']

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
#: the cumulative distribution of Poisson(1) at 0, 1, ... 19 (P(X > 19) < 1e-18)
POISSON_CDF = np.cumsum([np.exp(-1.0) / np.prod(np.arange(1, k + 1, dtype=np.float64))
                         for k in range(20)])


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser of uint64 values (a bijection with good avalanche)."""
    z = np.asarray(x, np.uint64)
    with np.errstate(over='ignore'):
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _text_hash(text: str) -> np.uint64:
    return np.uint64(int.from_bytes(hashlib.blake2b(text.encode('utf-8'), digest_size=8)
                                    .digest(), 'little'))


def row_keys(source: str | None, rows: np.ndarray) -> np.ndarray:
    """Keys of rows ``rows`` (int, shape (n,)) of the file ``source``: uint64, shape (n,)."""
    base = _text_hash(source or '')
    with np.errstate(over='ignore'):
        return splitmix64(np.asarray(rows).astype(np.int64).view(np.uint64) ^ base)


def text_keys(values) -> np.ndarray:
    """Keys of integer or text ids (query ids): uint64, shape (n,), vectorised.

    Integers: splitmix64 of the value. Text (a pyarrow string Array, or anything numpy
    holds as str / object): the polynomial hash sum over bytes b_j of (b_j + 1) G^(j+1)
    mod 2**64 (G an odd constant), mixed with the length by splitmix64: the same text
    always has the same key, wherever it is.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array) and pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if isinstance(values, pa.Array) and (pa.types.is_integer(values.type)):
        values = values.to_numpy(zero_copy_only=False)
    if isinstance(values, np.ndarray) and values.dtype.kind in 'iu':
        return splitmix64(values.astype(np.int64).view(np.uint64) ^ _text_hash('int'))
    arr = values if isinstance(values, pa.Array) else pa.array(
        np.asarray(values, dtype=object).astype(str), pa.string())
    arr = arr.cast(pa.large_string())
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], np.int64, n + 1, arr.offset * 8)
    data = np.frombuffer(arr.buffers()[2], np.uint8) if arr.buffers()[2] is not None \
        else np.zeros(0, np.uint8)
    start, end = offsets[:-1], offsets[1:]
    lengths = (end - start).astype(np.int64)
    total = int(lengths.sum())
    pos = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    byte = data[np.repeat(start, lengths) + pos] if total else np.zeros(0, np.uint8)
    with np.errstate(over='ignore'):
        powers = np.cumprod(np.full(int(lengths.max(initial=0)) + 1, _GOLDEN, np.uint64))
        parts = (byte.astype(np.uint64) + np.uint64(1)) * powers[pos]
        sums = np.zeros(n, np.uint64)
        has = lengths > 0   # bytes of a string are contiguous: a segmented sum
        if has.any():
            first = (np.cumsum(lengths) - lengths)[has]
            sums[has] = np.add.reduceat(parts, first)
        return splitmix64(sums ^ splitmix64(lengths.view(np.uint64)))


#: POISSON_CDF in units of 2**-32, those below 2**32 - 1: a weight is the number of
#: thresholds <= a 32-bit draw (at most 12: P(X >= 13) < 1e-10 rounds to no 32-bit draw)
_THRESHOLDS = np.round(POISSON_CDF * 2.0 ** 32)
_THRESHOLDS = _THRESHOLDS[_THRESHOLDS < 2.0 ** 32 - 1].astype(np.uint32)


def poisson_weights(keys: np.ndarray, num_bootstrap: int, random_state: int) -> np.ndarray:
    """Poisson(1) weights of rows, shape (n, num_bootstrap), float64.

    Row i draws 64-bit numbers ``splitmix64(splitmix64(keys[i] ^ seed) + j)``, j = 0, 1,
    ... (``seed`` = ``splitmix64(random_state)``), each cut into two 32-bit uniforms
    (low half first); weight (i, b) is the inverse Poisson(1) CDF at the b-th uniform,
    read off the CDF in units of 2**-32 (a weight of 12 stands for 12 or more: P(X >= 13)
    < 1e-10).
    The same key, replicate and random_state always give the same weight.
    """
    keys = np.asarray(keys, np.uint64).reshape(-1)
    seed = splitmix64(np.array([int(random_state) & 0xFFFFFFFFFFFFFFFF], np.uint64))[0]
    half = (int(num_bootstrap) + 1) // 2
    with np.errstate(over='ignore'):
        base = splitmix64(keys ^ seed)
        z = splitmix64(base[:, None] + np.arange(half, dtype=np.uint64)[None, :])
    u = np.empty((len(keys), half, 2), np.uint32)
    u[:, :, 0] = z   # the low half (a cast keeps the low 32 bits)
    u[:, :, 1] = z >> np.uint64(32)
    u = u.reshape(len(keys), 2 * half)[:, :num_bootstrap]
    w = np.zeros(u.shape, np.uint8)
    for t in _THRESHOLDS:   # a dozen vectorised comparisons (faster than a search)
        w += u >= t
    return w.astype(np.float64)


def bootstrap_interval(replicates: np.ndarray, confidence_level: float = 0.95) -> dict:
    """Percentile interval and standard error of a measure from its B replicates.

    Parameters
    ----------
    replicates : ndarray of shape (B,) or (B, k), the measure on each resample

    Returns
    -------
    dict of ``lower``, ``upper`` (the (1 - level) / 2 and (1 + level) / 2 quantiles,
    numpy's linear interpolation) and ``standard_error`` (standard deviation of the
    replicates, ddof=1), each a float or an array of shape (k,). Replicates that are
    NaN (a 0/0 with zero_division nan) are left out; none left gives NaN.
    """
    r = np.asarray(replicates, np.float64)
    a = (1.0 - confidence_level) / 2.0
    with np.errstate(invalid='ignore', divide='ignore'), _quiet():
        lo = np.nanquantile(r, a, axis=0) if r.size else np.nan
        hi = np.nanquantile(r, 1.0 - a, axis=0) if r.size else np.nan
        se = np.nanstd(r, axis=0, ddof=1) if len(r) > 1 else np.full(r.shape[1:], np.nan)
    return {'lower': lo, 'upper': hi, 'standard_error': se}


class _quiet:
    """numpy's all-NaN warnings off (an all-NaN column gives NaN, as documented)."""

    def __enter__(self):
        import warnings
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter('ignore', RuntimeWarning)

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)
