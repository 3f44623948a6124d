"""K-means seeding: initial centres by k-means++, k-means||, random points, or given ones.

A first pass over the data computes, in one combiner
(:class:`~beamml.transforms.kmeans.combiners.PointStatsCombineFn`), the count,
mean and variance, a uniform sample of ``init_sample_size`` points (priority
sampling: each row gets a random 64-bit key from a generator seeded by
``random_state`` and a hash of its batch; the smallest keys are kept) and up to
``k`` distinct points (to refuse ``k`` > the number of distinct points and to
complete a seeding that came up short). Then:

* ``'k-means++'``: greedy k-means++ on the sample, exactly scikit-learn's
  ``_kmeans_plusplus`` (``2 + int(log k)`` local trials) with
  ``RandomState(random_state)``;
* ``'k-means||'``: Bahmani et al.'s scalable k-means++ (Spark's default): a
  first centre from the sample, then ``init_steps`` distributed rounds each
  sampling every point independently with probability
  ``min(1, l d^2(x, C) / cost(C))``, ``l = oversampling_factor * k``, then
  weighted k-means++ on the candidates (weight = points nearest to each). A
  round needs the cost before it can sample: each point gets a uniform ``u`` and
  the key ``d^2 / u``; the round keeps the largest keys and the total cost, and
  the points with ``key > cost / l`` are exactly those the Bernoulli draws pick
  (at most ``3 l + 32`` per round are kept);
* ``'random'``: ``k`` distinct points of the sample, in sample (random) order;
* an array of shape ``(k, d)`` (see :func:`read_initial_centers` for files).

With sample weights (scikit-learn's ``sample_weight``, Spark's ``weightCol``):

* ``'k-means++'`` runs on the same uniform sample, each sampled point keeping its
  weight, exactly as scikit-learn's ``_init_centroids`` with ``init_size`` (a
  uniform subsample, then ``_kmeans_plusplus(sample_weight=...)`` on it). When
  the sample's weights sum to 0 (every sampled point has weight 0), or the
  sample is completed with distinct points of the data (fewer than k distinct
  points sampled), those points get the sample's mean weight, or 1 when it is 0;
* ``'random'``: k distinct sampled points drawn without replacement with
  probability proportional to their weights (scikit-learn's
  ``choice(p=w / w.sum())``), points of weight 0 only when the others are too few;
* ``'k-means||'`` as Spark's: the cost is ``sum(w d^2)``, a point is drawn with
  probability ``min(1, l w d^2 / cost)`` (the key is ``w d^2 / u``), the first
  candidate is a uniformly drawn point, and a candidate's weight for the final
  k-means++ is the weight of the points nearest to it.

The module reads: the numpy steps (on the statistics, in centred coordinates),
:class:`SeedCenters`, the composite that wires them into the graph
(``KMeansInit``), and :func:`read_initial_centers`.
"""
from __future__ import annotations

import io
from typing import NamedTuple

import apache_beam as beam
import numpy as np

from beamml.transforms.distances import nearest_centroid, row_sq_norms
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.io import features_matrix, read_table_files
from beamml.transforms.core.documents import read_bytes
from beamml.transforms.kmeans.cache import points_of, weights_of
from beamml.transforms.kmeans.accumulators import PointStats
from beamml.transforms.kmeans.combiners import (OversampleCombineFn, PartialCombineFn,
                                                SumArraysCombineFn, merge_partials)
from beamml.transforms.kmeans.kernels import largest, row_hashes
from beamml.transforms.kmeans.seeding_kernels import batch_rng, kmeans_plusplus

__all__ = ['read_initial_centers', 'SeedCenters']


# ----------------------------------------------------------------------------- numpy steps

