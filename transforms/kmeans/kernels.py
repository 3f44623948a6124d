"""K-means numpy kernels (no Beam): the Lloyd E- and M-steps, tolerance, row hashes.

Plain functions on ``(n_samples, n_features)`` arrays, with scikit-learn's names
and arithmetic (``sklearn/cluster/_kmeans.py``); the accumulators of
:mod:`~beamml.transforms.kmeans.accumulators`, the seeding graph and the
training composite call them. The seeding kernels (k-means++) are in
:mod:`~beamml.transforms.kmeans.seeding_kernels`; how the E-step runs (its
thread pool, BLAS on one thread, the dtype) in :mod:`~beamml.transforms.kmeans.runtime`.

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

The fused pass and float32
--------------------------
:func:`lloyd_pass` is the training's E- and M-step over a batch in one go:
per 4096-row chunk the labels (bit for bit :func:`lloyd_labels`'s), then at
once the chunk's per-cluster sums, counts, inertia and label signature; the
batch's ``n x k`` distances and labels are never built. Measured on 2 cores
(1M x 8 points, k=16, one iteration): product 14 ms, argmin 29 ms, per-feature
bincounts 17 ms, ``||x||^2`` 6 ms, signature 4 ms, the rest 7 ms; before, the
separate E-step (``lloyd_labels``, with BLAS on 2 threads per product) and
``ClusterSums.add`` took about 1.5 times as long.

``dtype=float32`` (an opt-in; a float32 cache, ``write_cached_points(...,
dtype=np.float32)``, selects it) computes the products and argmin in float32;
the sums and inertia are still accumulated in float64. On the benchmark's
blobs (1M x 8 points, 16 blobs, coordinates up to ~20, 10 iterations from the
same centres) the float32 centres differ from the float64 ones by at most
2.3e-9 (2.3e-10 of the largest coordinate), the inertia by 2e-14 relative,
and no label of the 10th iteration differed; in general a label can differ
where two centres are within float32 rounding (about 1e-7 relative) of a
point, so float32 results agree with scikit-learn's to that precision, not
bit for bit.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from beamml.transforms.distances import row_sq_norms
from beamml.transforms.kmeans.runtime import kernel_dtype, map_chunks, single_threaded_blas

__all__ = [
    'INIT_METHODS', 'EMPTY_CLUSTER', 'STOP_REASONS', 'MASK64',
    'row_hashes', 'label_signature', 'tolerance', 'lloyd_labels', 'LloydPass',
    'lloyd_pass', 'lloyd_pass_runs', 'farthest_order', 'update_centers', 'center_shift',
    'largest', 'smallest',
]

INIT_METHODS = ('k-means++', 'k-means||', 'random')
EMPTY_CLUSTER = ('keep', 'farthest')
STOP_REASONS = ('converged_labels', 'converged_tol', 'max_iter')

MASK64 = (1 << 64) - 1
_GOLDEN64 = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64's increment
_FEATURE_SEED = np.uint64(0x2545F4914F6CDD1D)
_CHUNK_ROWS = 4096  # rows per BLAS product in the E-step (the distances stay in cache)
_TASK_CHUNKS = 4  # chunks per thread-pool task of lloyd_pass (one task: 16384 rows)


# ----------------------------------------------------------------------------- row hashes

def _mix64(h: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, element-wise on a uint64 array (in place)."""
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h


def _multipliers(d: int) -> np.ndarray:
    """d odd 64-bit constants (the first d outputs of a SplitMix64 sequence), one per feature."""
    x = _FEATURE_SEED + np.arange(1, d + 1, dtype=np.uint64) * _GOLDEN64  # wraps mod 2**64
    return _mix64(x) | np.uint64(1)


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
    v = _mix64(hashes ^ ((labels.astype(np.uint64) + np.uint64(1)) * _GOLDEN64))
    return int(np.add.reduce(v, dtype=np.uint64))


def largest(keys: np.ndarray, m: int) -> np.ndarray:
    """Indices of the m largest keys (all when there are at most m), in no order."""
    if len(keys) <= m:
        return np.arange(len(keys))
    return np.argpartition(keys, len(keys) - m)[len(keys) - m:]


def smallest(keys: np.ndarray, m: int) -> np.ndarray:
    """Indices of the m smallest keys (all when there are at most m), in no order."""
    if len(keys) <= m:
        return np.arange(len(keys))
    return np.argpartition(keys, m - 1)[:m]


# ----------------------------------------------------------------------------- E-step

