"""K-means training on Beam: seeding, Lloyd iterations, a CombineFn that recomputes the centres.

With scikit-learn's arithmetic and stopping rule (``KMeans(algorithm='lloyd')``):
from the same initial centres the centres, labels, inertia and number of
iterations agree with scikit-learn's. ``batches | KMeans(n_clusters, ...)``
gives one :class:`KMeansResult`.

Modules
-------
:mod:`~beamml.transforms.kmeans.kernels`
    numpy only: the Lloyd E-step (``lloyd_labels``, the fused ``lloyd_pass``) and
    M-step (``update_centers``, empty clusters), ``tolerance``, row hashes and the
    label signature.
:mod:`~beamml.transforms.kmeans.seeding_kernels`
    numpy only: ``kmeans_plusplus`` and the per-batch random generator.
:mod:`~beamml.transforms.kmeans.runtime`
    how the E-step runs: its thread pool, BLAS on one thread, the dtype.
:mod:`~beamml.transforms.kmeans.cache`
    the point cache: batches as ``.npy`` files (local or gs://) between iterations.
:mod:`~beamml.transforms.kmeans.accumulators`
    numpy only: the accumulators (``ClusterSums``, ``PointStats``) that add and merge batches.
:mod:`~beamml.transforms.kmeans.combiners`
    the CombineFns that delegate to them, and the partial combine (one
    accumulator per bundle).
:mod:`~beamml.transforms.kmeans.seeding`
    k-means++, k-means||, random and given centres (``read_initial_centers``).
:mod:`~beamml.transforms.kmeans.lloyd`
    the Lloyd iteration as numpy steps: ``KMeansState``, the E-step per batch,
    the M-step with scikit-learn's stopping rule, ``KMeansResult``.
:mod:`~beamml.transforms.kmeans.centring`
    the points of a training: unit points, the statistics pass (and the cache),
    centring, the labels against the final state.
:mod:`~beamml.transforms.kmeans.iterations`
    the DoFns that run the Lloyd steps and the unrolled iterations (``LloydBlock``).
:mod:`~beamml.transforms.kmeans.training`
    the graph: ``KMeans`` (its parameters checked) and ``recursion_limit_for`` for
    running many iterations locally.
"""
from beamml.transforms.kmeans.cache import read_cached_points, write_cached_points
from beamml.transforms.kmeans.accumulators import ClusterSums, LabelledPoints, PointStats
from beamml.transforms.kmeans.combiners import (CentroidCombineFn, PointStatsCombineFn,
                                                RunsCombineFn)
from beamml.transforms.kmeans.kernels import (EMPTY_CLUSTER, INIT_METHODS, STOP_REASONS,
                                              center_shift, label_signature, lloyd_labels,
                                              lloyd_pass, lloyd_pass_runs, row_hashes, tolerance,
                                              update_centers)
from beamml.transforms.kmeans.lloyd import KMeansResult, KMeansRuns, KMeansState, state_from_dict
from beamml.transforms.kmeans.seeding import read_initial_centers
from beamml.transforms.kmeans.seeding_kernels import kmeans_plusplus
from beamml.transforms.kmeans.training import KMeans, recursion_limit_for

__all__ = [
    'INIT_METHODS', 'EMPTY_CLUSTER', 'STOP_REASONS',
    'row_hashes', 'label_signature', 'tolerance', 'lloyd_labels', 'lloyd_pass',
    'lloyd_pass_runs', 'kmeans_plusplus',
    'update_centers', 'center_shift', 'read_initial_centers',
    'write_cached_points', 'read_cached_points',
    'LabelledPoints', 'ClusterSums', 'CentroidCombineFn', 'RunsCombineFn', 'PointStats',
    'PointStatsCombineFn', 'KMeansState', 'KMeansRuns', 'state_from_dict', 'KMeansResult', 'KMeans', 'recursion_limit_for',
]