def _distinct_rows(X: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of each distinct row, in order of appearance."""
    if len(X) == 0:
        return np.arange(0)
    _, first = np.unique(row_hashes(X), return_index=True)
    return np.sort(first)


def _with_distinct(points: np.ndarray, stats: PointStats, n_clusters: int) -> np.ndarray:
    """``points`` (centred) plus distinct points of the data until there are n_clusters distinct."""
    rows = points[_distinct_rows(points)]
    if len(rows) >= n_clusters:
        return points
    extra = stats.distinct - stats.mean
    both = np.concatenate([rows, extra])
    return both[_distinct_rows(both)]


def _seeding_points(stats: PointStats, n_clusters: int
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """The (centred) points k-means++ and 'random' seed from, and their weights (None
    when unweighted): the sample (:func:`_with_distinct`), each point with its
    weight. When the sample is completed with distinct points of the data, the
    sample's duplicates are one point of their summed weight and the added points
    get the sample's mean weight; when the weights sum to 0 every point weighs 1."""
    sample = stats.sample - stats.mean
    X = _with_distinct(sample, stats, n_clusters)
    if stats.sample_weights is None:
        return X, None
    w = np.asarray(stats.sample_weights, dtype=np.float64)
    total = float(w.sum())
    if not total > 0:
        return X, np.ones(len(X))
    if X is not sample:   # completed: the sample deduplicated, then distinct points
        hashes = row_hashes(sample)
        uniq, inverse = np.unique(hashes, return_inverse=True)
        summed = np.bincount(inverse.ravel(), weights=w, minlength=len(uniq))
        by_hash = dict(zip(uniq.tolist(), summed.tolist()))
        mean_w = total / len(w)
        w = np.array([by_hash.get(h, mean_w) for h in row_hashes(X).tolist()])  # < 2k rows
    return X, w


def _seed_plusplus(stats: PointStats, *, n_clusters: int, seed: int) -> np.ndarray:
    X, w = _seeding_points(stats, n_clusters)
    centers, _ = kmeans_plusplus(X, n_clusters, sample_weight=w,
                                 random_state=np.random.RandomState(seed))
    return centers


def _seed_random(stats: PointStats, *, n_clusters: int, seed: int = 0) -> np.ndarray:
    X, w = _seeding_points(stats, n_clusters)
    if w is not None:   # a random order by weight (positive weights first), as choice(p=)
        positive = np.flatnonzero(w > 0)
        order = np.random.RandomState(seed).choice(
            positive, size=len(positive), replace=False, p=w[positive] / w[positive].sum())
        X = X[np.concatenate([order, np.flatnonzero(w <= 0)])]
    return X[_distinct_rows(X)[:n_clusters]]


def _seed_given(centers: np.ndarray, stats: PointStats) -> np.ndarray:
    if centers.shape[1] != stats.n_features:
        raise BeammlError(f'the initial centres have {centers.shape[1]} features but the data '
                          f'have {stats.n_features}')
    return centers - stats.mean


class _Candidates(NamedTuple):
    centers: np.ndarray  # (m, d), centred
    centers_sq: np.ndarray


def _first_candidate(stats: PointStats) -> _Candidates:
    c = stats.sample[:1] - stats.mean  # the smallest key: a uniformly drawn point
    return _Candidates(c, row_sq_norms(c))


def _oversample(element, cand: _Candidates, *, seed: int, round_: int, cap: int):
    """k-means|| round over a batch: the largest keys ``d^2 / u`` (at most cap) and the cost
    (with weights ``w d^2 / u`` and ``sum(w d^2)``, as Spark's)."""
    X, hashes = points_of(element)
    _, sq = nearest_centroid(X, cand.centers, centers_sq=cand.centers_sq, squared=True)
    w = weights_of(element)
    if w is not None:
        sq = sq * w
    u = 1.0 - batch_rng(seed, round_ + 1, hashes).random(len(sq))  # in (0, 1]
    keys = sq / u
    top = largest(keys, cap)
    return keys[top], X[top], float(sq.sum())


def _add_candidates(cand: _Candidates, partials, *, combine_fn: beam.CombineFn,
                    oversampling: float) -> _Candidates:
    """The points the round drew: ``key > cost / l``, i.e. ``u < l d^2 / cost``."""
    drawn = merge_partials(combine_fn, partials)
    if drawn is None:
        return cand
    keys, points, cost = drawn
    if keys is None or cost <= 0:
        return cand
    chosen = keys > cost / oversampling
    points, keys = points[chosen], keys[chosen]
    points = points[np.argsort(-keys, kind='stable')]
    points = points[_distinct_rows(points)]  # (a drawn point is never a candidate already)
    centers = np.concatenate([cand.centers, points])
    return _Candidates(centers, row_sq_norms(centers))


def _candidate_weights(element, cand: _Candidates) -> np.ndarray:
    """Points of a batch nearest to each candidate (with weights: their weight)."""
    X, _ = points_of(element)
    labels, _ = nearest_centroid(X, cand.centers, centers_sq=cand.centers_sq)
    return np.bincount(labels, weights=weights_of(element),
                       minlength=len(cand.centers)).astype(np.float64)


def _seed_from_candidates(cand: _Candidates, partials, stats: PointStats, *,
                          combine_fn: beam.CombineFn, n_clusters: int, seed: int) -> np.ndarray:
    """Weighted k-means++ on the candidates (all of them, completed, when at most k)."""
    weights = merge_partials(combine_fn, partials)
    if len(cand.centers) <= n_clusters:
        X = _with_distinct(cand.centers, stats, n_clusters)
        return X[_distinct_rows(X)[:n_clusters]]
    centers, _ = kmeans_plusplus(cand.centers, n_clusters, sample_weight=weights,
                                 x_squared_norms=cand.centers_sq,
                                 random_state=np.random.RandomState(seed))
    return centers


# ----------------------------------------------------------------------------- composite

class SeedCenters(beam.PTransform):
    """Initial centres (centred), from {'stats', 'points'}: one (k, d) array.

    ``stats`` is the singleton :class:`~beamml.transforms.kmeans.accumulators.PointStats`
    of the data; ``points`` the centred training points (k-means|| reads them
    once per round and once for the candidates' weights).
    """

    def __init__(self, init, n_clusters: int, seed: int, init_steps: int,
                 oversampling_factor: float):
        super().__init__()
        self.init, self.n_clusters, self.seed = init, n_clusters, seed
        self.init_steps, self.oversampling_factor = init_steps, oversampling_factor

    def expand(self, inputs):
        stats, points = inputs['stats'], inputs['points']
        k, seed = self.n_clusters, self.seed
        if isinstance(self.init, np.ndarray):
            return (stats.pipeline
                    | 'InitialCenters' >> beam.Create([self.init])
                    | 'CentreInitial' >> beam.Map(_seed_given, beam.pvalue.AsSingleton(stats)))
        if self.init == 'k-means++':
            return stats | 'KMeansPlusPlus' >> beam.Map(_seed_plusplus, n_clusters=k, seed=seed)
        if self.init == 'random':
            return stats | 'RandomPoints' >> beam.Map(_seed_random, n_clusters=k, seed=seed)
        # k-means||
        oversampling = self.oversampling_factor * k
        cap = int(3 * oversampling) + 32
        cand = stats | 'FirstCandidate' >> beam.Map(_first_candidate)
        draw_fn = OversampleCombineFn(cap)
        for r in range(self.init_steps):
            drawn = points | f'KMeansInitRound{r}' >> beam.ParDo(
                PartialCombineFn(_oversample, draw_fn, seed=seed, round_=r, cap=cap),
                beam.pvalue.AsSingleton(cand))
            cand = cand | f'KMeansInitCandidates{r}' >> beam.Map(
                _add_candidates, beam.pvalue.AsList(drawn), combine_fn=draw_fn,
                oversampling=oversampling)
        weight_fn = SumArraysCombineFn()
        weights = points | 'KMeansInitWeights' >> beam.ParDo(
            PartialCombineFn(_candidate_weights, weight_fn), beam.pvalue.AsSingleton(cand))
        return cand | 'KMeansInitPlusPlus' >> beam.Map(
            _seed_from_candidates, beam.pvalue.AsList(weights),
            beam.pvalue.AsSingleton(stats), combine_fn=weight_fn, n_clusters=k, seed=seed)


# ----------------------------------------------------------------------------- given centres

def read_initial_centers(path: str, *, n_clusters: int | None = None,
                         n_features: int | None = None, **read_kwargs) -> np.ndarray:
    """Initial centres from a file: an ``.npy`` array of shape (k, d), or any point cloud.

    Point-cloud files (Parquet, CSV, JSON lines) are read with the same parsing
    as ``ReadPoints`` (``read_kwargs``: ``input_format``, ``id_column``,
    ``feature_columns``); every row is a centre. A refused row is an error.

    Raises BeammlError when the file is missing or unreadable, has NaN or
    infinite values, or its shape disagrees with ``n_clusters`` / ``n_features``.
    """
    if path.lower().endswith('.npy'):
        try:
            C = np.load(io.BytesIO(read_bytes(path)), allow_pickle=False)
        except Exception as e:
            raise BeammlError(f'cannot read initial centres {path}: {e}') from e
        if C.ndim != 2 or C.dtype.kind not in 'iuf':
            raise BeammlError(f'initial centres {path}: expected a numeric (k, d) array, '
                              f'got shape {C.shape} dtype {C.dtype}')
        C = C.astype(np.float64)
    else:
        table, dead = read_table_files(path, **read_kwargs)
        if dead:
            raise BeammlError(f'initial centres {path}: row {dead[0]["row"]} of '
                              f'{dead[0]["file"]} is refused ({dead[0]["reason"]})')
        C = (features_matrix(table.combine_chunks().to_batches()[0]).copy()
             if table.num_rows else np.empty((0, 0)))
    if C.shape[0] == 0:
        raise BeammlError(f'initial centres {path} hold no centre')
    if not np.isfinite(C).all():
        raise BeammlError(f'initial centres {path} contain NaN or infinite values')
    if n_clusters is not None and C.shape[0] != n_clusters:
        raise BeammlError(f'initial centres {path} hold {C.shape[0]} centres but k={n_clusters}')
    if n_features is not None and C.shape[1] != n_features:
        raise BeammlError(f'initial centres {path} have {C.shape[1]} features but the data '
                          f'have {n_features}')
    return C
