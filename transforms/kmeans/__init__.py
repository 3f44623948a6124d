"""K-means training on Beam: seeding, Lloyd iterations, a CombineFn that recomputes the centres.

The arithmetic is scikit-learn's ``KMeans(algorithm='lloyd')`` (1.9), so that from
the same initial centres, with ``tol=0`` and the same ``max_iter``, the centres,
labels and inertia agree with scikit-learn's to rounding, and with the default
``tol`` the number of iterations agrees:

* the data are centred on their mean first (as scikit-learn does for accuracy);
  the centres are moved back at the end;
* iteration ``i`` labels every point with its nearest centre ``C_i`` (the E-step
  computes ``||c||^2 - 2 x.c`` with one BLAS product, as scikit-learn's Lloyd
  kernel; ties go to the lowest index), then ``C_{i+1}`` is the mean of each
  cluster (the M-step, :class:`CentroidCombineFn`);
* it stops after iteration ``i`` when the labels equal those of iteration
  ``i - 1`` (``converged_labels``, scikit-learn's "strict convergence"), else when
  the squared centre shift summed over clusters is ``<= tol * mean(var(X, axis=0))``
  (``converged_tol``), else after ``max_iter`` iterations (``max_iter``);
  ``n_iter`` counts the iterations run, as scikit-learn's ``n_iter_``;
* the final labels, cluster sizes and inertia are computed against the *final*
  centres (scikit-learn re-runs the E-step after the loop).

Labels are not kept between iterations (a point has no state in a Beam graph).
Whether they changed is decided in one number: every iteration sums, over the
points, a 64-bit mix of (hash of the point's coordinates, label) modulo 2**64
(:func:`label_signature`); equal multisets of (point, label) give equal sums,
and a different labelling collides with probability about 2**-64.

The graph
---------
``KMeansStats`` -> ``KMeansCheckInput`` (one pass: statistics, sample, checks;
with a cache directory the same pass writes each batch to the cache),
``KMeansCentrePoints`` (each batch centred, with its row hashes), ``KMeansInit``
(seeding), ``KMeansInitialState``, then ``KMeansIteration0 ..
KMeansIteration{max_iter-1}`` unrolled, and ``KMeansFinal``. An iteration is one
step, ``NearestCentre``: it merges the previous iteration's
:class:`CentroidCombineFn` accumulators (a list side input, one per bundle) with
its state (a singleton side input) into the new centres and the stopping
decision (the M-step, computed once per worker; the first iteration takes the
initial state as it is), then runs the E-step on each batch and adds it into an
accumulator of its own. The state it used goes out through one extra element
of the points, a marker (:class:`_IterationFn`), and is the next iteration's
singleton side input. That is the lifted form of
``CombineGlobally(CentroidCombineFn)`` written out: Beam's own adds a keying
step, a shuffle and a merge stage to every iteration (about 0.2 s per iteration
on the local runner with trivial work), and a separate update step costs one
more stage per iteration. Once stopped, the later iterations pass the state
through; they still read their input, which costs little.

Empty clusters
--------------
``empty_cluster='keep'`` (the default) leaves an empty cluster's centre where it
was. ``empty_cluster='farthest'`` reproduces scikit-learn's relocation
(``_relocate_empty_clusters_dense``): the points farthest from their own centre
(squared distance computed directly, ``((x - c) ** 2).sum()``) are taken, the
farthest for the first (lowest-index) empty cluster, the next for the next one;
each is removed from its cluster and becomes the empty cluster's centre (a
cluster of one point). Then, as scikit-learn does, a cluster still empty (its
only point was moved, or every point lies on its centre) is placed on the
centre of the largest cluster. With one empty cluster at a time this is
exactly scikit-learn's; with several, scikit-learn pairs the same far points
with the empty clusters in ``np.argpartition`` order, which is unspecified, while
here the pairing is by decreasing distance (ties: lexicographic coordinates).

Seeding
-------
A first pass over the data computes, in one combiner (:class:`PointStatsCombineFn`),
the count, mean and variance, a uniform sample of ``init_sample_size`` points
(priority sampling: each row gets a random 64-bit key from a generator seeded by
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
"""
from __future__ import annotations

import dataclasses
import io
import math
import os
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from beamml.transforms.distances import nearest_centroid, row_sq_norms
from beamml.transforms.io import BeammlError, features_matrix

__all__ = [
    'INIT_METHODS', 'EMPTY_CLUSTER', 'STOP_REASONS',
    'row_hashes', 'label_signature', 'tolerance', 'lloyd_labels', 'kmeans_plusplus',
    'update_centers', 'center_shift', 'read_initial_centers',
    'LabelledPoints', 'ClusterSums', 'CentroidCombineFn', 'PointStats', 'PointStatsCombineFn',
    'KMeansState', 'KMeansResult', 'KMeans',
]

INIT_METHODS = ('k-means++', 'k-means||', 'random')
EMPTY_CLUSTER = ('keep', 'farthest')
STOP_REASONS = ('converged_labels', 'converged_tol', 'max_iter')

_MASK64 = (1 << 64) - 1
_LABEL_MULT = np.uint64(0x9E3779B97F4A7C15)
_CHUNK_ROWS = 4096  # rows per BLAS product in the E-step (the distances stay in cache)


# ----------------------------------------------------------------------------- kernels

