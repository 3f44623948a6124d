"""The Lloyd iteration as numpy steps: the state between iterations, E-step, M-step, stop, result.

The arithmetic is scikit-learn's ``KMeans(algorithm='lloyd')`` (1.9), so that from
the same initial centres, with ``tol=0`` and the same ``max_iter``, the centres,
labels and inertia agree with scikit-learn's to rounding, and with the default
``tol`` the number of iterations agrees:

* the data are centred on their mean first (as scikit-learn does for accuracy);
  the centres are moved back at the end;
* iteration ``i`` labels every point with its nearest centre ``C_i`` (the E-step,
  :func:`~beamml.transforms.kmeans.kernels.lloyd_labels`), then ``C_{i+1}`` is
  the mean of each cluster (the M-step,
  :class:`~beamml.transforms.kmeans.combiners.CentroidCombineFn` and
  :func:`~beamml.transforms.kmeans.kernels.update_centers`);
* it stops after iteration ``i`` when the labels equal those of iteration
  ``i - 1`` (``converged_labels``, scikit-learn's "strict convergence"), else when
  the squared centre shift summed over clusters is ``<= tol * mean(var(X, axis=0))``
  (``converged_tol``), else after ``max_iter`` iterations (``max_iter``);
  ``n_iter`` counts the iterations run, as scikit-learn's ``n_iter_``;
* the final labels, cluster sizes and inertia are computed against the *final*
  centres (scikit-learn re-runs the E-step after the loop).

With ``distance='cosine'`` (``KMeansState.distance``) the rule is Spark MLlib's
``CosineDistanceMeasure``: the points are scaled to unit norm instead of being
centred (the "mean" is 0), so the Euclidean E-step on unit vectors,
``||x - c||^2 = 2 (1 - cos)``, orders the centres as the cosine distance does; the
M-step's centre is the mean of its cluster's unit points scaled to unit norm
(the normalised sum; :func:`cosine_centers`); the inertia (and its history) is
the sum of the cosine distances ``1 - cos``, half the squared Euclidean ones.
The stopping rule is the same (labels, then ``tol`` on the summed squared shift
of the unit centres, relative to the mean per-feature variance of the unit
points, then ``max_iter``).
With sample weights (a ``weight`` column, ``ReadPoints(weight_column=...)``) it
is scikit-learn's ``fit(X, sample_weight=w)``: the centring mean and the
tolerance's variance stay unweighted (``X.mean(axis=0)``, ``np.var(X, axis=0)``,
as scikit-learn's ``fit`` and ``_tolerance``), a centre is the weighted mean of
its cluster, a cluster of weight 0 is empty, and the inertia is
``sum(w * d^2)``. A point of weight 0 takes part in the labels (and so in the
convergence test) but in no centre.

Labels are not kept between iterations (a point has no state in a Beam graph).
Whether they changed is decided in one number: every iteration sums, over the
points, a 64-bit mix of (hash of the point's coordinates, label) modulo 2**64
(:func:`~beamml.transforms.kmeans.kernels.label_signature`); equal multisets of
(point, label) give equal sums, and a different labelling collides with
probability about 2**-64.

The Beam side (:mod:`~beamml.transforms.kmeans.iterations`) calls these once per
batch (the E-steps) or once per iteration (the merge, M-step and stopping test).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from beamml.transforms.distances import row_sq_norms, unit_rows
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.kmeans.cache import points_of, weights_of
from beamml.transforms.kmeans.accumulators import ClusterSums, LabelledPoints, PointStats
from beamml.transforms.kmeans.combiners import PointStatsCombineFn, merge_partials
from beamml.transforms.kmeans.kernels import (center_shift, lloyd_labels, lloyd_pass,
                                              lloyd_pass_runs, tolerance, update_centers)

__all__ = ['KMeansState', 'KMeansRuns', 'KMeansResult', 'checked_stats', 'initial_state',
           'initial_runs', 'state_from_dict', 'next_state', 'final_result', 'lloyd_step',
           'final_step', 'cosine_centers']


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
    n_distinct: int | None = None   # set when there are fewer distinct points than k
    distance: str = 'euclidean'     # 'cosine': unit points and centres (Spark's rule)

    @property
    def centers_sq(self) -> np.ndarray:
        return row_sq_norms(self.centers)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (floats exact: JSON numbers are written with ``repr``)."""
        out = dataclasses.asdict(self)
        for name in ('centers', 'mean', 'initial_centers'):
            out[name] = np.asarray(out[name], dtype=np.float64).tolist()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> 'KMeansState':
        """The state :meth:`to_dict` wrote (a non-finite float may be read as a string)."""
        data = dict(data)
        for name in ('centers', 'mean', 'initial_centers'):
            data[name] = np.array(data[name], dtype=np.float64)
        for name in ('inertia_history', 'center_shift_history'):
            data[name] = [float(v) for v in data[name]]
        data['tol'] = float(data['tol'])
        return cls(**data)