def tolerance(variances: np.ndarray, tol: float) -> float:
    """scikit-learn's absolute tolerance: ``tol * mean(var(X, axis=0))`` (0 when tol is 0)."""
    if tol == 0:
        return 0.0
    return float(np.mean(variances) * tol)


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

    map_chunks(chunk, range(0, n, _CHUNK_ROWS))
    if not return_distances:
        return labels
    return labels, best


class LloydPass(NamedTuple):
    """What :func:`lloyd_pass` returns for one batch (the M-step's sufficient statistics).

    ``sums`` (k, d) float64, ``counts`` (k,) int64, ``inertia`` (a float),
    ``signature`` (:func:`label_signature` of the labels, or None without row
    hashes), ``labels`` (n,) when asked for (else None) and ``n_changed``, the
    labels that differ from ``previous_labels`` (None without them). With
    sample weights, ``sums`` are of ``w * x``, ``inertia`` is weighted and
    ``weights`` (k,) float64 holds the weight in each cluster (else None).
    """
    sums: np.ndarray
    counts: np.ndarray
    inertia: float
    signature: int | None
    labels: np.ndarray | None = None
    n_changed: int | None = None
    weights: np.ndarray | None = None


def lloyd_pass(X: np.ndarray, centers: np.ndarray, centers_sq: np.ndarray | None = None, *,
               hashes: np.ndarray | None = None, exact_distances: bool = False,
               return_labels: bool = False, labels_dtype=np.int64,
               previous_labels: np.ndarray | None = None, dtype=None,
               sample_weight: np.ndarray | None = None) -> LloydPass:
    """One Lloyd pass over a batch, fused: labels, per-cluster sums, counts and inertia at once.

    The labels are :func:`lloyd_labels`'s, bit for bit (the same 4096-row BLAS
    products of ``x.(-2c)``, the same ``+ ||c||^2`` and first-minimum argmin),
    but the ``n x k`` distances of a chunk are reduced at once into the chunk's
    sums (one ``np.bincount`` per feature), counts, inertia and label
    signature, so neither the labels nor the distances of the whole batch are
    materialised (unless ``return_labels``). Tasks of 4 chunks run on the
    E-step's thread pool with BLAS on one thread; their partial sums are added
    in task order, so the result does not depend on the scheduling.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    centers : ndarray of shape (n_clusters, n_features)
    centers_sq : ndarray of shape (n_clusters,), optional
        Squared norms of the centres (float64 only: ignored for float32).
    hashes : ndarray of shape (n_samples,), uint64, optional
        :func:`row_hashes` of the points; gives ``signature``.
    exact_distances : bool, default False
        Inertia from the direct squared distances ``((x - c) ** 2).sum()`` (as
        scikit-learn's final inertia) instead of ``||x||^2 + ||c||^2 - 2 x.c``
        clipped at 0 (the E-step's).
    return_labels : bool, default False
    labels_dtype : integer dtype, default int64
        Of the returned labels (int16 is enough for k <= 32767).
    previous_labels : ndarray of shape (n_samples,), optional
        Labels of the previous iteration: ``n_changed`` counts the differences.
    dtype : {None, float64, float32}
        What the E-step computes in: None is float32 when X is float32 (a
        float32 cache), else float64. float32 is an opt-in: about twice less
        memory traffic, but the labels of points near a boundary between two
        centres can differ from float64's (and from scikit-learn's on float64
        data); the sums and the inertia are always accumulated in float64.
    sample_weight : ndarray of shape (n_samples,), optional
        Weights of the points (scikit-learn's ``sample_weight``): the sums are
        of ``w * x``, the weight per cluster is returned (``weights``) and the
        inertia is ``sum(w * d^2)``. The labels do not depend on them. Without
        it nothing is weighted and nothing is added to the work.

    Returns
    -------
    LloydPass
    """
    return lloyd_pass_runs(
        X, [centers], None if centers_sq is None else [centers_sq], hashes=hashes,
        exact_distances=exact_distances, return_labels=return_labels,
        labels_dtype=labels_dtype, previous_labels=None if previous_labels is None
        else [previous_labels], dtype=dtype, sample_weight=sample_weight)[0]


