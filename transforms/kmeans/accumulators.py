"""K-means accumulators: numpy classes that add and merge batches (no Beam).

* :class:`ClusterSums` (per-cluster sums, counts, inertia, label signature,
  farthest points), the M-step's accumulator, and :class:`LabelledPoints`, what
  it adds;
* :class:`PointStats` (count, mean, variance, a uniform sample, a few distinct
  points), the accumulator of the pass before seeding.

The CombineFns of :mod:`~beamml.transforms.kmeans.combiners` only create these,
delegate to them and merge into the first one, so the maths is tested without Beam.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from beamml.transforms.kmeans.kernels import (MASK64, LloydPass, farthest_order, label_signature,
                                              largest, row_hashes, smallest)
from beamml.transforms.kmeans.seeding_kernels import batch_rng

__all__ = ['LabelledPoints', 'ClusterSums', 'PointStats']


# ----------------------------------------------------------------------------- accumulators

class LabelledPoints(NamedTuple):
    """A batch of points with their labels: what
    :class:`~beamml.transforms.kmeans.combiners.CentroidCombineFn` adds.

    ``sq_distances`` are the squared distances to the assigned centres (summed
    into the inertia; with ``track_farthest`` they pick the farthest points).
    ``row_hashes`` (optional, :func:`~beamml.transforms.kmeans.kernels.row_hashes`)
    feed the labels' signature. ``weights`` (optional): the points' sample weights.
    """
    X: np.ndarray
    labels: np.ndarray
    sq_distances: np.ndarray
    row_hashes: np.ndarray | None = None
    weights: np.ndarray | None = None


class _Slotted:
    """Pickles a class with ``__slots__`` by its slots (an accumulator crosses the wire)."""
    __slots__ = ()

    def __getstate__(self):
        return {s: getattr(self, s) for s in self.__slots__}

    def __setstate__(self, state):
        for s, v in state.items():
            setattr(self, s, v)


class ClusterSums(_Slotted):
    """Accumulator (and output) of
    :class:`~beamml.transforms.kmeans.combiners.CentroidCombineFn`.

    Attributes
    ----------
    sums : ndarray of shape (n_clusters, n_features), or None before any point
    counts : ndarray of shape (n_clusters,), int64
    inertia : float
        Sum of the squared distances.
    signature : int
        :func:`~beamml.transforms.kmeans.kernels.label_signature` of everything
        added (mod 2**64).
    track_farthest : bool
        Whether :meth:`add` keeps the farthest points.
    far_points, far_labels, far_sq_distances : ndarrays or None
        With ``track_farthest``: the ``n_clusters`` points farthest from their
        centre.
    weights : ndarray of shape (n_clusters,), float64, or None
        With sample weights: the weight in each cluster (``sums`` are then of
        ``w * x`` and ``inertia`` is weighted); None when unweighted.
    far_weights : ndarray or None
        With weights and ``track_farthest``: the far points' weights.
    """
    __slots__ = ('sums', 'counts', 'inertia', 'signature', 'track_farthest', 'far_points',
                 'far_labels', 'far_sq_distances', 'weights', 'far_weights')

    def __init__(self, n_clusters: int, *, track_farthest: bool = False):
        self.sums = None
        self.counts = np.zeros(n_clusters, dtype=np.int64)
        self.inertia = 0.0
        self.signature = 0
        self.track_farthest = track_farthest
        self.far_points = self.far_labels = self.far_sq_distances = None
        self.weights = self.far_weights = None

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @classmethod
    def from_pass(cls, part: LloydPass) -> 'ClusterSums':
        """The accumulator of one batch from :func:`~beamml.transforms.kmeans.kernels.lloyd_pass`.

        (No farthest points: ``lloyd_pass`` keeps no per-point distances.)
        """
        acc = cls(len(part.counts))
        acc.sums = np.array(part.sums, dtype=np.float64)
        acc.counts = np.array(part.counts, dtype=np.int64)
        acc.inertia = float(part.inertia)
        acc.signature = int(part.signature or 0) & MASK64
        if getattr(part, 'weights', None) is not None:
            acc.weights = np.array(part.weights, dtype=np.float64)
        return acc

    def add(self, X: np.ndarray, labels: np.ndarray, sq_distances: np.ndarray,
            hashes: np.ndarray | None = None,
            weights: np.ndarray | None = None) -> 'ClusterSums':
        """Add a labelled batch (vectorised: one ``np.bincount`` per feature); returns self.

        With ``weights`` (sample weights) the sums are of ``w * x``, the inertia
        is ``sum(w * sq_distances)`` and the weight per cluster is kept."""
        X = np.asarray(X, dtype=np.float64)
        n, d = X.shape
        if n == 0:
            return self
        k = len(self.counts)
        labels = np.asarray(labels)
        if self.sums is None:
            self.sums = np.zeros((k, d))
        if weights is None:
            for j in range(d):  # a loop over features; each bincount is over the whole batch
                self.sums[:, j] += np.bincount(labels, weights=X[:, j], minlength=k)
            self.inertia += float(np.sum(sq_distances))
        else:
            weights = np.asarray(weights, dtype=np.float64)
            Xw = X * weights[:, None]
            for j in range(d):
                self.sums[:, j] += np.bincount(labels, weights=Xw[:, j], minlength=k)
            if self.weights is None:
                self.weights = np.zeros(k)
            self.weights += np.bincount(labels, weights=weights, minlength=k)
            self.inertia += float(np.dot(np.asarray(sq_distances, dtype=np.float64), weights))
        self.counts += np.bincount(labels, minlength=k)
        if hashes is not None:
            self.signature = (self.signature + label_signature(hashes, labels)) & MASK64
        if self.track_farthest:
            top = largest(sq_distances, k)
            self._keep_farthest(X[top], labels[top], np.asarray(sq_distances)[top],
                                None if weights is None else weights[top])
        return self

    def merge(self, other: 'ClusterSums') -> 'ClusterSums':
        """Add ``other`` into self (``other`` is not changed, nor aliased); returns self."""
        if other.sums is not None:
            if self.sums is None:
                self.sums = other.sums.copy()
            else:
                self.sums += other.sums
        self.counts += other.counts
        self.inertia += other.inertia
        self.signature = (self.signature + other.signature) & MASK64
        if other.weights is not None:
            self.weights = (other.weights.copy() if self.weights is None
                            else self.weights + other.weights)
        if other.far_points is not None:
            self._keep_farthest(other.far_points, other.far_labels, other.far_sq_distances,
                                other.far_weights)
        return self

    def _keep_farthest(self, points, labels, sq, weights=None) -> None:
        if self.far_points is not None:
            points = np.concatenate([self.far_points, points])
            labels = np.concatenate([self.far_labels, labels])
            sq = np.concatenate([self.far_sq_distances, sq])
            if weights is not None:
                weights = np.concatenate([self.far_weights, weights])
        top = largest(sq, len(self.counts))
        self.far_points, self.far_labels, self.far_sq_distances = points[top], labels[top], sq[top]
        self.far_weights = None if weights is None else weights[top]

    def sort_farthest(self) -> 'ClusterSums':
        """Put the farthest points in a canonical order, whatever the merge order; returns self."""
        if self.far_points is not None:
            order = farthest_order(self.far_sq_distances, self.far_points)
            self.far_points = self.far_points[order]
            self.far_labels = self.far_labels[order]
            self.far_sq_distances = self.far_sq_distances[order]
            if self.far_weights is not None:
                self.far_weights = self.far_weights[order]
        return self

    def __repr__(self):
        return f'ClusterSums(n={self.n}, counts={self.counts.tolist()}, inertia={self.inertia})'


class PointStats(_Slotted):
    """Accumulator (and output) of
    :class:`~beamml.transforms.kmeans.combiners.PointStatsCombineFn`.

    Attributes
    ----------
    n : int
    mean, m2 : ndarray of shape (n_features,) or None
        Mean and sum of squared deviations per feature (Chan et al.'s merge).
    sample_keys : ndarray (m,), uint64; sample : ndarray (m, n_features)
        The uniform sample (smallest random keys); sorted by key on output.
    distinct_hashes : ndarray (q,), uint64; distinct : ndarray (q, n_features)
        Up to ``max_distinct`` distinct points (those with the smallest hashes).
    sample_size, max_distinct, seed : int
        The parameters of
        :class:`~beamml.transforms.kmeans.combiners.PointStatsCombineFn`.
    weight_sum : float or None
        With sample weights: their total (None when unweighted). The mean and
        variance stay unweighted, as scikit-learn's centring and ``_tolerance``.
    sample_weights : ndarray (m,) or None
        With sample weights: the weight of each sampled point (the sample itself
        is uniform, as scikit-learn's ``init_size`` subsample, which keeps the
        weights of the points it draws).
    """
    __slots__ = ('n', 'mean', 'm2', 'sample_keys', 'sample', 'distinct_hashes', 'distinct',
                 'sample_size', 'max_distinct', 'seed', 'weight_sum', 'sample_weights')

    def __init__(self, sample_size: int, max_distinct: int, seed: int):
        self.n = 0
        self.mean = self.m2 = None
        self.sample_keys = self.sample = None
        self.distinct_hashes = self.distinct = None
        self.sample_size, self.max_distinct, self.seed = sample_size, max_distinct, seed
        self.weight_sum = self.sample_weights = None

    @property
    def n_features(self) -> int | None:
        return None if self.mean is None else len(self.mean)

    @property
    def var(self) -> np.ndarray:
        return self.m2 / self.n

    @property
    def n_distinct(self) -> int:
        return 0 if self.distinct_hashes is None else len(self.distinct_hashes)

    def add_points(self, X: np.ndarray, hashes: np.ndarray | None = None,
                   weights: np.ndarray | None = None) -> 'PointStats':
        """Add an (n, d) array whose row hashes may be known already (and the points'
        sample weights, if any); returns self."""
        n = X.shape[0]
        if n == 0:
            return self
        part = PointStats(self.sample_size, self.max_distinct, self.seed)
        part.n = n
        part.mean = X.mean(axis=0)
        diff = X - part.mean
        part.m2 = np.einsum('ij,ij->j', diff, diff)
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            part.weight_sum = float(weights.sum())
        if hashes is None:
            hashes = row_hashes(X)
        if self.sample_size > 0:
            keys = batch_rng(self.seed, 0, hashes).bit_generator.random_raw(n).astype(np.uint64)
            top = smallest(keys, self.sample_size)
            part.sample_keys, part.sample = keys[top], X[top]
            if weights is not None:
                part.sample_weights = weights[top]
        if self.max_distinct > 0:
            if self.distinct_hashes is not None and len(self.distinct_hashes) >= self.max_distinct:
                cand = np.flatnonzero(hashes < self.distinct_hashes.max())  # can still enter
            else:
                cand = np.arange(n)
            _, first = np.unique(hashes[cand], return_index=True)
            keep = cand[first[:self.max_distinct]]
            part.distinct_hashes, part.distinct = hashes[keep], X[keep]
        return self.merge(part)

    def merge(self, other: 'PointStats') -> 'PointStats':
        """Merge ``other`` into self (``other`` is not changed); returns self."""
        if other.n == 0:
            return self
        if self.n == 0:  # (the arrays taken over are never changed in place)
            for s in PointStats.__slots__:
                setattr(self, s, getattr(other, s))
            return self
        n = self.n + other.n
        delta = other.mean - self.mean
        self.m2 = self.m2 + other.m2 + delta * delta * (self.n * other.n / n)
        self.mean = self.mean + delta * (other.n / n)
        self.n = n
        if (self.weight_sum is None) != (other.weight_sum is None):
            raise ValueError('PointStats of weighted and unweighted points cannot be merged')
        if other.weight_sum is not None:
            self.weight_sum = self.weight_sum + other.weight_sum
        if other.sample_keys is not None:
            keys = np.concatenate([self.sample_keys, other.sample_keys])
            pts = np.concatenate([self.sample, other.sample])
            top = smallest(keys, self.sample_size)
            self.sample_keys, self.sample = keys[top], pts[top]
            if other.sample_weights is not None:
                self.sample_weights = np.concatenate(
                    [self.sample_weights, other.sample_weights])[top]
        if other.distinct_hashes is not None:
            h = np.concatenate([self.distinct_hashes, other.distinct_hashes])
            pts = np.concatenate([self.distinct, other.distinct])
            _, idx = np.unique(h, return_index=True)
            idx = idx[:self.max_distinct]
            self.distinct_hashes, self.distinct = h[idx], pts[idx]
        return self

    def sort_sample(self) -> 'PointStats':
        """Order the sample by key (a uniformly random order); returns self."""
        if self.sample_keys is not None:
            order = np.argsort(self.sample_keys, kind='stable')
            self.sample_keys, self.sample = self.sample_keys[order], self.sample[order]
            if self.sample_weights is not None:
                self.sample_weights = self.sample_weights[order]
        return self
