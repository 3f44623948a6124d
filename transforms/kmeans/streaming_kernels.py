"""Spark MLlib's ``StreamingKMeans`` update rule as numpy kernels (no Beam).

:func:`streaming_update` is ``StreamingKMeansModel.update`` (Spark MLlib,
``mllib/clustering/StreamingKMeans.scala``) for one mini-batch, step for step:

1. each point goes to its nearest centre (:func:`~beamml.transforms.kmeans.kernels.lloyd_pass`:
   per-cluster sums and counts in one fused pass);
2. ``discount = decay_factor`` (``time_unit='batches'``) or
   ``decay_factor ** n_points`` (``'points'``, ``n_points`` the batch's points);
3. **every** cluster's weight is discounted, ``w <- w * discount``, also the
   clusters that received no point (Spark scales the whole weight vector first);
4. each cluster with ``m > 0`` new points of sum ``s``:
   ``w' = w + m``, ``lambda = m / max(w', 1e-16)``,
   ``c' = c * (1 - lambda) + s * (lambda / m)``, that is
   ``c' = (c n a + x m) / (n a + m)`` with ``x = s / m`` the batch mean;
   a cluster with no new point keeps its centre;
5. the dying-cluster rule: with ``largest`` the first cluster of maximal weight
   and ``smallest`` the first of minimal weight, if
   ``w[smallest] < 1e-8 * w[largest]`` both get the weight
   ``(w[largest] + w[smallest]) / 2``, the largest centre moves to ``x + p`` and
   the smallest (dying) one to ``x - p``, ``x`` the largest centre and
   ``p = 1e-14 * max(|x|, 1)`` per coordinate. Spark's perturbation is this
   deterministic one (no random noise), so no random generator is involved;
   at most one cluster is split per update.

``decay_factor`` 1 weighs every batch alike (the centres are the running means
of their points); 0 forgets everything before the last batch. ``half_life``
``h`` gives ``decay_factor = exp(log(0.5) / h)`` (Spark's ``setHalfLife``): data
``h`` batches (or points) old count half.

Sample weights (an extension: Spark's streaming model has none) make ``m`` and
``s`` the weight and the weighted sum of a cluster's points, and ``n_points``
of the ``'points'`` discount the batch's total weight; a cluster whose new
points all weigh 0 is updated as one that received none.

The Beam side (one update per window, in window order) is
:class:`~beamml.transforms.kmeans.streaming.StreamingKMeans`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from beamml.transforms.core.errors import BeammlError
from beamml.transforms.kmeans.kernels import lloyd_pass

__all__ = [
    'TIME_UNITS', 'DYING_RATIO', 'SPLIT_EPS', 'decay_from_half_life', 'check_decay',
    'StreamingStep', 'streaming_step', 'streaming_update', 'empty_updates',
]

TIME_UNITS = ('batches', 'points')
#: a cluster whose weight is below this fraction of the largest is dying (Spark's 1e-8)
DYING_RATIO = 1e-8
#: the relative perturbation of a split (Spark's 1e-14)
SPLIT_EPS = 1e-14


def decay_from_half_life(half_life: float) -> float:
    """Spark's ``setHalfLife``: ``exp(log(0.5) / half_life)``."""
    half_life = float(half_life)
    if not half_life > 0 or math.isinf(half_life):   # NaN too
        raise BeammlError(f'half_life must be a positive number, got {half_life!r}',
                          parameters=('half_life',))
    return math.exp(math.log(0.5) / half_life)


def check_decay(decay_factor: float, time_unit: str) -> float:
    """``decay_factor`` as a float in [0, 1] and a known ``time_unit``, or a BeammlError."""
    if time_unit not in TIME_UNITS:
        raise BeammlError(f'time_unit must be one of {", ".join(TIME_UNITS)}, got {time_unit!r}',
                          parameters=('time_unit',))
    try:
        a = float(decay_factor)
    except (TypeError, ValueError):
        a = math.nan
    if not 0.0 <= a <= 1.0:
        raise BeammlError(f'decay_factor must be in [0, 1], got {decay_factor!r}',
                          parameters=('decay_factor',))
    return a


class StreamingStep(NamedTuple):
    """One update: the new ``centers`` (k, d) and ``weights`` (k,), the batch's
    points per cluster ``counts`` (k,) (against the previous centres), its
    ``inertia`` against them, and ``split``: ``(largest, smallest)`` when the
    dying-cluster rule split a cluster, else None."""
    centers: np.ndarray
    weights: np.ndarray
    counts: np.ndarray
    inertia: float
    split: tuple[int, int] | None