def lloyd_pass_runs(X: np.ndarray, centers: Sequence[np.ndarray],
                    centers_sq: Sequence[np.ndarray] | None = None, *,
                    hashes: np.ndarray | None = None, exact_distances: bool = False,
                    return_labels: bool = False, labels_dtype=np.int64,
                    previous_labels: Sequence[np.ndarray] | None = None, dtype=None,
                    sample_weight: np.ndarray | None = None) -> list[LloydPass]:
    """:func:`lloyd_pass` for several centre sets of k centres at once (``n_init`` runs).

    One BLAS product per chunk against all ``r * k`` centres, then each run's
    argmin over its own k columns and its own sums, counts, inertia and
    signature: the E-step of r runs costs one product of width ``r k`` instead
    of r products, and X is read once. Each run's :class:`LloydPass` is what
    ``lloyd_pass`` gives for that run alone: the same sums and counts bit for
    bit (``np.bincount`` adds a cluster's points in row order, whatever the
    other runs), the same inertia summation; only the product's rounding may
    differ from a product of width k when the BLAS blocks the columns
    differently. Measured with numpy's OpenBLAS (50,000 x 8 points, 4 runs of
    k=16): float64 gives every run's labels, sums, counts, inertia and
    signature bit for bit; float32's products differ by up to 4e-6 (the labels
    did not), so its inertia moves at float32 rounding. On 2 cores one pass
    costs 3.3 ms for one run, 10.8 ms for 4, 24.5 ms for 10 (the argmin and
    the per-run sums grow with the runs; the product and reading X do not).
    ``centers_sq`` and ``previous_labels`` are per run; the other parameters
    are :func:`lloyd_pass`'s.
    """
    dtype = kernel_dtype(X, dtype)
    X = np.asarray(X, dtype=dtype)
    n, d = X.shape
    g = len(centers)
    k = centers[0].shape[0]
    if any(c.shape != (k, d) for c in centers):
        raise ValueError(f'every run needs ({k}, {d}) centres, got '
                         f'{[c.shape for c in centers]}')
    C = np.asarray(np.concatenate(centers) if g > 1 else centers[0], dtype=dtype)
    if dtype == np.float64:
        if centers_sq is None:
            C_sq = row_sq_norms(C)
        else:
            C_sq = np.concatenate(centers_sq) if g > 1 else centers_sq[0]
    else:
        C_sq = np.einsum('ij,ij->i', C, C)
    C_sq = np.asarray(C_sq, dtype=dtype)
    # -2 folded into the centres, exactly as lloyd_labels
    minus_2ct = np.ascontiguousarray(C.T * np.asarray(-2.0, dtype=dtype))
    # ||c||^2 tiled to a chunk: an element-wise add, no broadcast over rows of k
    sq_tile = np.tile(C_sq, (min(n, _CHUNK_ROWS), 1))
    labels = np.empty((g, n), dtype=labels_dtype) if return_labels else None
    weighted = sample_weight is not None
    if weighted:
        sample_weight = np.asarray(sample_weight, dtype=np.float64)
    run_offsets = k * np.arange(g)
    task_rows = _CHUNK_ROWS * _TASK_CHUNKS
    starts = range(0, n, task_rows)
    out = [None] * len(starts)

    def task(t):
        lo = starts[t]
        sums = np.zeros((g, k, d))
        counts = np.zeros((g, k), dtype=np.int64)
        wsums = np.zeros((g, k)) if weighted else None
        inertia = [0.0] * g
        signature, changed = [0] * g, [0] * g
        for a in range(lo, min(lo + task_rows, n), _CHUNK_ROWS):
            Xc = X[a:a + _CHUNK_ROWS]
            m = len(Xc)
            D = Xc @ minus_2ct
            D += sq_tile[:m]
            # (m, g): each run's first minimum over its own k columns
            lab = D.argmin(axis=1)[:, None] if g == 1 else D.reshape(m, g, k).argmin(axis=2)
            if exact_distances:
                sq = np.empty((g, m), dtype=dtype)
                for r in range(g):
                    diff = Xc - C[r * k:(r + 1) * k][lab[:, r]]
                    sq[r] = np.einsum('ij,ij->i', diff, diff)
            else:  # ||x||^2 + min(||c||^2 - 2 x.c), clipped at 0
                flat = (lab + run_offsets) + (g * k) * np.arange(m)[:, None]
                sq = np.ascontiguousarray(D.ravel()[flat].T)
                sq += np.einsum('ij,ij->i', Xc, Xc)
                np.maximum(sq, 0, out=sq)
            Xw = None
            if weighted:
                wc = sample_weight[a:a + m]
                Xw = np.asarray(Xc, dtype=np.float64) * wc[:, None]
            for r in range(g):
                lr = np.ascontiguousarray(lab[:, r])
                if weighted:  # sums of w * x, weight per cluster, weighted inertia
                    inertia[r] += float(np.dot(np.asarray(sq[r], dtype=np.float64), wc))
                    for j in range(d):
                        sums[r, :, j] += np.bincount(lr, weights=Xw[:, j], minlength=k)
                    wsums[r] += np.bincount(lr, weights=wc, minlength=k)
                else:
                    inertia[r] += float(np.sum(sq[r], dtype=np.float64))
                    for j in range(d):  # a loop over features, each bincount over the chunk
                        sums[r, :, j] += np.bincount(lr, weights=Xc[:, j], minlength=k)
                counts[r] += np.bincount(lr, minlength=k)
                if hashes is not None:
                    signature[r] += label_signature(hashes[a:a + m], lr)
                if previous_labels is not None:
                    changed[r] += int(np.count_nonzero(previous_labels[r][a:a + m] != lr))
                if labels is not None:
                    labels[r, a:a + m] = lr
        out[t] = (sums, counts, inertia, signature, changed, wsums)

    with single_threaded_blas():
        map_chunks(task, range(len(starts)), min_parallel=2)
    sums = np.zeros((g, k, d))
    counts = np.zeros((g, k), dtype=np.int64)
    wsums = np.zeros((g, k)) if weighted else None
    inertia, signature, changed = [0.0] * g, [0] * g, [0] * g
    for part in out:  # in task order: the same result however the tasks were scheduled
        sums += part[0]
        counts += part[1]
        for r in range(g):
            inertia[r] += part[2][r]
            signature[r] += part[3][r]
            changed[r] += part[4][r]
        if weighted:
            wsums += part[5]
    return [LloydPass(sums[r], counts[r], inertia[r],
                      None if hashes is None else signature[r] & MASK64,
                      None if labels is None else labels[r],
                      None if previous_labels is None else changed[r],
                      None if wsums is None else wsums[r]) for r in range(g)]


