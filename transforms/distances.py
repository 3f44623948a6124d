"""Distance kernels shared by inference, the model artifact and K-means (numpy only, no Beam).

:func:`row_sq_norms`, :func:`pairwise_distances` and :func:`nearest_centroid`
work on ``(n_samples, n_features)`` arrays with scikit-learn's names;
:mod:`beamml.transforms.assignment` applies them to points RecordBatches,
:mod:`beamml.transforms.model` to a model's ``predict``, and K-means to its
E-step and seeding.

Exact ties
----------
Distances are computed as ``||x||^2 - 2 x.c + ||c||^2`` (one BLAS matrix
product, squared norms computed once). That expansion is fast but its rounding
error is relative to the *norms*, not to the distance, so two centres at exactly
the same distance from a point can come out in either order, and a point lying
on a centre can get a small non-zero distance. :func:`nearest_centroid` keeps
the fast path and repairs it where it can be wrong: for each point it bounds
the absolute error of every computed squared distance by

    err = 4 (d + 2) eps (||x||^2 + max_j ||c_j||^2)

(twice the textbook bound for the three inner products and two additions),
and the rows where a second centre lies within ``2 err`` of the minimum (a
possible tie), or where the minimum itself is below ``PRECISION_FACTOR * err``
(the distance would be mostly rounding), are recomputed directly as
``((x - c) ** 2).sum()`` over all centres, vectorised over those rows. Such
rows are rare on real data, so the cost is nil (when every row needs it, e.g.
points that are all copies of centres, the batch costs about a brute-force
pass); on duplicates or integer lattices the result is then the direct
computation's: ties go to the lowest centroid index (``np.argmin``) and a point
on a centre is at distance 0, however far from the origin the data lie.

When the centres lie farther from the origin than from their mean (data far
from the origin, such as coordinates in metres), points and centres are first
shifted by that mean: distances are unchanged and the error bound, computed on
the shifted norms, shrinks, so such data keep the fast path (without the shift
every row would need the exact recomputation).

Speed: the squared distances of a block of rows are laid out (k, rows), so the
minimum and the count of near-minimal centres are reductions along contiguous
rows; the label of a row with a single candidate is read as the sum of the
candidates' indices, instead of an ``argmin`` along the short axis of an
(rows, k) array.
"""
from __future__ import annotations

import numpy as np

from beamml.transforms.core.errors import ZERO_VECTOR

__all__ = ['row_sq_norms', 'pairwise_distances', 'nearest_centroid', 'PRECISION_FACTOR',
           'DISTANCES', 'unit_rows', 'nearest_centroid_cosine', 'ZERO_VECTOR']

#: the distances a centroid model (and K-means) can use
DISTANCES = ('euclidean', 'cosine')

#: rows whose nearest squared distance is below this many error bounds are recomputed
PRECISION_FACTOR = 1e6
#: at most this many float64 values in one (rows x k) block of squared distances
_BLOCK_VALUES = 1 << 22
_EPS = np.finfo(np.float64).eps


def _check_X_centers(X, centers) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    centers = np.asarray(centers, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f'X must be 2-D (n_samples, n_features), got shape {X.shape}')
    if centers.ndim != 2:
        raise ValueError(f'centers must be 2-D (n_clusters, n_features), got shape '
                         f'{centers.shape}')
    if centers.shape[0] == 0:
        raise ValueError('centers is empty (0 clusters)')
    if X.shape[1] != centers.shape[1]:
        raise ValueError(f'X has {X.shape[1]} features but centers have {centers.shape[1]}')
    return X, centers


def row_sq_norms(X: np.ndarray) -> np.ndarray:
    """Squared Euclidean norm of each row.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)

    Returns
    -------
    ndarray of shape (n_samples,), float64
    """
    X = np.asarray(X, dtype=np.float64)
    return np.einsum('ij,ij->i', X, X)


def _sq_distances_into(X, centers, X_sq, centers_sq) -> np.ndarray:
    """``||x||^2 - 2 x.c + ||c||^2`` (not clipped), one BLAS product, in place."""
    D = X @ centers.T
    D *= -2.0
    D += X_sq[:, None]
    D += centers_sq[None, :]
    return D


