"""K-means aggregations: the CombineFns over the numpy accumulators, and the partial combine.

* :class:`CentroidCombineFn` (and :class:`RunsCombineFn`, one per run), the
  M-step's combiner over :class:`~beamml.transforms.kmeans.accumulators.ClusterSums`;
* :class:`PointStatsCombineFn`, the pass before seeding, over
  :class:`~beamml.transforms.kmeans.accumulators.PointStats`;
* the k-means|| combiners (:class:`OversampleCombineFn`, :class:`SumArraysCombineFn`);
* :class:`PartialCombineFn`, the partial half of a lifted combine written out
  (one accumulator per bundle), and :func:`merge_partials`, its other half.

The maths lives in the accumulator classes (:mod:`~beamml.transforms.kmeans.accumulators`,
no Beam needed to test it); the CombineFns only create, delegate and merge into the
first accumulator.
"""
from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from beamml.transforms.core.combining import merge_into_first
from beamml.transforms.io import points_matrix
from beamml.transforms.kmeans.accumulators import ClusterSums, LabelledPoints, PointStats
from beamml.transforms.kmeans.kernels import largest

__all__ = [
    'CentroidCombineFn', 'RunsCombineFn', 'PointStatsCombineFn',
    'OversampleCombineFn', 'SumArraysCombineFn', 'StateMarker', 'PartialCombineFn',
    'merge_partials', 'batch_weights',
]

#: what CentroidCombineFn adds: a labelled batch (or its tuple), or a batch's ClusterSums
_CentroidInput = LabelledPoints | ClusterSums | tuple[np.ndarray, ...]


# ----------------------------------------------------------------------------- CombineFns

def batch_weights(batch) -> np.ndarray | None:
    """The sample weights of a points batch (its float64 ``weight`` column, as
    ``ReadPoints(weight_column=...)`` makes), or None (unweighted; an array input)."""
    if isinstance(batch, (pa.RecordBatch, pa.Table)) and 'weight' in batch.schema.names:
        col = batch.column('weight')
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        return col.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    return None