# ----------------------------------------------------------------------------- M-step

def farthest_order(sq_distances: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Order of candidates: distance decreasing, ties by lexicographic coordinates."""
    keys = [points[:, j] for j in range(points.shape[1] - 1, -1, -1)] + [-sq_distances]
    return np.lexsort(keys)


def update_centers(sums: np.ndarray, counts: np.ndarray, centers_old: np.ndarray, *,
                   empty_cluster: str = 'keep', far_points: np.ndarray | None = None,
                   far_labels: np.ndarray | None = None,
                   far_sq_distances: np.ndarray | None = None,
                   weights: np.ndarray | None = None,
                   far_weights: np.ndarray | None = None):
    """The M-step: new centres from per-cluster sums and counts, with empty clusters handled.

    With sample weights (``weights``, the weight in each cluster; ``sums`` then
    are of ``w * x``), as scikit-learn's weighted Lloyd: a centre is
    ``sums / weights``, a cluster is empty when its weight is 0 (it may hold
    points of weight 0), and a relocated far point carries its weight
    (``far_weights``) from its cluster to the empty one.

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
    weights, far_weights : ndarrays, optional
        Weight per cluster, and the far points' weights (see above).

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
    # Unweighted, each point weighs 1: the weight of a cluster is its count (x * 1.0
    # and 1.0 / float(n) are exact, so this is the unweighted arithmetic bit for bit).
    weighted = weights is not None
    weights = (np.array(weights, dtype=np.float64) if weighted
               else counts.astype(np.float64))
    empty = np.flatnonzero(weights == 0)
    n_relocated = 0
    if (len(empty) and empty_cluster == 'farthest' and far_sq_distances is not None
            and len(far_sq_distances) and far_sq_distances.max() > 0):
        if far_weights is None:
            if weighted:
                raise ValueError('weighted relocation needs the far points\' weights')
            far_weights = np.ones(len(far_sq_distances))
        order = farthest_order(far_sq_distances, far_points)
        for new_id, far in zip(empty, order):  # a loop over empty clusters, not points
            x, old_id, w = far_points[far], int(far_labels[far]), float(far_weights[far])
            sums[old_id] -= x * w
            counts[old_id] -= 1
            weights[old_id] -= w
            sums[new_id] = x * w
            counts[new_id] = 1
            weights[new_id] = w
            n_relocated += 1
    centers = np.array(centers_old, dtype=np.float64, copy=True)
    full = weights > 0
    # as scikit-learn's _average_centers: multiply by the reciprocal
    centers[full] = sums[full] * (1.0 / weights[full])[:, None]
    if empty_cluster == 'farthest' and not full.all():
        centers[~full] = centers[np.argmax(weights)]
    return centers, counts, n_relocated


def center_shift(centers_old: np.ndarray, centers_new: np.ndarray) -> np.ndarray:
    """Euclidean distance each centre moved, shape (n_clusters,)."""
    diff = centers_new - centers_old
    return np.sqrt(np.einsum('ij,ij->i', diff, diff))
