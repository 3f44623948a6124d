"""K-means seeding kernels (no Beam): k-means++ and the per-batch random generator.

:func:`kmeans_plusplus` is scikit-learn's ``_kmeans_plusplus`` step for step;
:func:`batch_rng` gives each batch its own draws from the run's seed and the
batch's content (the sample of the statistics pass, the k-means|| rounds). The
seeding graph (:mod:`~beamml.transforms.kmeans.seeding`), the statistics'
sample (:class:`~beamml.transforms.kmeans.accumulators.PointStats`) and
streaming K-means call them.
"""
from __future__ import annotations

import numpy as np

from beamml.transforms.distances import row_sq_norms
from beamml.transforms.kmeans.kernels import MASK64

__all__ = ['batch_rng', 'kmeans_plusplus']


def batch_rng(seed: int, stream: int, hashes: np.ndarray) -> np.random.Generator:
    """A generator for one batch, from the run's seed and the batch's content.

    The same batch gets the same draws whatever the order batches arrive in;
    ``stream`` separates the uses (0: the sample, ``r + 1``: k-means|| round r).
    """
    h = int(np.add.reduce(hashes, dtype=np.uint64)) if len(hashes) else 0
    return np.random.default_rng([seed & MASK64, stream, h & 0xFFFFFFFF, h >> 32, len(hashes)])


# ----------------------------------------------------------------------------- k-means++

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