def _split_dying(centers: np.ndarray, weights: np.ndarray):
    """Spark's dying-cluster rule, in place; returns (largest, smallest) or None."""
    largest = int(np.argmax(weights))     # the first maximum, as Scala's maxBy
    smallest = int(np.argmin(weights))    # the first minimum, as minBy
    max_w, min_w = weights[largest], weights[smallest]
    if not min_w < DYING_RATIO * max_w:
        return None
    weight = (max_w + min_w) / 2.0
    weights[largest] = weight
    weights[smallest] = weight
    x = centers[largest].copy()
    p = SPLIT_EPS * np.maximum(np.abs(x), 1.0)
    centers[largest] = x + p
    centers[smallest] = x - p
    return largest, smallest


def _check_model(centers, weights) -> tuple[np.ndarray, np.ndarray]:
    centers = np.array(centers, dtype=np.float64)   # a copy: the caller's stays
    if centers.ndim != 2 or centers.shape[0] < 1 or centers.shape[1] < 1:
        raise ValueError(f'centers must be a (k, d) array, got shape {centers.shape}')
    weights = np.array(weights, dtype=np.float64).reshape(-1)
    if weights.shape != (centers.shape[0],):
        raise ValueError(f'weights must have one entry per centre ({centers.shape[0]}), '
                         f'got shape {weights.shape}')
    return centers, weights


def streaming_step(centers, weights, X, *, decay_factor: float, time_unit: str = 'batches',
                   sample_weight=None) -> StreamingStep:
    """:func:`streaming_update` with what it saw: see :class:`StreamingStep`."""
    decay_factor = check_decay(decay_factor, time_unit)
    centers, weights = _check_model(centers, weights)
    k, d = centers.shape
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != d:
        raise ValueError(f'X must be (n, {d}) for ({k}, {d}) centres, got shape {X.shape}')
    if len(X):
        sw = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        res = lloyd_pass(X, centers, sample_weight=sw)
        sums, counts, inertia = res.sums, res.counts, res.inertia
        mass = counts.astype(np.float64) if sw is None else res.weights
    else:
        sums, counts, inertia = np.zeros((k, d)), np.zeros(k, dtype=np.int64), 0.0
        mass = np.zeros(k)
    n_new = float(mass.sum())
    discount = decay_factor if time_unit == 'batches' else decay_factor ** n_new
    weights *= discount                                # every cluster, as Spark
    got = mass > 0
    m = mass[got]
    updated = weights[got] + m
    lam = m / np.maximum(updated, 1e-16)
    weights[got] = updated
    centers[got] = centers[got] * (1.0 - lam)[:, None] + sums[got] * (lam / m)[:, None]
    split = _split_dying(centers, weights)
    return StreamingStep(centers, weights, counts, float(inertia), split)


def streaming_update(centers, weights, X, *, decay_factor: float, time_unit: str = 'batches',
                     sample_weight=None) -> tuple[np.ndarray, np.ndarray]:
    """One Spark ``StreamingKMeansModel.update`` on a mini-batch (see the module docstring).

    Parameters
    ----------
    centers : array-like of shape (k, d)
    weights : array-like of shape (k,)
        The clusters' weights so far (Spark's ``clusterWeights``).
    X : ndarray of shape (n, d)
        The batch's points (one window's); ``n`` may be 0 (an empty batch:
        only the discount and the dying-cluster check).
    decay_factor : float in [0, 1]
    time_unit : {'batches', 'points'}
    sample_weight : ndarray of shape (n,), optional

    Returns
    -------
    centers : ndarray of shape (k, d)
    weights : ndarray of shape (k,)
        New arrays; the inputs are not changed.
    """
    step = streaming_step(centers, weights, X, decay_factor=decay_factor, time_unit=time_unit,
                          sample_weight=sample_weight)
    return step.centers, step.weights


def empty_updates(centers, weights, n_batches: int, *, decay_factor: float,
                  time_unit: str = 'batches') -> tuple[np.ndarray, np.ndarray, int]:
    """``n_batches`` updates on empty batches (Spark's empty batch intervals).

    Each discounts the weights (``'batches'``; ``'points'`` discounts by 1) and
    runs the dying-cluster check. After at most ``k`` of them no split can
    happen any more (a split cluster weighs at least half the largest, and the
    largest never grows), so the first ``min(n_batches, k)`` are applied one by
    one and the rest as one factor ``decay_factor ** rest``: equal to applying
    them one by one up to the rounding of that power. Returns
    ``(centers, weights, splits)``.
    """
    centers, weights = _check_model(centers, weights)
    n_batches = int(n_batches)
    splits = 0
    empty = np.empty((0, centers.shape[1]))
    first = min(n_batches, centers.shape[0])
    for _ in range(first):   # a loop over (at most k) empty batches, not points
        step = streaming_step(centers, weights, empty, decay_factor=decay_factor,
                              time_unit=time_unit)
        centers, weights = step.centers, step.weights
        splits += step.split is not None
    rest = n_batches - first
    if rest and time_unit == 'batches':
        weights = weights * (decay_factor ** rest)
    return centers, weights, splits