@dataclasses.dataclass
class KMeansRuns:
    """The state of ``n_init`` trainings run side by side (a singleton side input).

    ``runs[r]`` is the :class:`KMeansState` of the run seeded with ``seeds[r]``;
    each stops by its own rule, and the whole stops when every run has. The
    attributes the launcher reads of a state (``stopped``, ``n_iter``,
    ``mean``, ``distance``, ...) are here too.
    """
    runs: list
    seeds: list

    @property
    def stopped(self) -> bool:
        return all(run.stopped for run in self.runs)

    @property
    def n_iter(self) -> int:
        return max(run.n_iter for run in self.runs)

    @property
    def n_going(self) -> int:
        return sum(not run.stopped for run in self.runs)

    @property
    def stop_reason(self) -> str | None:
        return 'all runs stopped' if self.stopped else None

    @property
    def mean(self) -> np.ndarray:
        return self.runs[0].mean

    @property
    def distance(self) -> str:
        return self.runs[0].distance

    @property
    def inertia_history(self) -> list:
        """Per iteration, the lowest inertia of the runs that ran it."""
        n = self.n_iter
        return [min(run.inertia_history[i] for run in self.runs
                    if len(run.inertia_history) > i) for i in range(n)]

    @property
    def center_shift_history(self) -> list:
        """Per iteration, the largest centre shift of the runs that ran it."""
        n = self.n_iter
        return [max(run.center_shift_history[i] for run in self.runs
                    if len(run.center_shift_history) > i) for i in range(n)]

    def to_dict(self) -> dict[str, Any]:
        return {'runs': [run.to_dict() for run in self.runs], 'seeds': list(self.seeds)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> 'KMeansRuns':
        return cls(runs=[KMeansState.from_dict(run) for run in data['runs']],
                   seeds=[int(seed) for seed in data['seeds']])


def state_from_dict(data: dict[str, Any]):
    """A :class:`KMeansState` or :class:`KMeansRuns` from its ``to_dict``."""
    return KMeansRuns.from_dict(data) if 'runs' in data else KMeansState.from_dict(data)


def initial_runs(centers_per_run, stats: PointStats, *, seeds, n_clusters: int, tol: float,
                 distance: str = 'euclidean') -> KMeansRuns:
    """The state before the first iteration of ``n_init`` runs (one seeding each)."""
    return KMeansRuns(runs=[initial_state(c, stats, n_clusters=n_clusters, tol=tol,
                                          distance=distance) for c in centers_per_run],
                      seeds=[int(s) for s in seeds])


@dataclasses.dataclass
class KMeansResult:
    """The outcome of :class:`~beamml.transforms.kmeans.training.KMeans`.

    Attributes
    ----------
    centers : ndarray of shape (k, d)
    n_iter : int
        Iterations run (scikit-learn's ``n_iter_``).
    stop_reason : {'converged_labels', 'converged_tol', 'max_iter'}
    inertia : float
        Sum of squared distances to the nearest final centre (cosine: of the
        cosine distances ``1 - cos``).
    inertia_history : list of float
        Inertia of iteration i (labels against the centres entering it).
    center_shift_history : list of float
        Squared shift of the centres summed over clusters, per iteration.
    cluster_sizes : list of int
        Points per cluster, labels against the final centres.
    cluster_weights : list of float or None
        With sample weights: the weight in each cluster (else None).
    n_samples : int
    tol : float
        The absolute tolerance used (``tol * mean variance``).
    initial_centers : ndarray of shape (k, d)
    n_relocated : int
        Empty clusters relocated (``empty_cluster='farthest'``).
    n_distinct : int or None
        The number of distinct points when it is below k (given initial centres
        only: some centres then end up duplicates or empty), else None.
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
    n_distinct: int | None = None
    cluster_weights: list | None = None
    n_init: int = 1
    best_init: int = 0
    inits: list | None = None

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


# ----------------------------------------------------------------------------- steps

def checked_stats(_, partials, *, combine_fn: PointStatsCombineFn,
                  n_clusters: int, centres_given: bool = False) -> PointStats:
    """Merge the statistics; refuse an empty input, and k above the number of distinct
    points unless the initial centres are given (then, as scikit-learn, train anyway:
    :func:`initial_state` records it and the launcher warns)."""
    stats = merge_partials(combine_fn, partials)
    if stats is None:
        stats = combine_fn.extract_output(combine_fn.create_accumulator())
    if stats.n == 0:
        raise BeammlError('the input holds no valid point to train on (every row was refused '
                          'or the files hold no rows)')
    if not (np.isfinite(stats.mean).all() and np.isfinite(stats.m2).all()):
        raise BeammlError('the features hold NaN or infinite values, or values too large to '
                          'train on (their squares overflow float64); clean or rescale them')
    if stats.weight_sum is not None and not stats.weight_sum > 0:
        raise BeammlError(f'the sample weights of the {stats.n} points sum to 0: there is '
                          'nothing to train on (give some point a weight > 0)',
                          parameters=('weight_column',))
    if stats.n_distinct < n_clusters and not centres_given:
        raise BeammlError(f'k={n_clusters} is greater than the number of distinct points '
                          f'({stats.n_distinct} among {stats.n} rows); use a smaller k')
    return stats


def initial_state(centers: np.ndarray, stats: PointStats, *, n_clusters: int,
                  tol: float, distance: str = 'euclidean') -> KMeansState:
    """The state before the first iteration, from the seeding's (centred) centres.

    With ``distance='cosine'`` the centres are scaled to unit norm (a zero one is
    a BeammlError: its cosine distance is undefined).
    """
    centers = np.ascontiguousarray(centers, dtype=np.float64)
    if centers.shape[0] != n_clusters:
        raise BeammlError(f'seeding produced {centers.shape[0]} centres for k={n_clusters}')
    if distance == 'cosine':
        centers, zero = unit_rows(centers)
        if zero.any():
            raise BeammlError(f'initial centre {int(np.flatnonzero(zero)[0])} is a zero '
                              'vector: cosine distance is undefined')
    return KMeansState(centers=centers, mean=stats.mean, tol=tolerance(stats.var, tol),
                       n_samples=stats.n, initial_centers=centers.copy(),
                       n_distinct=stats.n_distinct if stats.n_distinct < n_clusters else None,
                       distance=distance)


def cosine_centers(centers: np.ndarray, centers_old: np.ndarray) -> np.ndarray:
    """The cosine M-step after :func:`update_centers`: each centre of a cluster with
    points (the (weighted) mean of its unit points) scaled to unit norm, Spark's
    ``centroid`` (``sum / count``, then normalised). A centre ``update_centers``
    left where it was (an empty cluster kept) stays as it was, bit for bit; a
    cluster whose unit points sum to 0 (opposite directions; its direction is
    undefined) keeps its old centre too."""
    unit, zero = unit_rows(centers)
    kept = zero | (centers == centers_old).all(axis=1)
    unit[kept] = centers_old[kept]
    return unit


def next_state(state, partials, *, combine_fn, max_iter: int, empty_cluster: str):
    """M-step and stopping test after iteration ``state.n_iter`` (scikit-learn's order).

    ``state`` is a :class:`KMeansState` (partials of ``CentroidCombineFn``) or
    a :class:`KMeansRuns` (partials of ``RunsCombineFn``: each run still going
    takes its own step; a stopped run stays as it is)."""
    if state.stopped:
        return state
    sums = merge_partials(combine_fn, partials)
    if isinstance(state, KMeansRuns):
        if sums is None:
            sums = [None] * len(state.runs)
        return dataclasses.replace(state, runs=[
            run if run.stopped else _advance(run, part, max_iter, empty_cluster)
            for run, part in zip(state.runs, sums)])
    return _advance(state, sums, max_iter, empty_cluster)


def _advance(state: KMeansState, sums: ClusterSums | None, max_iter: int,
             empty_cluster: str) -> KMeansState:
    if sums is None or sums.sums is None:
        raise BeammlError('a K-means iteration saw no point (the input changed while '
                          'training?)')
    centers, counts, n_relocated = update_centers(
        sums.sums, sums.counts, state.centers, empty_cluster=empty_cluster,
        far_points=sums.far_points, far_labels=sums.far_labels,
        far_sq_distances=sums.far_sq_distances, weights=sums.weights,
        far_weights=sums.far_weights)
    inertia = sums.inertia
    if state.distance == 'cosine':
        centers = cosine_centers(centers, state.centers)
        inertia = inertia / 2   # ||x - c||^2 = 2 (1 - cos) on unit vectors
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
        signature=sums.signature, inertia_history=state.inertia_history + [inertia],
        center_shift_history=state.center_shift_history + [shift_tot],
        n_relocated=state.n_relocated + n_relocated)


def final_result(state, partials, *, combine_fn) -> KMeansResult:
    """The result: the final state, with labels, sizes and inertia against its centres.

    For :class:`KMeansRuns`, the run of lowest final inertia (the first of equal
    ones, as scikit-learn's ``n_init`` loop), with every run in ``inits``."""
    sums = merge_partials(combine_fn, partials)
    if not isinstance(state, KMeansRuns):
        return _result(state, sums)
    results = [_result(run, part) for run, part in zip(state.runs, sums)]
    best = min(range(len(results)), key=lambda r: (results[r].inertia, r))
    return dataclasses.replace(results[best], n_init=len(results), best_init=best, inits=[
        {'seed': seed, 'inertia': res.inertia, 'n_iter': res.n_iter,
         'stop_reason': res.stop_reason, 'initial_centers': res.initial_centers.tolist()}
        for seed, res in zip(state.seeds, results)])


def _result(state: KMeansState, sums: ClusterSums) -> KMeansResult:
    inertia = float(sums.inertia) / (2 if state.distance == 'cosine' else 1)
    return KMeansResult(
        centers=state.centers + state.mean, n_iter=state.n_iter,
        stop_reason=state.stop_reason or 'max_iter', inertia=inertia,
        inertia_history=[float(v) for v in state.inertia_history],
        center_shift_history=[float(v) for v in state.center_shift_history],
        cluster_sizes=[int(c) for c in sums.counts], n_samples=int(state.n_samples),
        tol=float(state.tol), initial_centers=state.initial_centers + state.mean,
        n_relocated=int(state.n_relocated), n_distinct=state.n_distinct,
        cluster_weights=None if sums.weights is None else [float(w) for w in sums.weights])


def lloyd_step(element, state, exact_distances: bool, dtype=None):
    """E-step of one iteration over a batch, reduced to its accumulator; None once stopped.

    The default (``exact_distances=False``) is the fused E+M step
    (:func:`~beamml.transforms.kmeans.kernels.lloyd_pass`): labels, per-cluster
    sums, counts, inertia and the labels' signature per 4096-row chunk, never
    the batch's n x k distances nor its labels; it returns a
    :class:`~beamml.transforms.kmeans.accumulators.ClusterSums`. With
    ``exact_distances`` (``empty_cluster='farthest'``, whose accumulator keeps
    the points farthest from their centre) it returns the batch's
    :class:`~beamml.transforms.kmeans.accumulators.LabelledPoints`, with the direct
    squared distances. ``dtype`` (None, float64 or float32): what the E-step
    computes in (None: float32 for a float32 cache, else float64; see
    ``lloyd_pass``).

    For :class:`KMeansRuns` it returns a list with one such value per run (None
    for a run that stopped): the runs still going share one product per chunk
    (:func:`~beamml.transforms.kmeans.kernels.lloyd_pass_runs`); with
    ``exact_distances`` each run labels the batch on its own.
    """
    if state.stopped:
        return None
    X, hashes = points_of(element)
    weights = weights_of(element)
    if isinstance(state, KMeansRuns):
        out = [None] * len(state.runs)
        going = [r for r, run in enumerate(state.runs) if not run.stopped]
        if exact_distances:
            for r in going:
                out[r] = _labelled(X, hashes, weights, state.runs[r])
            return out
        passes = lloyd_pass_runs(X, [state.runs[r].centers for r in going],
                                 [state.runs[r].centers_sq for r in going], hashes=hashes,
                                 dtype=dtype, sample_weight=weights)
        for r, part in zip(going, passes):
            out[r] = ClusterSums.from_pass(part)
        return out
    if exact_distances:
        return _labelled(X, hashes, weights, state)
    return ClusterSums.from_pass(lloyd_pass(X, state.centers, state.centers_sq, hashes=hashes,
                                            dtype=dtype, sample_weight=weights))


def _labelled(X, hashes, weights, state: KMeansState) -> LabelledPoints:
    labels = lloyd_labels(X, state.centers, state.centers_sq, return_distances=False)
    X = np.asarray(X, dtype=np.float64)
    diff = X - state.centers[labels]
    sq = np.einsum('ij,ij->i', diff, diff)
    return LabelledPoints(X, labels, sq, hashes, weights)


def final_step(element, state, dtype=None):
    """Labels against the final centres and exact squared distances (the final E-step).

    As scikit-learn: labels from the Lloyd E-step, inertia from the direct
    squared distances ``((x - c) ** 2).sum()``. Fused
    (:func:`~beamml.transforms.kmeans.kernels.lloyd_pass`): returns the batch's
    :class:`~beamml.transforms.kmeans.accumulators.ClusterSums` (sums, sizes,
    inertia); for :class:`KMeansRuns` a list of them, one per run, from one
    product per chunk.
    """
    X, _ = points_of(element)
    weights = weights_of(element)
    if isinstance(state, KMeansRuns):
        return [ClusterSums.from_pass(part) for part in lloyd_pass_runs(
            X, [run.centers for run in state.runs], [run.centers_sq for run in state.runs],
            exact_distances=True, dtype=dtype, sample_weight=weights)]
    return ClusterSums.from_pass(lloyd_pass(X, state.centers, state.centers_sq,
                                            exact_distances=True, dtype=dtype,
                                            sample_weight=weights))