def _mix64(h: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, element-wise on a uint64 array (in place)."""
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h


_MULTIPLIERS: dict[int, np.ndarray] = {}


def _multipliers(d: int) -> np.ndarray:
    """d odd 64-bit constants (a SplitMix64 sequence), one per feature."""
    m = _MULTIPLIERS.get(d)
    if m is None:
        out, x = [], 0x2545F4914F6CDD1D
        for _ in range(d):
            x = (x + 0x9E3779B97F4A7C15) & _MASK64
            z = x
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
            out.append((z ^ (z >> 31)) | 1)
        m = _MULTIPLIERS[d] = np.array(out, dtype=np.uint64)
    return m


def row_hashes(X: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row's coordinates (equal rows, equal hashes).

    ``-0.0`` and ``0.0`` hash alike. Vectorised: the rows' bit patterns times odd
    constants, summed modulo 2**64 (an integer matrix product), then mixed.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)

    Returns
    -------
    ndarray of shape (n_samples,), uint64
    """
    X = np.asarray(X, dtype=np.float64)
    bits = (X + 0.0).view(np.uint64)  # + 0.0: a copy, and -0.0 becomes 0.0
    return _mix64(bits @ _multipliers(X.shape[1]))


def label_signature(hashes: np.ndarray, labels: np.ndarray) -> int:
    """Sum over the points of a mix of (row hash, label), modulo 2**64.

    Two labellings of the same points have the same signature when they are the
    same (as multisets of (point, label)); otherwise they collide with
    probability about 2**-64. The sum does not depend on the order of the
    points or on how they are split into batches.

    Parameters
    ----------
    hashes : ndarray of shape (n_samples,), uint64
        :func:`row_hashes` of the points.
    labels : ndarray of shape (n_samples,), int

    Returns
    -------
    int in [0, 2**64)
    """
    v = _mix64(hashes ^ ((labels.astype(np.uint64) + np.uint64(1)) * _LABEL_MULT))
    return int(np.add.reduce(v, dtype=np.uint64))


def _batch_seed(seed: int, stream: int, hashes: np.ndarray) -> np.random.Generator:
    """A generator for one batch, from the run's seed and the batch's content.

    The same batch gets the same draws whatever the order batches arrive in.
    """
    h = int(np.add.reduce(hashes, dtype=np.uint64)) if len(hashes) else 0
    return np.random.default_rng([seed & _MASK64, stream, h & 0xFFFFFFFF, h >> 32, len(hashes)])


def tolerance(variances: np.ndarray, tol: float) -> float:
    """scikit-learn's absolute tolerance: ``tol * mean(var(X, axis=0))`` (0 when tol is 0)."""
    if tol == 0:
        return 0.0
    return float(np.mean(variances) * tol)


_POOL: dict = {}


def _thread_pool():
    """A small thread pool for the E-step, one per process (None on a single core)."""
    pid = os.getpid()  # a forked child must not reuse its parent's (threadless) pool
    if pid not in _POOL:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = os.cpu_count() or 1
        _POOL.clear()
        _POOL[pid] = (ThreadPoolExecutor(min(cores, 8), thread_name_prefix='beamml-kmeans')
                      if cores > 1 else None)
    return _POOL[pid]


def _map_chunks(chunk, starts) -> None:
    """``chunk(lo)`` for every start, on the thread pool when there are several."""
    starts = list(starts)
    pool = _thread_pool() if len(starts) >= 4 else None
    if pool is None:
        for lo in starts:
            chunk(lo)
    else:  # numpy releases the GIL in the product and argmin: chunks run in parallel
        for _ in pool.map(chunk, starts):
            pass


def lloyd_labels(X: np.ndarray, centers: np.ndarray, centers_sq: np.ndarray | None = None,
                 *, return_distances: bool = True):
    """The Lloyd E-step: nearest centre of each point, and its squared distance.

    Computes ``||c||^2 - 2 x.c`` with one BLAS product per chunk of rows and takes
    the first minimum, exactly as scikit-learn's Lloyd kernel
    (``_update_chunk_dense``), so labels agree with scikit-learn's bit for bit
    in practice. Chunks of 4096 rows run on a small thread pool (one thread
    per core, as scikit-learn's OpenMP loop) when there are several.
    (:func:`beamml.transforms.distances.nearest_centroid`, used for inference, also
    repairs near-ties exactly; it is about twice as slow.)

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    centers : ndarray of shape (n_clusters, n_features)
    centers_sq : ndarray of shape (n_clusters,), optional
        Squared norms of the centres.
    return_distances : bool, default True

    Returns
    -------
    labels : ndarray of shape (n_samples,), int64
    sq_distances : ndarray of shape (n_samples,), float64
        ``||x||^2 + ||c||^2 - 2 x.c`` for the nearest centre, clipped at 0
        (only with ``return_distances``).
    """
    X = np.asarray(X, dtype=np.float64)
    centers = np.asarray(centers, dtype=np.float64)
    if centers_sq is None:
        centers_sq = row_sq_norms(centers)
    n = X.shape[0]
    labels = np.empty(n, dtype=np.int64)
    best = np.empty(n, dtype=np.float64) if return_distances else None
    # -2 folded into the centres: scaling by a power of two is exact, so
    # x.(-2c) == -2 (x.c) bit for bit, and one pass over D is saved.
    minus_2ct = np.ascontiguousarray(centers.T * -2.0)
    k = centers.shape[0]

    def chunk(lo):
        Xc = X[lo:lo + _CHUNK_ROWS]
        D = Xc @ minus_2ct
        D += centers_sq
        lab = D.argmin(axis=1)
        labels[lo:lo + len(lab)] = lab
        if return_distances:  # ||x||^2 + min(||c||^2 - 2 x.c), clipped at 0
            b = D.ravel()[lab + k * np.arange(len(lab))]  # D[i, lab[i]]
            b += np.einsum('ij,ij->i', Xc, Xc)
            np.maximum(b, 0.0, out=b)
            best[lo:lo + len(lab)] = b

    _map_chunks(chunk, range(0, n, _CHUNK_ROWS))
    if not return_distances:
        return labels
    return labels, best


def _sq_distances_sklearn(A: np.ndarray, B: np.ndarray, B_sq: np.ndarray) -> np.ndarray:
    """scikit-learn's ``_euclidean_distances(A, B, Y_norm_squared=B_sq, squared=True)``."""
    D = -2 * (A @ B.T)
    D += row_sq_norms(A)[:, None]
    D += B_sq.reshape(1, -1)
    np.maximum(D, 0, out=D)
    return D


def _check_random_state(random_state) -> np.random.RandomState:
    if random_state is None or isinstance(random_state, (int, np.integer)):
        return np.random.RandomState(random_state)
    if isinstance(random_state, np.random.RandomState):
        return random_state
    raise ValueError(f'random_state must be None, an int or a RandomState, '
                     f'got {type(random_state).__name__}')


def kmeans_plusplus(X: np.ndarray, n_clusters: int, *, sample_weight: np.ndarray | None = None,
                    x_squared_norms: np.ndarray | None = None, random_state=None,
                    n_local_trials: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-means++ seeding, step for step scikit-learn's ``_kmeans_plusplus``.

    With the same ``random_state`` it returns the same centres and indices as
    ``sklearn.cluster.kmeans_plusplus`` (same draws, same arithmetic).

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    n_clusters : int
    sample_weight : ndarray of shape (n_samples,), optional
        Weights (default 1 each): the first centre is drawn with probability
        ``w / sum(w)``, the next ones with probability ``w d^2 / sum(w d^2)``.
    x_squared_norms : ndarray of shape (n_samples,), optional
    random_state : None, int or RandomState
    n_local_trials : int, optional
        Candidates tried per centre; default ``2 + int(log(n_clusters))``.

    Returns
    -------
    centers : ndarray of shape (n_clusters, n_features)
    indices : ndarray of shape (n_clusters,)
        ``X[indices[i]] == centers[i]``.
    """
    X = np.asarray(X, dtype=np.float64)
    n_samples, n_features = X.shape
    if not 1 <= n_clusters <= n_samples:
        raise ValueError(f'n_clusters={n_clusters} must be in [1, n_samples={n_samples}]')
    random_state = _check_random_state(random_state)
    if sample_weight is None:
        sample_weight = np.ones(n_samples, dtype=X.dtype)
    sample_weight = np.asarray(sample_weight, dtype=np.float64)
    if x_squared_norms is None:
        x_squared_norms = row_sq_norms(X)
    centers = np.empty((n_clusters, n_features), dtype=X.dtype)
    if n_local_trials is None:
        n_local_trials = 2 + int(np.log(n_clusters))

    center_id = random_state.choice(n_samples, p=sample_weight / sample_weight.sum())
    indices = np.full(n_clusters, -1, dtype=int)
    centers[0] = X[center_id]
    indices[0] = center_id
    closest_dist_sq = _sq_distances_sklearn(centers[0, np.newaxis], X, x_squared_norms)
    current_pot = closest_dist_sq @ sample_weight

    for c in range(1, n_clusters):  # a loop over centres, not points
        rand_vals = random_state.uniform(size=n_local_trials) * current_pot
        candidate_ids = np.searchsorted(np.cumsum(sample_weight * closest_dist_sq), rand_vals)
        np.clip(candidate_ids, None, closest_dist_sq.size - 1, out=candidate_ids)
        distance_to_candidates = _sq_distances_sklearn(X[candidate_ids], X, x_squared_norms)
        np.minimum(closest_dist_sq, distance_to_candidates, out=distance_to_candidates)
        candidates_pot = distance_to_candidates @ sample_weight.reshape(-1, 1)
        best_candidate = np.argmin(candidates_pot)
        current_pot = candidates_pot[best_candidate]
        closest_dist_sq = distance_to_candidates[best_candidate]
        best_candidate = candidate_ids[best_candidate]
        centers[c] = X[best_candidate]
        indices[c] = best_candidate
    return centers, indices


def _farthest_order(sq_distances: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Order of candidates: distance decreasing, ties by lexicographic coordinates."""
    keys = [points[:, j] for j in range(points.shape[1] - 1, -1, -1)] + [-sq_distances]
    return np.lexsort(keys)


def update_centers(sums: np.ndarray, counts: np.ndarray, centers_old: np.ndarray, *,
                   empty_cluster: str = 'keep', far_points: np.ndarray | None = None,
                   far_labels: np.ndarray | None = None,
                   far_sq_distances: np.ndarray | None = None):
    """The M-step: new centres from per-cluster sums and counts, with empty clusters handled.

    Parameters
    ----------
    sums : ndarray of shape (n_clusters, n_features)
        Sum of the points of each cluster.
    counts : ndarray of shape (n_clusters,)
        Points in each cluster.
    centers_old : ndarray of shape (n_clusters, n_features)
        The centres the labels were computed against.
    empty_cluster : {'keep', 'farthest'}
        See the module docstring.
    far_points, far_labels, far_sq_distances : ndarrays, optional
        For ``'farthest'``: the points farthest from their centre (at least as
        many as there are empty clusters), their labels and squared distances.

    Returns
    -------
    centers : ndarray of shape (n_clusters, n_features)
    counts : ndarray of shape (n_clusters,), int64
        After relocation.
    n_relocated : int
    """
    if empty_cluster not in EMPTY_CLUSTER:
        raise ValueError(f'empty_cluster must be one of {EMPTY_CLUSTER}, got {empty_cluster!r}')
    sums = np.array(sums, dtype=np.float64)
    counts = np.array(counts, dtype=np.int64)
    empty = np.flatnonzero(counts == 0)
    n_relocated = 0
    if (len(empty) and empty_cluster == 'farthest' and far_sq_distances is not None
            and len(far_sq_distances) and far_sq_distances.max() > 0):
        order = _farthest_order(far_sq_distances, far_points)
        for new_id, far in zip(empty, order):  # a loop over empty clusters, not points
            x, old_id = far_points[far], int(far_labels[far])
            sums[old_id] -= x
            counts[old_id] -= 1
            sums[new_id] = x
            counts[new_id] = 1
            n_relocated += 1
    centers = np.array(centers_old, dtype=np.float64, copy=True)
    full = counts > 0
    # as scikit-learn's _average_centers: multiply by the reciprocal
    centers[full] = sums[full] * (1.0 / counts[full])[:, None]
    if empty_cluster == 'farthest' and not full.all():
        centers[~full] = centers[np.argmax(counts)]
    return centers, counts, n_relocated


def center_shift(centers_old: np.ndarray, centers_new: np.ndarray) -> np.ndarray:
    """Euclidean distance each centre moved, shape (n_clusters,)."""
    diff = centers_new - centers_old
    return np.sqrt(np.einsum('ij,ij->i', diff, diff))


def _as_matrix(element) -> np.ndarray:
    if isinstance(element, pa.RecordBatch):
        return features_matrix(element)
    if isinstance(element, pa.Table):
        return features_matrix(element.combine_chunks().to_batches()[0]) if element.num_rows \
            else np.empty((0, element.schema.field('features').type.list_size))
    return np.asarray(element, dtype=np.float64)


def read_initial_centers(path: str, *, n_clusters: int | None = None,
                         n_features: int | None = None, **read_kwargs) -> np.ndarray:
    """Initial centres from a file: an ``.npy`` array of shape (k, d), or any point cloud.

    Point-cloud files (Parquet, CSV, JSON lines) are read with the same parsing
    as ``ReadPoints`` (``read_kwargs``: ``input_format``, ``id_column``,
    ``feature_columns``); every row is a centre. A refused row is an error.

    Raises BeammlError when the file is missing or unreadable, has NaN or
    infinite values, or its shape disagrees with ``n_clusters`` / ``n_features``.
    """
    from apache_beam.io.filesystems import FileSystems
    from beamml.transforms.io import read_table_files

    if path.lower().endswith('.npy'):
        try:
            with FileSystems.open(path) as f:
                C = np.load(io.BytesIO(f.read()), allow_pickle=False)
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


# ----------------------------------------------------------------------------- combiners

class LabelledPoints(NamedTuple):
    """What :class:`CentroidCombineFn` adds: a batch of points with their labels.

    ``sq_distances`` are the squared distances to the assigned centres (summed
    into the inertia; with ``track_farthest`` they pick the farthest points).
    ``row_hashes`` (optional, :func:`row_hashes`) feed the labels' signature.
    """
    X: np.ndarray
    labels: np.ndarray
    sq_distances: np.ndarray
    row_hashes: np.ndarray | None = None


class ClusterSums:
    """Accumulator (and output) of :class:`CentroidCombineFn`.

    Attributes
    ----------
    sums : ndarray of shape (n_clusters, n_features), or None before any point
    counts : ndarray of shape (n_clusters,), int64
    inertia : float
        Sum of the squared distances.
    signature : int
        :func:`label_signature` of everything added (mod 2**64).
    far_points, far_labels, far_sq_distances : ndarrays or None
        With ``track_farthest``: the ``n_clusters`` points farthest from their
        centre.
    """
    __slots__ = ('sums', 'counts', 'inertia', 'signature', 'far_points', 'far_labels',
                 'far_sq_distances')

    def __init__(self, n_clusters: int):
        self.sums = None
        self.counts = np.zeros(n_clusters, dtype=np.int64)
        self.inertia = 0.0
        self.signature = 0
        self.far_points = self.far_labels = self.far_sq_distances = None

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def __getstate__(self):
        return {s: getattr(self, s) for s in self.__slots__}

    def __setstate__(self, state):
        for s, v in state.items():
            setattr(self, s, v)

    def __repr__(self):
        return f'ClusterSums(n={self.n}, counts={self.counts.tolist()}, inertia={self.inertia})'


def _top(keys: np.ndarray, m: int) -> np.ndarray:
    """Indices of the m largest keys (all when there are at most m)."""
    if len(keys) <= m:
        return np.arange(len(keys))
    return np.argpartition(keys, len(keys) - m)[len(keys) - m:]


class CentroidCombineFn(beam.CombineFn):
    """Per-cluster sums, counts and inertia of labelled batches (the K-means M-step).

    Inputs are :class:`LabelledPoints` (or tuples ``(X, labels, sq_distances[,
    row_hashes])``), one per batch; :meth:`add_input` is vectorised
    (``np.bincount`` per feature). Accumulators are :class:`ClusterSums`;
    merging adds into the first. The output is the merged :class:`ClusterSums`;
    :func:`update_centers` turns it into centres.

    Parameters
    ----------
    n_clusters : int
    track_farthest : bool, default False
        Also keep the ``n_clusters`` points with the largest ``sq_distances``
        (for ``empty_cluster='farthest'``).
    """

    def __init__(self, n_clusters: int, *, track_farthest: bool = False):
        if n_clusters < 1:
            raise ValueError(f'n_clusters must be >= 1, got {n_clusters}')
        self.n_clusters = int(n_clusters)
        self.track_farthest = track_farthest

    def create_accumulator(self) -> ClusterSums:
        return ClusterSums(self.n_clusters)

    def add_input(self, acc: ClusterSums, element) -> ClusterSums:
        X, labels, sq, hashes = (tuple(element) + (None,))[:4]
        X = np.asarray(X, dtype=np.float64)
        n, d = X.shape
        if n == 0:
            return acc
        k = self.n_clusters
        labels = np.asarray(labels)
        if acc.sums is None:
            acc.sums = np.zeros((k, d))
        for j in range(d):  # a loop over features; each bincount is over the whole batch
            acc.sums[:, j] += np.bincount(labels, weights=X[:, j], minlength=k)
        acc.counts += np.bincount(labels, minlength=k)
        acc.inertia += float(np.sum(sq))
        if hashes is not None:
            acc.signature = (acc.signature + label_signature(hashes, labels)) & _MASK64
        if self.track_farthest:
            top = _top(sq, k)
            self._merge_far(acc, X[top], labels[top], np.asarray(sq)[top])
        return acc

    def _merge_far(self, acc, points, labels, sq):
        if acc.far_points is not None:
            points = np.concatenate([acc.far_points, points])
            labels = np.concatenate([acc.far_labels, labels])
            sq = np.concatenate([acc.far_sq_distances, sq])
        top = _top(sq, self.n_clusters)
        acc.far_points, acc.far_labels, acc.far_sq_distances = points[top], labels[top], sq[top]

    def merge_accumulators(self, accumulators) -> ClusterSums:
        accumulators = iter(accumulators)
        first = next(accumulators)
        for acc in accumulators:
            if acc.sums is not None:
                if first.sums is None:
                    first.sums = acc.sums.copy()
                else:
                    first.sums += acc.sums
            first.counts += acc.counts
            first.inertia += acc.inertia
            first.signature = (first.signature + acc.signature) & _MASK64
            if acc.far_points is not None:
                self._merge_far(first, acc.far_points, acc.far_labels, acc.far_sq_distances)
        return first

    def extract_output(self, acc: ClusterSums) -> ClusterSums:
        if acc.far_points is not None:  # a canonical order, whatever the merge order
            order = _farthest_order(acc.far_sq_distances, acc.far_points)
            acc.far_points = acc.far_points[order]
            acc.far_labels = acc.far_labels[order]
            acc.far_sq_distances = acc.far_sq_distances[order]
        return acc


class PointStats:
    """Accumulator (and output) of :class:`PointStatsCombineFn`.

    Attributes
    ----------
    n : int
    mean, m2 : ndarray of shape (n_features,) or None
        Mean and sum of squared deviations per feature (Chan et al.'s merge).
    sample_keys : ndarray (m,), uint64; sample : ndarray (m, n_features)
        The uniform sample (smallest random keys); sorted by key on output.
    distinct_hashes : ndarray (q,), uint64; distinct : ndarray (q, n_features)
        Up to ``max_distinct`` distinct points (those with the smallest hashes).
    """
    __slots__ = ('n', 'mean', 'm2', 'sample_keys', 'sample', 'distinct_hashes', 'distinct')

    def __init__(self):
        self.n = 0
        self.mean = self.m2 = None
        self.sample_keys = self.sample = None
        self.distinct_hashes = self.distinct = None

    @property
    def n_features(self) -> int | None:
        return None if self.mean is None else len(self.mean)

    @property
    def var(self) -> np.ndarray:
        return self.m2 / self.n

    @property
    def n_distinct(self) -> int:
        return 0 if self.distinct_hashes is None else len(self.distinct_hashes)

    def __getstate__(self):
        return {s: getattr(self, s) for s in self.__slots__}

    def __setstate__(self, state):
        for s, v in state.items():
            setattr(self, s, v)


class PointStatsCombineFn(beam.CombineFn):
    """Count, mean and variance per feature, a uniform sample and a few distinct points.

    One pass, before seeding. Inputs are points RecordBatches (or (n, d) arrays).

    Parameters
    ----------
    sample_size : int
        Points in the uniform sample (priority sampling: the smallest random
        keys; a batch's keys come from ``seed`` and a hash of the batch).
    max_distinct : int
        Keep up to this many distinct points (those with the smallest
        :func:`row_hashes`); fewer means the data have fewer distinct points.
    seed : int
    """

    def __init__(self, sample_size: int, max_distinct: int, seed: int):
        self.sample_size = int(sample_size)
        self.max_distinct = int(max_distinct)
        self.seed = int(seed)

    def create_accumulator(self) -> PointStats:
        return PointStats()

    def add_input(self, acc: PointStats, element) -> PointStats:
        return self.add_points(acc, _as_matrix(element))

    def add_points(self, acc: PointStats, X: np.ndarray,
                   hashes: np.ndarray | None = None) -> PointStats:
        """:meth:`add_input` of an (n, d) array whose :func:`row_hashes` may be known."""
        n = X.shape[0]
        if n == 0:
            return acc
        part = PointStats()
        part.n = n
        part.mean = X.mean(axis=0)
        diff = X - part.mean
        part.m2 = np.einsum('ij,ij->j', diff, diff)
        if hashes is None:
            hashes = row_hashes(X)
        if self.sample_size > 0:
            keys = _batch_seed(self.seed, 0, hashes).bit_generator.random_raw(n).astype(np.uint64)
            top = _smallest(keys, self.sample_size)
            part.sample_keys, part.sample = keys[top], X[top]
        if self.max_distinct > 0:
            if acc.distinct_hashes is not None and len(acc.distinct_hashes) >= self.max_distinct:
                cand = np.flatnonzero(hashes < acc.distinct_hashes.max())  # can still enter
            else:
                cand = np.arange(n)
            u, first = np.unique(hashes[cand], return_index=True)
            keep = cand[first[:self.max_distinct]]
            part.distinct_hashes, part.distinct = hashes[keep], X[keep]
        return self.merge_accumulators([acc, part])

    def merge_accumulators(self, accumulators) -> PointStats:
        accumulators = iter(accumulators)
        first = next(accumulators)
        for acc in accumulators:
            if acc.n == 0:
                continue
            if first.n == 0:
                for s in PointStats.__slots__:
                    setattr(first, s, getattr(acc, s))
                continue
            n = first.n + acc.n
            delta = acc.mean - first.mean
            first.m2 = first.m2 + acc.m2 + delta * delta * (first.n * acc.n / n)
            first.mean = first.mean + delta * (acc.n / n)
            first.n = n
            if acc.sample_keys is not None:
                keys = np.concatenate([first.sample_keys, acc.sample_keys])
                pts = np.concatenate([first.sample, acc.sample])
                top = _smallest(keys, self.sample_size)
                first.sample_keys, first.sample = keys[top], pts[top]
            if acc.distinct_hashes is not None:
                h = np.concatenate([first.distinct_hashes, acc.distinct_hashes])
                pts = np.concatenate([first.distinct, acc.distinct])
                _, idx = np.unique(h, return_index=True)
                idx = idx[:self.max_distinct]
                first.distinct_hashes, first.distinct = h[idx], pts[idx]
        return first

    def extract_output(self, acc: PointStats) -> PointStats:
        if acc.sample_keys is not None:
            order = np.argsort(acc.sample_keys, kind='stable')
            acc.sample_keys, acc.sample = acc.sample_keys[order], acc.sample[order]
        return acc


def _smallest(keys: np.ndarray, m: int) -> np.ndarray:
    if len(keys) <= m:
        return np.arange(len(keys))
    return np.argpartition(keys, m - 1)[:m]


class _OversampleCombineFn(beam.CombineFn):
    """k-means|| round: the total cost and the points with the largest keys ``d^2 / u``."""

    def __init__(self, cap: int):
        self.cap = int(cap)

    def create_accumulator(self):
        return [None, None, 0.0]  # keys, points, cost

    def add_input(self, acc, element):
        return self.merge_accumulators([acc, list(element)])

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        first = next(accumulators)
        for keys, pts, cost in accumulators:
            first[2] += cost
            if keys is None or not len(keys):
                continue
            if first[0] is not None:
                keys = np.concatenate([first[0], keys])
                pts = np.concatenate([first[1], pts])
            top = _top(keys, self.cap)
            first[0], first[1] = keys[top], pts[top]
        return first

    def extract_output(self, acc):
        return tuple(acc)


class _SumArraysFn(beam.CombineFn):
    """Element-wise sum of equal-shape arrays (candidate weights of k-means||)."""

    def create_accumulator(self):
        return None

    def add_input(self, acc, element):
        return element.copy() if acc is None else acc + element

    def merge_accumulators(self, accumulators):
        out = None
        for a in accumulators:
            if a is not None:
                out = a.copy() if out is None else out + a
        return out

    def extract_output(self, acc):
        return acc


# ----------------------------------------------------------------------------- state

@dataclasses.dataclass
class KMeansState:
    """What one Lloyd iteration hands the next (a singleton side input).

    ``centers`` are in centred coordinates (the data mean subtracted).
    """
    centers: np.ndarray
    mean: np.ndarray
    tol: float
    n_samples: int
    initial_centers: np.ndarray
    n_iter: int = 0
    stopped: bool = False
    stop_reason: str | None = None
    signature: int | None = None
    inertia_history: list = dataclasses.field(default_factory=list)
    center_shift_history: list = dataclasses.field(default_factory=list)
    n_relocated: int = 0

    @property
    def centers_sq(self) -> np.ndarray:
        return row_sq_norms(self.centers)


@dataclasses.dataclass
class KMeansResult:
    """The outcome of :class:`KMeans`.

    Attributes
    ----------
    centers : ndarray of shape (k, d)
    n_iter : int
        Iterations run (scikit-learn's ``n_iter_``).
    stop_reason : {'converged_labels', 'converged_tol', 'max_iter'}
    inertia : float
        Sum of squared distances to the nearest final centre.
    inertia_history : list of float
        Inertia of iteration i (labels against the centres entering it).
    center_shift_history : list of float
        Squared shift of the centres summed over clusters, per iteration.
    cluster_sizes : list of int
        Points per cluster, labels against the final centres.
    n_samples : int
    tol : float
        The absolute tolerance used (``tol * mean variance``).
    initial_centers : ndarray of shape (k, d)
    n_relocated : int
        Empty clusters relocated (``empty_cluster='farthest'``).
    """
    centers: np.ndarray
    n_iter: int
    stop_reason: str
    inertia: float
    inertia_history: list
    center_shift_history: list
    cluster_sizes: list
    n_samples: int
    tol: float
    initial_centers: np.ndarray
    n_relocated: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out['centers'] = self.centers.tolist()
        out['initial_centers'] = self.initial_centers.tolist()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> 'KMeansResult':
        data = dict(data)
        data['centers'] = np.array(data['centers'], dtype=np.float64)
        data['initial_centers'] = np.array(data['initial_centers'], dtype=np.float64)
        return cls(**data)


# ----------------------------------------------------------------------------- Beam: DoFns

def _identity(element):
    return element


def _check_stats(_, partials, *, combine_fn: beam.CombineFn, n_clusters: int) -> PointStats:
    """Merge the statistics; refuse an empty input or k above the number of distinct points."""
    stats = _merge_partials(combine_fn, partials)
    if stats is None:
        stats = combine_fn.extract_output(combine_fn.create_accumulator())
    if stats.n == 0:
        raise BeammlError('the input holds no valid point to train on (every row was refused '
                          'or the files hold no rows); see the dead letters')
    if not (np.isfinite(stats.mean).all() and np.isfinite(stats.m2).all()):
        raise BeammlError('the features hold NaN or infinite values, or values too large to '
                          'train on (their squares overflow float64); clean or rescale them')
    if stats.n_distinct < n_clusters:
        raise BeammlError(f'k={n_clusters} is greater than the number of distinct points '
                          f'({stats.n_distinct} among {stats.n} rows); use a smaller k')
    return stats


def _save_npy(path: str, arr: np.ndarray) -> None:
    from apache_beam.io.filesystems import FileSystems
    if '://' in path:
        buf = io.BytesIO()
        np.save(buf, arr)
        with FileSystems.create(path) as f:
            f.write(buf.getvalue())
    else:
        tmp = f'{path}.{uuid.uuid4().hex}.tmp'
        with open(tmp, 'wb') as f:
            np.save(f, arr)
        os.replace(tmp, path)


#: local cache files kept memory-mapped in this process between iterations:
#: (pid, path) -> (inode, size, array). Opening and faulting in a file again
#: every iteration costs about 10 ms per million points; the files never change
#: (named by content, replaced atomically) and :func:`_drop_cache` forgets them.
_MAPPED: dict = {}
_MAX_MAPPED = 128  # each map holds a file descriptor


def _load_npy(path: str) -> np.ndarray:
    if '://' in path:
        from apache_beam.io.filesystems import FileSystems
        with FileSystems.open(path) as f:
            return np.load(io.BytesIO(f.read()))
    st = os.stat(path)
    key = (os.getpid(), path)
    hit = _MAPPED.get(key)
    if hit is not None and hit[0] == st.st_ino and hit[1] == st.st_size:
        return hit[2]
    arr = np.load(path, mmap_mode='r')
    if hit is not None or len(_MAPPED) < _MAX_MAPPED:
        _MAPPED[key] = (st.st_ino, st.st_size, arr)
    return arr


def _forget_mapped(paths) -> None:
    for path in paths:
        _MAPPED.pop((os.getpid(), path), None)


def _hash_path(path: str) -> str:
    return path[:-len('.npy')] + '.hash.npy'


def write_cached_points(cache_dir: str, X: np.ndarray, hashes: np.ndarray, *,
                        prefix: str = 'points') -> str:
    """Write a batch of (centred) points and their row hashes as ``.npy`` files; X's path.

    The file names come from the batch's content, so a retried write rewrites
    the same files; local files are written to a temporary name and renamed.
    """
    from apache_beam.io.filesystems import FileSystems
    if '://' not in cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
    h = int(np.add.reduce(hashes, dtype=np.uint64))
    path = FileSystems.join(cache_dir, f'{prefix}-{h:016x}-{len(hashes)}.npy')
    _save_npy(_hash_path(path), np.asarray(hashes, dtype=np.uint64))
    _save_npy(path, np.ascontiguousarray(X, dtype=np.float64))
    return path


def read_cached_points(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(X, row hashes) written by :func:`write_cached_points` (local files: memory-mapped)."""
    return _load_npy(path), _load_npy(_hash_path(path))


def _points_of(element) -> tuple[np.ndarray, np.ndarray]:
    """An iteration's element: (centred X, row hashes), or the path of their cache file."""
    return read_cached_points(element) if isinstance(element, str) else element


class _CentreFn(beam.DoFn):
    """Points batch -> (X - mean, row hashes), or the path of a cache file holding them.

    With a cache the input is the path of a raw cache file (:class:`_StatsAndCacheFn`).
    """

    def __init__(self, cache_dir: str | None):
        self.cache_dir = cache_dir

    def process(self, batch, stats):
        if isinstance(batch, str):
            X, hashes = read_cached_points(batch)
        else:
            X = _as_matrix(batch)
            hashes = row_hashes(X) if X.shape[0] else None
        if X.shape[0]:
            Xc = X - stats.mean
            if self.cache_dir is None:
                yield Xc, hashes
            else:
                yield write_cached_points(self.cache_dir, Xc, hashes)


def _drop_cache(result, paths, raw_paths=()):
    """Delete the cache files once the result exists; the result passes through."""
    from apache_beam.io.filesystems import FileSystems
    paths = sorted({q for p in list(paths) + list(raw_paths) if isinstance(p, str)
                    for q in (p, _hash_path(p))})
    _forget_mapped(paths)
    if paths:
        try:
            FileSystems.delete(paths)
        except Exception:  # already gone (a retried step); the caller's directory cleanup
            pass
    return result


def _next_state(state: KMeansState, partials, *, combine_fn: 'CentroidCombineFn',
                max_iter: int, empty_cluster: str) -> KMeansState:
    """M-step and stopping test after iteration ``state.n_iter`` (scikit-learn's order)."""
    if state.stopped:
        return state
    sums = _merge_partials(combine_fn, partials)
    if sums is None or sums.sums is None:
        raise BeammlError('a K-means iteration saw no point (the input changed while '
                          'training?)')
    centers, counts, n_relocated = update_centers(
        sums.sums, sums.counts, state.centers, empty_cluster=empty_cluster,
        far_points=sums.far_points, far_labels=sums.far_labels,
        far_sq_distances=sums.far_sq_distances)
    shift_tot = float((center_shift(state.centers, centers) ** 2).sum())
    i = state.n_iter
    if i > 0 and sums.signature == state.signature:
        reason = 'converged_labels'
    elif shift_tot <= state.tol:
        reason = 'converged_tol'
    elif i + 1 >= max_iter:
        reason = 'max_iter'
    else:
        reason = None
    return dataclasses.replace(
        state, centers=centers, n_iter=i + 1, stopped=reason is not None, stop_reason=reason,
        signature=sums.signature, inertia_history=state.inertia_history + [sums.inertia],
        center_shift_history=state.center_shift_history + [shift_tot],
        n_relocated=state.n_relocated + n_relocated)


def _result(state: KMeansState, partials, *, combine_fn: 'CentroidCombineFn') -> KMeansResult:
    sums = _merge_partials(combine_fn, partials)
    return KMeansResult(
        centers=state.centers + state.mean, n_iter=state.n_iter,
        stop_reason=state.stop_reason or 'max_iter', inertia=float(sums.inertia),
        inertia_history=[float(v) for v in state.inertia_history],
        center_shift_history=[float(v) for v in state.center_shift_history],
        cluster_sizes=[int(c) for c in sums.counts], n_samples=int(state.n_samples),
        tol=float(state.tol), initial_centers=state.initial_centers + state.mean,
        n_relocated=int(state.n_relocated))


# -- seeding

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


def _seed_plusplus(stats: PointStats, *, n_clusters: int, seed: int) -> np.ndarray:
    X = _with_distinct(stats.sample - stats.mean, stats, n_clusters)
    centers, _ = kmeans_plusplus(X, n_clusters, random_state=np.random.RandomState(seed))
    return centers


def _seed_random(stats: PointStats, *, n_clusters: int) -> np.ndarray:
    X = _with_distinct(stats.sample - stats.mean, stats, n_clusters)
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
    """k-means|| round over a batch: the largest keys ``d^2 / u`` (at most cap) and the cost."""
    X, hashes = _points_of(element)
    _, sq = nearest_centroid(X, cand.centers, centers_sq=cand.centers_sq, squared=True)
    u = 1.0 - _batch_seed(seed, round_ + 1, hashes).random(len(sq))  # in (0, 1]
    keys = sq / u
    top = _top(keys, cap)
    return keys[top], X[top], float(sq.sum())


def _add_candidates(cand: _Candidates, partials, *, combine_fn: beam.CombineFn,
                    oversampling: float) -> _Candidates:
    """The points the round drew: ``key > cost / l``, i.e. ``u < l d^2 / cost``."""
    drawn = _merge_partials(combine_fn, partials)
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
    """Points of a batch nearest to each candidate."""
    X, _ = _points_of(element)
    labels, _ = nearest_centroid(X, cand.centers, centers_sq=cand.centers_sq)
    return np.bincount(labels, minlength=len(cand.centers)).astype(np.float64)


def _seed_from_candidates(cand: _Candidates, partials, stats: PointStats, *,
                          combine_fn: beam.CombineFn, n_clusters: int, seed: int) -> np.ndarray:
    """Weighted k-means++ on the candidates (all of them, completed, when at most k)."""
    weights = _merge_partials(combine_fn, partials)
    if len(cand.centers) <= n_clusters:
        X = _with_distinct(cand.centers, stats, n_clusters)
        return X[_distinct_rows(X)[:n_clusters]]
    centers, _ = kmeans_plusplus(cand.centers, n_clusters, sample_weight=weights,
                                 x_squared_norms=cand.centers_sq,
                                 random_state=np.random.RandomState(seed))
    return centers


def _initial_state(centers: np.ndarray, stats: PointStats, *, n_clusters: int,
                   tol: float) -> KMeansState:
    centers = np.ascontiguousarray(centers, dtype=np.float64)
    if centers.shape[0] != n_clusters:
        raise BeammlError(f'seeding produced {centers.shape[0]} centres for k={n_clusters}')
    return KMeansState(centers=centers, mean=stats.mean, tol=tolerance(stats.var, tol),
                       n_samples=stats.n, initial_centers=centers.copy())


# ----------------------------------------------------------------------------- composites

class _Seed(beam.PTransform):
    """Initial centres (centred), from {'stats', 'points'}: one (k, d) array."""

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
            return stats | 'RandomPoints' >> beam.Map(_seed_random, n_clusters=k)
        # k-means||
        oversampling = self.oversampling_factor * k
        cap = int(3 * oversampling) + 32
        cand = stats | 'FirstCandidate' >> beam.Map(_first_candidate)
        draw_fn = _OversampleCombineFn(cap)
        for r in range(self.init_steps):
            drawn = points | f'KMeansInitRound{r}' >> beam.ParDo(
                _PartialCombineFn(_oversample, draw_fn, seed=seed, round_=r, cap=cap),
                beam.pvalue.AsSingleton(cand))
            cand = cand | f'KMeansInitCandidates{r}' >> beam.Map(
                _add_candidates, beam.pvalue.AsList(drawn), combine_fn=draw_fn,
                oversampling=oversampling)
        weight_fn = _SumArraysFn()
        weights = points | 'KMeansInitWeights' >> beam.ParDo(
            _PartialCombineFn(_candidate_weights, weight_fn), beam.pvalue.AsSingleton(cand))
        return cand | 'KMeansInitPlusPlus' >> beam.Map(
            _seed_from_candidates, beam.pvalue.AsList(weights),
            beam.pvalue.AsSingleton(stats), combine_fn=weight_fn, n_clusters=k, seed=seed)


class _PartialCombineFn(beam.DoFn):
    """Add a bundle's elements into one accumulator of ``combine_fn``; emit it at the end.

    This is the partial half of a lifted combine, written out: the step after it
    merges the partial accumulators it receives as a list side input
    (:func:`_merge_partials`), without the keying, shuffle and merge stages of
    ``CombineGlobally`` (about 0.1 s per iteration less on the local runner).
    The accumulators are small (k x d), so a list of one per bundle is cheap
    to broadcast on a distributed runner too.

    ``compute(element, *side_inputs)`` returns the value to add, or None.
    """

    def __init__(self, compute, combine_fn: beam.CombineFn, **compute_kwargs):
        self.compute, self.combine_fn = compute, combine_fn
        self.compute_kwargs = compute_kwargs
        self.acc = None

    def setup(self):
        self.combine_fn.setup()

    def start_bundle(self):
        self.acc = None

    def _add(self, value) -> None:
        if value is not None:
            if self.acc is None:
                self.acc = self.combine_fn.create_accumulator()
            self.acc = self.combine_fn.add_input(self.acc, value)

    def process(self, element, *side_inputs):
        if isinstance(element, _StateMarker):
            return
        self._add(self.compute(element, *side_inputs, **self.compute_kwargs))

    def finish_bundle(self):
        if self.acc is not None:
            yield WindowedValue(self.acc, GlobalWindow().max_timestamp(), [GlobalWindow()])
            self.acc = None

    def teardown(self):
        self.combine_fn.teardown()


class _StatsAndCacheFn(_PartialCombineFn):
    """The statistics pass that also writes each batch (raw) to the cache.

    Main output: the bundle's :class:`PointStatsCombineFn` accumulator; output
    ``'raw'``: the path of each batch's raw cache file. The batches then never
    travel between stages (on the local runner, handing a stage 1M x 8 points
    as RecordBatches costs about 0.3 s), and each batch is hashed once.
    """

    def __init__(self, combine_fn: 'PointStatsCombineFn', cache_dir: str):
        super().__init__(_identity, combine_fn)
        self.cache_dir = cache_dir

    def process(self, element):
        X = _as_matrix(element)
        if not X.shape[0]:
            return
        hashes = row_hashes(X)
        if self.acc is None:
            self.acc = self.combine_fn.create_accumulator()
        self.acc = self.combine_fn.add_points(self.acc, X, hashes)
        yield beam.pvalue.TaggedOutput(
            'raw', write_cached_points(self.cache_dir, X, hashes, prefix='raw'))


def _merge_partials(combine_fn: beam.CombineFn, partials):
    """The merged output of partial accumulators; None when there are none."""
    partials = list(partials)
    if not partials:
        return None
    return combine_fn.extract_output(combine_fn.merge_accumulators(partials))


def _lloyd_step(element, state: KMeansState, exact_distances: bool):
    """E-step of one iteration over a batch; nothing once the iterations stopped."""
    if state.stopped:
        return None
    X, hashes = _points_of(element)
    if exact_distances:
        labels = lloyd_labels(X, state.centers, state.centers_sq, return_distances=False)
        diff = X - state.centers[labels]
        sq = np.einsum('ij,ij->i', diff, diff)
    else:
        labels, sq = lloyd_labels(X, state.centers, state.centers_sq)
    return LabelledPoints(X, labels, sq, hashes)


def _final_step(element, state: KMeansState):
    """Labels against the final centres and exact squared distances (the final E-step).

    As scikit-learn: labels from the Lloyd E-step, inertia from the direct
    squared distances ``((x - c) ** 2).sum()``.
    """
    X, _ = _points_of(element)
    labels = lloyd_labels(X, state.centers, state.centers_sq, return_distances=False)
    diff = X - state.centers[labels]
    return LabelledPoints(X, labels, np.einsum('ij,ij->i', diff, diff))


class _StateMarker:
    """The one extra element of the points PCollection: where an iteration emits its state."""

    def __eq__(self, other):
        return isinstance(other, _StateMarker)

    def __hash__(self):
        return 0


def _state_marker(_) -> _StateMarker:
    return _StateMarker()


class _IterationFn(_PartialCombineFn):
    """One pass over the points: the M-step of the previous iteration, then this E-step.

    Side inputs: the state the previous iteration used and its partial
    accumulators (none for the first iteration, which uses the initial
    state). The state of this iteration (:func:`_next_state`: merge, new
    centres, stopping test) is computed from them once per DoFn instance (the
    side inputs of a step never change: batch, global window), so an
    iteration is one stage instead of two (the update step, with its side
    input, cost about 15 ms and one more transform per iteration on the local
    runner). Each points batch goes through ``step(element, state, **kwargs)``
    (an accumulator value, or None) into a :class:`CentroidCombineFn`
    accumulator emitted at the end of the bundle (main output); the
    :class:`_StateMarker` element emits the state (output ``'state'``, one
    element: the singleton side input of the next iteration).
    """

    def __init__(self, step, combine_fn: 'CentroidCombineFn', *,
                 update_fn: 'CentroidCombineFn | None', max_iter: int, empty_cluster: str,
                 **step_kwargs):
        super().__init__(None, combine_fn)
        self.step, self.update_fn = step, update_fn
        self.max_iter, self.empty_cluster = max_iter, empty_cluster
        self.step_kwargs = step_kwargs
        self.state = None

    def setup(self):
        super().setup()
        self.state = None

    def _state(self, previous, partials):
        if self.state is None:
            self.state = previous if self.update_fn is None else _next_state(
                previous, partials, combine_fn=self.update_fn, max_iter=self.max_iter,
                empty_cluster=self.empty_cluster)
        return self.state

    def process(self, element, previous, partials=None):
        state = self._state(previous, partials)
        if isinstance(element, _StateMarker):
            yield beam.pvalue.TaggedOutput('state', state)
            return
        self._add(self.step(element, state, **self.step_kwargs))


def _iteration_side_inputs(state, partials):
    side = [beam.pvalue.AsSingleton(state)]
    if partials is not None:
        side.append(beam.pvalue.AsList(partials))
    return side


class _LloydIteration(beam.PTransform):
    """One Lloyd iteration: {'points', 'state'[, 'partials']} -> {'state', 'partials'}.

    ``NearestCentre`` (one step, :class:`_IterationFn`) computes the centres of
    this iteration from the previous iteration's state and partial
    accumulators (no ``partials``: ``state`` is the initial state), labels
    each batch against them and adds it into a :class:`CentroidCombineFn`
    accumulator. Its outputs: that state (one element) and the partial
    accumulators, which the next iteration (or ``KMeansFinal``) merges.
    """

    def __init__(self, n_clusters: int, max_iter: int, empty_cluster: str):
        super().__init__()
        self.n_clusters, self.max_iter, self.empty_cluster = n_clusters, max_iter, empty_cluster

    def expand(self, inputs):
        points, state, partials = inputs['points'], inputs['state'], inputs.get('partials')
        farthest = self.empty_cluster == 'farthest'
        combine_fn = CentroidCombineFn(self.n_clusters, track_farthest=farthest)
        outs = points | 'NearestCentre' >> beam.ParDo(
            _IterationFn(_lloyd_step, combine_fn,
                         update_fn=None if partials is None else combine_fn,
                         max_iter=self.max_iter, empty_cluster=self.empty_cluster,
                         exact_distances=farthest),
            *_iteration_side_inputs(state, partials)).with_outputs('state', main='partials')
        return {'state': outs.state, 'partials': outs.partials}


class _FinalStep(beam.PTransform):
    """The last M-step, then labels against the final centres -> KMeansResult."""

    def __init__(self, n_clusters: int, max_iter: int, empty_cluster: str):
        super().__init__()
        self.n_clusters, self.max_iter, self.empty_cluster = n_clusters, max_iter, empty_cluster

    def expand(self, inputs):
        points, state, partials = inputs['points'], inputs['state'], inputs.get('partials')
        combine_fn = CentroidCombineFn(self.n_clusters)
        update_fn = CentroidCombineFn(self.n_clusters,
                                      track_farthest=self.empty_cluster == 'farthest')
        outs = points | 'NearestFinalCentre' >> beam.ParDo(
            _IterationFn(_final_step, combine_fn, update_fn=update_fn, max_iter=self.max_iter,
                         empty_cluster=self.empty_cluster),
            *_iteration_side_inputs(state, partials)).with_outputs('state', main='partials')
        return outs.state | 'Result' >> beam.Map(_result, beam.pvalue.AsList(outs.partials),
                                                 combine_fn=combine_fn)


class KMeans(beam.PTransform):
    """Train K-means on a PCollection of points batches; outputs one :class:`KMeansResult`.

    ``batches | KMeans(k=8, random_state=0)``. Inputs are points RecordBatches
    (a ``features`` column, as ``ReadPoints`` makes) or (n, d) float arrays.
    The graph: ``KMeansStats`` (count, mean, variance, sample, distinct points;
    an empty input or ``k`` above the number of distinct points fails the run
    with a BeammlError), ``KMeansCentrePoints``, ``KMeansInit`` (seeding),
    ``KMeansIteration0 .. KMeansIteration{max_iter-1}`` (each reads the points
    and the previous state as a singleton side input; after the stop they pass
    the state through and compute nothing) and ``KMeansFinal``.

    Parameters
    ----------
    n_clusters : int
        k.
    max_iter : int, default 300
        Iterations, unrolled in the graph (one stage each; an iteration after the
        stop costs only its stage's overhead, but ask for what you need).
    tol : float, default 1e-4
        Relative tolerance, as scikit-learn's.
    init : {'k-means++', 'k-means||', 'random'}, ndarray of shape (k, d), or a path
        A path is read with :func:`read_initial_centers`.
    random_state : int, optional
        Seeds every random choice; drawn once (and reported) when None.
    empty_cluster : {'keep', 'farthest'}, default 'keep'
    init_sample_size : int, default 10000
        Points sampled for 'k-means++' and 'random'.
    init_steps : int, default 5
        Rounds of 'k-means||'.
    oversampling_factor : float, default 2.0
        'k-means||' samples about ``oversampling_factor * k`` points per round.
    cache_dir : str, optional
        Where to keep the centred points between iterations (local or gs://).
        By default they travel through Beam (materialised by the runner and
        sent to every iteration). With a directory, ``KMeansStats`` writes each
        batch there as it reads it (so the batches never go from one stage to
        another), ``KMeansCentrePoints`` writes its centred copy as ``.npy``
        files, the iterations read those (memory-mapped when local, and kept
        mapped in the process) and ``KMeansDropCache`` deletes the files at the
        end (give each KMeans a directory of its own). On the local runner this
        makes an iteration about 2.5x faster: its data plane copies a stage's
        whole input about five times.
    """

    def __init__(self, n_clusters: int, max_iter: int = 300, tol: float = 1e-4,
                 init: Any = 'k-means++', random_state: int | None = None,
                 empty_cluster: str = 'keep', init_sample_size: int = 10_000,
                 init_steps: int = 5, oversampling_factor: float = 2.0, *,
                 cache_dir: str | None = None, label: str | None = None):
        super().__init__(label)
        if not isinstance(n_clusters, (int, np.integer)) or n_clusters < 1:
            raise BeammlError(f'k must be an integer >= 1, got {n_clusters!r}')
        if not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
            raise BeammlError(f'max_iter must be an integer >= 1, got {max_iter!r}')
        if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
            raise BeammlError(f'tol must be a number >= 0, got {tol!r}')
        if empty_cluster not in EMPTY_CLUSTER:
            raise BeammlError(f'empty_cluster must be one of {", ".join(EMPTY_CLUSTER)}, '
                              f'got {empty_cluster!r}')
        if init_sample_size < 1:
            raise BeammlError(f'init_sample_size must be >= 1, got {init_sample_size}')
        if init_steps < 1:
            raise BeammlError(f'init_steps must be >= 1, got {init_steps}')
        if not oversampling_factor > 0:
            raise BeammlError(f'oversampling_factor must be > 0, got {oversampling_factor}')
        if isinstance(init, str) and init not in INIT_METHODS:
            init = read_initial_centers(init, n_clusters=int(n_clusters))
        elif not isinstance(init, str):
            init = np.array(init, dtype=np.float64)
            if init.ndim != 2 or init.shape[0] != n_clusters:
                raise BeammlError(f'initial centres must have shape (k={n_clusters}, d), '
                                  f'got {init.shape}')
            if not np.isfinite(init).all():
                raise BeammlError('initial centres contain NaN or infinite values')
        if random_state is None:
            random_state = int(np.random.SeedSequence().entropy % (1 << 32))
        self.n_clusters = int(n_clusters)
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.init = init
        self.random_state = int(random_state)
        self.empty_cluster = empty_cluster
        self.init_sample_size = int(init_sample_size)
        self.init_steps = int(init_steps)
        self.oversampling_factor = float(oversampling_factor)
        self.cache_dir = cache_dir

    @property
    def init_name(self) -> str:
        return 'array' if isinstance(self.init, np.ndarray) else self.init

    def expand(self, batches):
        k = self.n_clusters
        # The local runner walks the chain of stages recursively: one stage per
        # iteration.
        if sys.getrecursionlimit() < 1000 + 8 * self.max_iter:
            sys.setrecursionlimit(1000 + 8 * self.max_iter)
        sample_size = 0 if isinstance(self.init, np.ndarray) else self.init_sample_size
        if self.init_name == 'k-means||':
            sample_size = 1
        stats_fn = PointStatsCombineFn(sample_size, k, self.random_state)
        if self.cache_dir is None:
            partial_stats = batches | 'KMeansStats' >> beam.ParDo(
                _PartialCombineFn(_identity, stats_fn))
            raw = batches
        else:  # the statistics pass also writes the batches to the cache
            outs = batches | 'KMeansStats' >> beam.ParDo(
                _StatsAndCacheFn(stats_fn, self.cache_dir)).with_outputs('raw', main='stats')
            partial_stats, raw = outs.stats, outs.raw
        stats = (batches.pipeline
                 | 'KMeansStatsOnce' >> beam.Create([None])
                 | 'KMeansCheckInput' >> beam.Map(
                     _check_stats, beam.pvalue.AsList(partial_stats), combine_fn=stats_fn,
                     n_clusters=k))
        stats_si = beam.pvalue.AsSingleton(stats)
        centred = raw | 'KMeansCentrePoints' >> beam.ParDo(_CentreFn(self.cache_dir), stats_si)
        # one more element, where each iteration emits its state (see _IterationFn)
        marker = stats | 'KMeansStateMarker' >> beam.Map(_state_marker)
        points = (centred, marker) | 'KMeansPoints' >> beam.Flatten()
        init = {'stats': stats, 'points': points} | 'KMeansInit' >> _Seed(
            self.init, k, self.random_state, self.init_steps, self.oversampling_factor)
        state = init | 'KMeansInitialState' >> beam.Map(
            _initial_state, stats_si, n_clusters=k, tol=self.tol)
        step = {'state': state}  # no 'partials': the initial state is used as it is
        for i in range(self.max_iter):
            step = {'points': points, **step} | f'KMeansIteration{i}' >> \
                _LloydIteration(k, self.max_iter, self.empty_cluster)
        result = {'points': points, **step} | 'KMeansFinal' >> _FinalStep(
            k, self.max_iter, self.empty_cluster)
        if self.cache_dir is not None:
            result = result | 'KMeansDropCache' >> beam.Map(
                _drop_cache, beam.pvalue.AsList(centred), beam.pvalue.AsList(raw))
        return result