def pairwise_distances(X: np.ndarray, centers: np.ndarray, *, X_sq: np.ndarray | None = None,
                       centers_sq: np.ndarray | None = None,
                       squared: bool = False) -> np.ndarray:
    """Euclidean distance from every point to every centre.

    Computed as ``||x||^2 - 2 x.c + ||c||^2`` with one matrix product, clipped at
    0, then square-rooted (as scikit-learn's ``euclidean_distances``). The
    absolute error is about ``d * eps * (||x||^2 + ||c||^2)``; see the module
    docstring for how :func:`nearest_centroid` makes the minimum exact.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    centers : ndarray of shape (n_clusters, n_features)
    X_sq : ndarray of shape (n_samples,), optional
        Precomputed squared norms of the rows of ``X``.
    centers_sq : ndarray of shape (n_clusters,), optional
        Precomputed squared norms of the centres.
    squared : bool, default False
        Return squared distances.

    Returns
    -------
    ndarray of shape (n_samples, n_clusters), float64
    """
    X, centers = _check_X_centers(X, centers)
    X_sq = row_sq_norms(X) if X_sq is None else np.asarray(X_sq, dtype=np.float64)
    centers_sq = (row_sq_norms(centers) if centers_sq is None
                  else np.asarray(centers_sq, dtype=np.float64))
    D = _sq_distances_into(X, centers, X_sq, centers_sq)
    np.maximum(D, 0.0, out=D)
    if not squared:
        np.sqrt(D, out=D)
    return D


