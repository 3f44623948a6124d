"""The Beam side of shadow and canary deployment: the comparison and version-count
CombineFns, and the assignment DoFns and composites that add a second model to
:mod:`beamml.transforms.assignment`'s (see the package docstring)."""
from __future__ import annotations

from typing import Any, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamml.transforms.assignment import _AssignFn, _AssignLatestFn, _LatestModel
from beamml.transforms.core.combining import merge_into_first
from beamml.transforms.deployment.kernels import canary_mask, comparison_report
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.io import features_matrix

__all__ = ['ShadowComparisonFn', 'VersionCountsFn', 'AssignDeployed', 'AssignDeployedLatest',
           'SHADOW_TAG', 'comparison_batch']

SHADOW_TAG = 'shadow'


# ----------------------------------------------------------------------------- CombineFns

@beam.typehints.with_input_types(pa.RecordBatch)
@beam.typehints.with_output_types(dict[str, Any])
class ShadowComparisonFn(beam.CombineFn):
    """The production model against the shadow, over comparison batches.

    An input is a RecordBatch with int64 ``cluster`` (production) and ``shadow_cluster``
    (-1: the shadow refused the point) and float64 ``loss`` and ``shadow_loss`` (each
    point's squared distance, or ``1 - cos``, to its centre), whose schema metadata
    holds ``k`` and ``shadow_k``. Accumulator ``[table (k x k2) int64, loss sums (2,),
    shadow refused]``; without ``shape`` the table takes its shape from the first batch
    (a streaming window whose model changed: one comparison per pair of versions, so one
    shape per key). Output: :func:`comparison_report` (an empty input: 0 points,
    agreement None).
    """

    def __init__(self, shape: tuple[int, int] | None = None):
        self.shape = None if shape is None else (int(shape[0]), int(shape[1]))

    def create_accumulator(self):
        shape = self.shape or (0, 0)
        return [np.zeros(shape, dtype=np.int64), np.zeros(2), 0]

    @staticmethod
    def _shape_of(batch: pa.RecordBatch) -> tuple[int, int]:
        meta = batch.schema.metadata or {}
        return int(meta[b'k']), int(meta[b'shadow_k'])

    def _fit(self, acc, shape):
        if acc[0].shape == shape:
            return
        if acc[0].size == 0:
            acc[0] = np.zeros(shape, dtype=np.int64)
            return
        raise ValueError(f'comparison of k={shape} models merged with k={acc[0].shape}')

    def add_input(self, acc, batch):
        self._fit(acc, self._shape_of(batch))
        k1, k2 = acc[0].shape
        a = batch.column('cluster').to_numpy()
        b = batch.column('shadow_cluster').to_numpy()
        ok = b >= 0
        acc[0] += np.bincount(a[ok] * k2 + b[ok], minlength=k1 * k2)[:k1 * k2].reshape(k1, k2)
        acc[1][0] += float(batch.column('loss').to_numpy()[ok].sum())
        acc[1][1] += float(batch.column('shadow_loss').to_numpy()[ok].sum())
        acc[2] += int((~ok).sum())
        return acc

    def merge_accumulators(self, accs):
        return merge_into_first(accs, self._merge)

    def _merge(self, first, a) -> None:
        if a[0].size:
            self._fit(first, a[0].shape)
            first[0] += a[0]
        first[1] += a[1]
        first[2] += a[2]

    def extract_output(self, acc):
        return comparison_report(acc[0], acc[1], acc[2])


def _add_counts(first: list, a: list) -> None:
    for f, x in zip(first, a):
        f += x   # numpy arrays: in place