# not RecordBatches: labelled points or the sums of one batch (the E-step's output)
@beam.typehints.with_input_types(_CentroidInput)
@beam.typehints.with_output_types(ClusterSums)
class CentroidCombineFn(beam.CombineFn):
    """Per-cluster sums, counts and inertia of labelled batches (the K-means M-step).

    Inputs are :class:`LabelledPoints` (or tuples ``(X, labels, sq_distances[,
    row_hashes])``), one per batch, or a batch already reduced to a
    :class:`ClusterSums` (the fused E+M step,
    :func:`~beamml.transforms.kmeans.kernels.lloyd_pass`), which is merged in.
    Accumulators are :class:`ClusterSums`;
    merging adds into the first. The output is the merged :class:`ClusterSums`;
    :func:`~beamml.transforms.kmeans.kernels.update_centers` turns it into centres.

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
        return ClusterSums(self.n_clusters, track_farthest=self.track_farthest)

    def add_input(self, acc: ClusterSums, element) -> ClusterSums:
        if isinstance(element, ClusterSums):
            if self.track_farthest and element.sums is not None and element.far_points is None:
                raise ValueError('a ClusterSums without farthest points was added to a '
                                 'CentroidCombineFn(track_farthest=True)')
            return acc.merge(element)
        return acc.add(*tuple(element))

    def merge_accumulators(self, accumulators) -> ClusterSums:
        return merge_into_first(accumulators)

    def extract_output(self, acc: ClusterSums) -> ClusterSums:
        return acc.sort_farthest()


# not RecordBatches: per batch, what CentroidCombineFn adds for each run (None: stopped)
@beam.typehints.with_input_types(list[_CentroidInput | None])
@beam.typehints.with_output_types(list[ClusterSums | None])
class RunsCombineFn(beam.CombineFn):
    """:class:`CentroidCombineFn` for ``n_init`` runs side by side: one accumulator per run.

    Inputs are lists of ``n_runs`` values (what :class:`CentroidCombineFn`
    adds, or None for a run that added nothing: it stopped); the accumulator
    and the output are lists of ``n_runs`` :class:`ClusterSums` (None for a
    run nothing was added to).
    """

    def __init__(self, inner: CentroidCombineFn, n_runs: int):
        if n_runs < 1:
            raise ValueError(f'n_runs must be >= 1, got {n_runs}')
        self.inner, self.n_runs = inner, int(n_runs)

    def create_accumulator(self) -> list:
        return [None] * self.n_runs

    def add_input(self, acc: list, element) -> list:
        if len(element) != self.n_runs:
            raise ValueError(f'expected {self.n_runs} runs, got {len(element)}')
        for r, value in enumerate(element):
            if value is not None:
                if acc[r] is None:
                    acc[r] = self.inner.create_accumulator()
                acc[r] = self.inner.add_input(acc[r], value)
        return acc

    def merge_accumulators(self, accumulators) -> list:
        return merge_into_first(accumulators, self._merge_runs)

    def _merge_runs(self, first: list, a: list) -> None:
        for r in range(self.n_runs):
            if a[r] is not None:
                if first[r] is None:
                    first[r] = self.inner.create_accumulator()
                first[r] = self.inner.merge_accumulators([first[r], a[r]])

    def extract_output(self, acc: list) -> list:
        return [None if a is None else self.inner.extract_output(a) for a in acc]


@beam.typehints.with_input_types(pa.RecordBatch | np.ndarray)
@beam.typehints.with_output_types(PointStats)
class PointStatsCombineFn(beam.CombineFn):
    """Count, mean and variance per feature, a uniform sample and a few distinct points.

    One pass, before seeding. Inputs are points RecordBatches (or (n, d) arrays).
    Accumulators (and the output) are :class:`PointStats`.

    Parameters
    ----------
    sample_size : int
        Points in the uniform sample (priority sampling: the smallest random
        keys; a batch's keys come from ``seed`` and a hash of the batch).
    max_distinct : int
        Keep up to this many distinct points (those with the smallest
        :func:`~beamml.transforms.kmeans.kernels.row_hashes`); fewer means the
        data have fewer distinct points.
    seed : int
    """

    def __init__(self, sample_size: int, max_distinct: int, seed: int):
        self.sample_size = int(sample_size)
        self.max_distinct = int(max_distinct)
        self.seed = int(seed)

    def create_accumulator(self) -> PointStats:
        return PointStats(self.sample_size, self.max_distinct, self.seed)

    def add_input(self, acc: PointStats, element) -> PointStats:
        return acc.add_points(points_matrix(element), weights=batch_weights(element))

    def add_points(self, acc: PointStats, X: np.ndarray,
                   hashes: np.ndarray | None = None,
                   weights: np.ndarray | None = None) -> PointStats:
        """:meth:`add_input` of an (n, d) array whose row hashes (and weights) may be known."""
        return acc.add_points(X, hashes, weights)

    def merge_accumulators(self, accumulators) -> PointStats:
        return merge_into_first(accumulators)

    def extract_output(self, acc: PointStats) -> PointStats:
        return acc.sort_sample()


# not RecordBatches: a round's (keys, points, cost) per batch
@beam.typehints.with_input_types(tuple[np.ndarray, np.ndarray, float])
@beam.typehints.with_output_types(tuple[np.ndarray | None, np.ndarray | None, float])
class OversampleCombineFn(beam.CombineFn):
    """k-means|| round: the total cost and the points with the largest keys ``d^2 / u``.

    Inputs and accumulators are ``(keys, points, cost)``; at most ``cap`` points are kept.
    """

    def __init__(self, cap: int):
        self.cap = int(cap)

    def create_accumulator(self):
        return [None, None, 0.0]  # keys, points, cost

    def add_input(self, acc, element):
        return self.merge_accumulators([acc, list(element)])

    def merge_accumulators(self, accumulators):
        return merge_into_first(accumulators, self._merge)

    def _merge(self, first: list, other) -> None:
        keys, pts, cost = other
        first[2] += cost
        if keys is None or not len(keys):
            return
        if first[0] is not None:
            keys = np.concatenate([first[0], keys])
            pts = np.concatenate([first[1], pts])
        top = largest(keys, self.cap)
        first[0], first[1] = keys[top], pts[top]

    def extract_output(self, acc):
        return tuple(acc)


# not RecordBatches: equal-shape arrays (k-means|| candidate weights, histogram counts)
@beam.typehints.with_input_types(np.ndarray)
@beam.typehints.with_output_types(np.ndarray | None)   # None: nothing was added
class SumArraysCombineFn(beam.CombineFn):
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


# ----------------------------------------------------------------------------- partial combine

class StateMarker:
    """The one extra element of the training points: where an iteration emits its state.

    Every other pass over the points (statistics, seeding rounds) skips it.
    """

    def __eq__(self, other):
        return isinstance(other, StateMarker)

    def __hash__(self):
        return 0


class PartialCombineFn(beam.DoFn):
    """Add a bundle's elements into one accumulator of ``combine_fn``; emit it at the end.

    This is the partial half of a lifted combine, written out: the step after it
    merges the partial accumulators it receives as a list side input
    (:func:`merge_partials`), without the keying, shuffle and merge stages of
    ``CombineGlobally`` (about 0.1 s per iteration less on the local runner).
    The accumulators are small (k x d), so a list of one per bundle is cheap
    to broadcast on a distributed runner too.

    ``compute(element, *side_inputs, **compute_kwargs)`` returns the value to
    add, or None. A :class:`StateMarker` element is skipped.
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
        if isinstance(element, StateMarker):
            return
        self._add(self.compute(element, *side_inputs, **self.compute_kwargs))

    def finish_bundle(self):
        if self.acc is not None:
            yield WindowedValue(self.acc, GlobalWindow().max_timestamp(), [GlobalWindow()])
            self.acc = None

    def teardown(self):
        self.combine_fn.teardown()


def merge_partials(combine_fn: beam.CombineFn, partials):
    """The merged output of partial accumulators; None when there are none."""
    partials = list(partials)
    if not partials:
        return None
    return combine_fn.extract_output(combine_fn.merge_accumulators(partials))