def _exact_sq_distances(X: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """``((x - c) ** 2).sum()`` for every pair, directly (no expansion), in blocks of rows."""
    n, k = X.shape[0], centers.shape[0]
    out = np.empty((n, k))
    step = max(1, _BLOCK_VALUES // max(1, k * X.shape[1]))
    for lo in range(0, n, step):
        diff = X[lo:lo + step, None, :] - centers[None, :, :]
        out[lo:lo + step] = np.einsum('ikj,ikj->ik', diff, diff)
    return out


def nearest_centroid(X: np.ndarray, centers: np.ndarray, *,
                     centers_sq: np.ndarray | None = None,
                     squared: bool = False,
                     return_all: bool = False):
    """Index of and distance to the nearest centre of each point.

    Ties go to the lowest centre index, exactly (see the module docstring: rows
    where the fast expansion could misorder two centres, or where the nearest
    distance is within rounding of 0, are recomputed directly). A row with a
    NaN or infinite value, or whose distances overflow, gets label ``-1`` and
    distance NaN. When the centres lie farther from the origin than from their
    mean, points and centres are first shifted by that mean (distances are
    unchanged, the expansion's rounding error shrinks), so data far from the
    origin keeps the fast path.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    centers : ndarray of shape (n_clusters, n_features)
        Finite values.
    centers_sq : ndarray of shape (n_clusters,), optional
        Precomputed squared norms of the centres (unused when the kernel works
        relative to the centres' mean, see below).
    squared : bool, default False
        Return squared distances (what inertia sums).
    return_all : bool, default False
        Also return the (clipped) distance to every centre.

    Returns
    -------
    labels : ndarray of shape (n_samples,), int64
    distances : ndarray of shape (n_samples,), float64
    all_distances : ndarray of shape (n_samples, n_clusters), float64
        Only with ``return_all``; squared when ``squared``.
    """
    X, centers = _check_X_centers(X, centers)
    if not np.isfinite(centers).all():
        raise ValueError('centers contain NaN or infinite values')
    n, d = X.shape
    k = centers.shape[0]
    # Distances do not change under translation, the expansion's error does: when
    # the centres lie far from the origin (relative to their spread), work on
    # coordinates relative to their mean.
    original = centers  # what the exact recomputation uses
    shift = centers.mean(axis=0)
    dev_sq = row_sq_norms(centers - shift)
    if float(shift @ shift) > float(dev_sq.max()):
        centers, centers_sq = centers - shift, dev_sq
    else:
        shift = None
        centers_sq = (row_sq_norms(centers) if centers_sq is None
                      else np.asarray(centers_sq, dtype=np.float64))
    labels = np.empty(n, dtype=np.int64)
    best = np.empty(n, dtype=np.float64)
    every = np.empty((n, k)) if return_all else None
    err_factor = 4.0 * (d + 2) * _EPS
    max_c_sq = float(centers_sq.max())
    # index of each centre, to read the label of a row with one candidate as a sum
    index = np.arange(k, dtype=np.uint8 if k <= 256 else np.int64)[:, None]
    step = max(1, _BLOCK_VALUES // k)
    for lo in range(0, n, step):
        X_block = X[lo:lo + step]
        Xb = X_block if shift is None else X_block - shift
        with np.errstate(invalid='ignore', over='ignore'):  # non-finite rows: flagged below
            X_sq = row_sq_norms(Xb)
            # (k, rows): the reductions below run along contiguous rows, much faster
            # than argmin along the short axis of an (rows, k) array
            DT = centers @ Xb.T
            DT *= -2.0
            DT += centers_sq[:, None]
            DT += X_sq[None, :]
            m = DT.min(axis=0)
            err = err_factor * (X_sq + max_c_sq)
            cand = (DT <= m + 2.0 * err).view(np.uint8)  # within rounding of the minimum
            n_cand = cand.sum(axis=0, dtype=np.int64)
            lab = (cand * index).sum(axis=0, dtype=np.int64)  # exact when n_cand == 1
            finite = np.isfinite(m)
            redo = finite & ((n_cand > 1) | (m <= PRECISION_FACTOR * err))
        if redo.any():
            idx = np.flatnonzero(redo)
            E = _exact_sq_distances(X_block[idx], original)  # unshifted: exact ties
            lab[idx] = np.argmin(E, axis=1)
            m[idx] = E[np.arange(len(idx)), lab[idx]]
            if return_all:
                DT[:, idx] = E.T
        np.maximum(m, 0.0, out=m)
        if not finite.all():
            lab[~finite] = -1
            m[~finite] = np.nan
        labels[lo:lo + len(m)] = lab
        best[lo:lo + len(m)] = m
        if return_all:
            np.maximum(DT, 0.0, out=DT)
            every[lo:lo + len(m)] = DT.T
    if not squared:
        np.sqrt(best, out=best)
        if return_all:
            np.sqrt(every, out=every)
    if return_all:
        return labels, best, every
    return labels, best


# ----------------------------------------------------------------------------- cosine

def unit_rows(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row scaled to unit Euclidean norm, and which rows are zero vectors.

    A row is first divided by its largest absolute coordinate, then by the norm
    of that (so neither tiny nor huge coordinates under- or overflow the norm);
    the result is ``x / ||x||`` to rounding. A zero row (every coordinate 0,
    where the direction, hence the cosine distance, is undefined) stays 0 and
    is flagged; a row with a NaN or infinite value comes out NaN.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)

    Returns
    -------
    unit : ndarray of shape (n_samples, n_features), float64
    zero : ndarray of shape (n_samples,), bool
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f'X must be 2-D (n_samples, n_features), got shape {X.shape}')
    with np.errstate(invalid='ignore', divide='ignore', over='ignore'):
        scale = (np.abs(X).max(axis=1) if X.shape[1] else np.zeros(X.shape[0]))
        zero = scale == 0
        scale[zero] = 1.0
        U = X / scale[:, None]
        norm = np.sqrt(np.einsum('ij,ij->i', U, U))
        norm[zero] = 1.0
        U /= norm[:, None]
    return U, zero


def nearest_centroid_cosine(X: np.ndarray, centers: np.ndarray, *,
                            return_all: bool = False):
    """Index of and cosine distance to the nearest centre of each point.

    The cosine distance is ``1 - x.c / (||x|| ||c||)`` (Spark MLlib's
    ``CosineDistanceMeasure``), in [0, 2]: points and centres are scaled to
    unit norm (:func:`unit_rows`), the similarities are one BLAS product per
    block of rows, and the nearest centre is the smallest distance, ties
    (equal computed distances) to the lowest index. A zero row, or one with a
    NaN or infinite value, gets label ``-1`` and distance NaN (its direction is
    undefined).

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    centers : ndarray of shape (n_clusters, n_features)
        Finite, none of them a zero vector.
    return_all : bool, default False
        Also return the cosine distance to every centre (NaN rows for refused points).

    Returns
    -------
    labels : ndarray of shape (n_samples,), int64
    distances : ndarray of shape (n_samples,), float64
    all_distances : ndarray of shape (n_samples, n_clusters), float64
        Only with ``return_all``.
    """
    X, centers = _check_X_centers(X, centers)
    if not np.isfinite(centers).all():
        raise ValueError('centers contain NaN or infinite values')
    C, czero = unit_rows(centers)
    if czero.any():
        raise ValueError(f'centre {int(np.flatnonzero(czero)[0])} is a zero vector: '
                         'cosine distance is undefined')
    n, k = X.shape[0], C.shape[0]
    labels = np.empty(n, dtype=np.int64)
    best = np.empty(n, dtype=np.float64)
    every = np.empty((n, k)) if return_all else None
    CT = np.ascontiguousarray(C.T)
    step = max(1, _BLOCK_VALUES // k)
    for lo in range(0, n, step):
        U, zero = unit_rows(X[lo:lo + step])
        D = U @ CT
        np.subtract(1.0, D, out=D)
        np.clip(D, 0.0, 2.0, out=D)   # rounding can step just outside [0, 2]
        bad = zero | ~np.isfinite(D).all(axis=1)
        D[bad] = np.nan
        lab = np.argmin(np.where(bad[:, None], 0.0, D), axis=1)
        m = D[np.arange(len(lab)), lab]
        lab[bad] = -1
        labels[lo:lo + len(lab)] = lab
        best[lo:lo + len(lab)] = m
        if return_all:
            every[lo:lo + len(lab)] = D
    if return_all:
        return labels, best, every
    return labels, best