@beam.typehints.with_input_types(pa.RecordBatch)
@beam.typehints.with_output_types(list[list[int]])
class VersionCountsFn(beam.CombineFn):
    """Points per model version and cluster over assigned batches (``model_version``,
    ``cluster``): accumulator one int64 count array per version (of its k). Output: a
    list of count lists, in the order of ``versions``; rows of another version are an
    error."""

    def __init__(self, versions: Sequence[str], ks: Sequence[int]):
        self.versions, self.ks = [str(v) for v in versions], [int(k) for k in ks]

    def create_accumulator(self):
        return [np.zeros(k, dtype=np.int64) for k in self.ks]

    def add_input(self, acc, batch):
        if not batch.num_rows:
            return acc
        version = batch.column('model_version')
        labels = batch.column('cluster').to_numpy()
        seen = np.zeros(len(labels), dtype=bool)
        for i, (v, k) in enumerate(zip(self.versions, self.ks)):
            mine = pc.fill_null(pc.equal(version, v), False).to_numpy(zero_copy_only=False)
            seen |= mine
            acc[i] += np.bincount(labels[mine], minlength=k)[:k]
        if not seen.all():
            raise ValueError(f'rows of model version {version[int(np.argmin(seen))]}, '
                             f'expected one of {self.versions}')
        return acc

    def merge_accumulators(self, accs):
        return merge_into_first(accs, _add_counts)

    def extract_output(self, acc):
        return [a.tolist() for a in acc]

# ----------------------------------------------------------------------------- DoFns

def _loss(model, dist: np.ndarray) -> np.ndarray:
    """What inertia sums: the squared distance, or ``1 - cos`` for a cosine model."""
    return dist if getattr(model, 'distance', 'euclidean') == 'cosine' else dist * dist


def comparison_batch(out: pa.RecordBatch, model, shadow) -> pa.RecordBatch:
    """The comparison batch of assigned rows (``cluster``, ``distance``, ``features``):
    the shadow's nearest centre of the same feature matrix."""
    X = features_matrix(out)
    labels, dist = shadow.nearest(X)
    prod_dist = out.column('distance').to_numpy()
    batch = pa.RecordBatch.from_arrays(
        [out.column('cluster'), pa.array(labels),
         pa.array(_loss(model, prod_dist)),
         pa.array(np.where(labels >= 0, _loss(shadow, np.nan_to_num(dist)), 0.0))],
        names=['cluster', 'shadow_cluster', 'loss', 'shadow_loss'])
    return batch.replace_schema_metadata({'k': str(model.k), 'shadow_k': str(shadow.k)})


class _DeployMixin:
    """Shadow and canary on top of :class:`_AssignFn`'s ``_assign``."""

    canary_fraction = 0.0

    def _deploy(self, batch, model, shadow, canary):
        if canary is None or batch.num_rows == 0:
            self._shadow = shadow
            yield from self._assign(batch, model)
            return
        self._shadow = None
        to_canary = canary_mask(batch.column('id'), self.canary_fraction)
        n_canary = int(to_canary.sum())
        if n_canary < batch.num_rows:
            yield from self._assign(batch.filter(pa.array(~to_canary)), model)
        if n_canary:
            yield from self._assign(batch.filter(pa.array(to_canary)), canary)

    def _also(self, out, model):
        if self._shadow is not None:
            yield beam.pvalue.TaggedOutput(SHADOW_TAG, (
                (model.version, self._shadow.version),
                comparison_batch(out, model, self._shadow)))


class _DeployFn(_DeployMixin, _AssignFn):
    """Batch: production, and a shadow or a canary model, as side inputs."""

    def __init__(self, all_distances, with_version, output_columns, mode: str,
                 canary_fraction: float = 0.0):
        super().__init__(all_distances, with_version, output_columns)
        self.mode, self.canary_fraction = mode, float(canary_fraction)
        self._shadow = None

    def process(self, batch, model, other):
        yield from self._deploy(batch, model, other if self.mode == 'shadow' else None,
                                other if self.mode == 'canary' else None)


class _DeployLatestFn(_DeployMixin, _AssignLatestFn):
    """Streaming: every model looked up by path (hot swap), as :class:`_AssignLatestFn`."""

    def __init__(self, path, refresh_seconds, all_distances, output_columns, mode: str,
                 other_path: str, canary_fraction: float = 0.0):
        super().__init__(path, refresh_seconds, all_distances, output_columns)
        self.mode, self.other_path = mode, other_path
        self.canary_fraction = float(canary_fraction)
        self.other = None
        self._shadow = None

    def setup(self):
        super().setup()
        key = (self.other_path, self.refresh_seconds)
        self.other = self._LOOKUPS.get(key)
        if self.other is None:
            self.other = self._LOOKUPS[key] = _LatestModel(self.other_path,
                                                           self.refresh_seconds)

    def process(self, batch):
        other = self.other.get()
        yield from self._deploy(batch, self.latest.get(),
                                other if self.mode == 'shadow' else None,
                                other if self.mode == 'canary' else None)


def _check_mode(mode, canary_fraction):
    if mode not in ('shadow', 'canary'):
        raise BeammlError(f'deployment mode must be shadow or canary, got {mode!r}')
    if mode == 'canary' and not 0.0 <= canary_fraction <= 1.0:
        raise BeammlError(f'canary fraction must be in [0, 1], got {canary_fraction}')


class AssignDeployed(beam.PTransform):
    """:class:`~beamml.transforms.assignment.AssignNearestCentroid` with a second model.

    ``mode='shadow'``: every point is also assigned by ``other``; the rows are the
    production model's (unchanged), and ``result.shadow`` holds ``((production version,
    shadow version), comparison batch)`` per batch for :class:`ShadowComparisonFn`.
    ``mode='canary'``: the points with ``unit_hash(id) < canary_fraction`` are assigned by
    ``other`` instead; each row's ``model_version`` names its model. ``model`` and
    ``other`` are side inputs (AsSingleton views). Outputs ``batches``, ``errors`` and
    ``shadow``.
    """

    def __init__(self, model, other, mode: str, *, canary_fraction: float = 0.0,
                 all_distances: bool = False, output_columns: Sequence[str] | None = None,
                 label: str | None = None):
        super().__init__(label)
        _check_mode(mode, canary_fraction)
        self.model, self.other, self.mode = model, other, mode
        self.canary_fraction = float(canary_fraction)
        self.all_distances = all_distances
        self.output_columns = list(output_columns) if output_columns else None

    def expand(self, batches):
        return batches | f'NearestCentroid{self.mode.title()}' >> beam.ParDo(
            _DeployFn(self.all_distances, True, self.output_columns, self.mode,
                      self.canary_fraction), self.model, self.other
        ).with_outputs('errors', SHADOW_TAG, main='batches')


class AssignDeployedLatest(beam.PTransform):
    """:class:`AssignDeployed` with both models looked up by path every
    ``refresh_seconds`` (:class:`~beamml.transforms.assignment.AssignLatest`)."""

    def __init__(self, model_path: str, other_path: str, mode: str,
                 refresh_seconds: float = 60.0, *, canary_fraction: float = 0.0,
                 all_distances: bool = False, output_columns: Sequence[str] | None = None,
                 label: str | None = None):
        super().__init__(label)
        _check_mode(mode, canary_fraction)
        if not refresh_seconds > 0:
            raise BeammlError(f'refresh_seconds must be > 0, got {refresh_seconds!r}')
        self.model_path, self.other_path, self.mode = model_path, other_path, mode
        self.refresh_seconds = float(refresh_seconds)
        self.canary_fraction = float(canary_fraction)
        self.all_distances = all_distances
        self.output_columns = list(output_columns) if output_columns else None

    def expand(self, batches):
        return batches | f'NearestCentroidLatest{self.mode.title()}' >> beam.ParDo(
            _DeployLatestFn(self.model_path, self.refresh_seconds, self.all_distances,
                            self.output_columns, self.mode, self.other_path,
                            self.canary_fraction)
        ).with_outputs('errors', SHADOW_TAG, main='batches')
