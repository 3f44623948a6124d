"""Nearest-centroid assignment (batch inference) on points RecordBatches, as Beam transforms.

:class:`AssignNearestCentroid` applies :func:`beamml.transforms.distances.nearest_centroid`
(or, for a model whose ``distance`` is ``'cosine'``,
:func:`~beamml.transforms.distances.nearest_centroid_cosine`: ``1 - cos``, a zero
vector refused) to whole points RecordBatches (columns ``id``, ``features``) and
appends ``cluster`` and ``distance`` (and optionally ``distances`` and ``model_version``). The model (a
:class:`beamml.transforms.model.CentroidModel`) always reaches the workers as a
singleton side input. How ties and far-from-origin data stay exact is told in
:mod:`beamml.transforms.distances`.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa

from beamml.transforms.core.combining import merge_into_first
from beamml.transforms.core.errors import ZERO_VECTOR, BeammlError, RecordCounters, dead_letter
from beamml.transforms.core.types import SOURCE_COLUMNS
from beamml.transforms.distances import nearest_centroid
from beamml.transforms.io import features_matrix
from beamml.transforms.io.rows import source_of
from beamml.transforms.model import CentroidModel
from beamml.transforms.model.artifact import latest_version

__all__ = ['add_assignment', 'AssignNearestCentroid', 'AssignLatest', 'LoadModel',
           'ASSIGN_COLUMNS', 'ClusterSizesFn']
_LOG = logging.getLogger('beamml')

ASSIGN_COLUMNS = ('cluster', 'distance')


# ----------------------------------------------------------------------------- Beam

def _version_array(version: str | None, n: int) -> pa.Array:
    if version is None:
        return pa.nulls(n, pa.string())
    return pa.repeat(pa.scalar(str(version), pa.string()), n)


def add_assignment(batch: pa.RecordBatch, model, *, all_distances: bool = False,
                   with_version: bool = False) -> tuple[pa.RecordBatch, np.ndarray]:
    """Append ``cluster`` (int64), ``distance`` (float64) and optional columns to a batch.

    Parameters
    ----------
    batch : RecordBatch with a ``features`` column, fixed_size_list<float64>[d]
    model : CentroidModel
        Its ``distance`` (euclidean, or cosine) decides what nearest means
        (:meth:`~beamml.transforms.model.CentroidModel.nearest`).
    all_distances : bool
        Also append ``distances``, fixed_size_list<float64>[k].
    with_version : bool
        Also append ``model_version`` (string, the model's version).

    Returns
    -------
    out : RecordBatch
        The rows that could be assigned, with the new columns.
    refused : ndarray of int64
        Positions (in ``batch``) of the rows that could not (non-finite values; a zero
        vector for a cosine model).
    """
    X = features_matrix(batch)
    if all_distances:
        labels, dist, every = _nearest(model, X, return_all=True)
    else:
        labels, dist = _nearest(model, X)
    refused = np.flatnonzero(labels < 0)
    if len(refused):
        keep = np.flatnonzero(labels >= 0)
        batch = batch.take(pa.array(keep))
        labels, dist = labels[keep], dist[keep]
        if all_distances:
            every = every[keep]
    n = batch.num_rows
    batch = batch.append_column('cluster', pa.array(labels))
    batch = batch.append_column('distance', pa.array(dist))
    if all_distances:
        batch = batch.append_column('distances', pa.FixedSizeListArray.from_arrays(
            pa.array(np.ascontiguousarray(every).reshape(-1)), model.k))
    if with_version:
        batch = batch.append_column('model_version', _version_array(model.version, n))
    return batch, refused


def _nearest(model, X, *, return_all: bool = False):
    """The model's nearest centres (a model object without ``nearest``: Euclidean)."""
    if hasattr(model, 'nearest'):
        return model.nearest(X, return_all=return_all)
    return nearest_centroid(X, model.centers, centers_sq=model.centers_sq,
                            return_all=return_all)


_NON_FINITE = ('cannot assign: NaN or infinite distance to the centres (non-finite or huge '
               'feature values)')


def _refusal_reasons(batch: pa.RecordBatch, refused: np.ndarray, model) -> dict[str, np.ndarray]:
    """The refused positions by reason: a zero vector (cosine models), else non-finite."""
    if getattr(model, 'distance', 'euclidean') != 'cosine':
        return {_NON_FINITE: refused}
    X = features_matrix(batch)[refused]
    zero = (X == 0).all(axis=1)
    return {ZERO_VECTOR: refused[zero], _NON_FINITE: refused[~zero]}


def _refused_letters(batch: pa.RecordBatch, positions, reason: str) -> list[dict]:
    """Dead letters for rows of a points batch (error path only), with each row's file,
    row and line when the batch carries the reader's source columns."""
    if not len(positions):
        return []
    sub = batch.select(['id', 'features']).take(pa.array(np.asarray(positions)))
    return [dead_letter(f, r, ln, reason, rec)
            for (f, r, ln), rec in zip(source_of(batch, positions), sub.to_pylist())]


def _without_source(batch: pa.RecordBatch) -> pa.RecordBatch:
    names = [c for c in batch.schema.names if c not in SOURCE_COLUMNS]
    return batch if len(names) == batch.num_columns else batch.select(names)


class _AssignFn(beam.DoFn):
    """Assign every row of a points batch to its nearest centre (model: side input)."""

    def __init__(self, all_distances: bool, with_version: bool,
                 output_columns: Sequence[str] | None = None):
        self.all_distances = all_distances
        self.with_version = with_version
        self.output_columns = list(output_columns) if output_columns else None
        self.counters = RecordCounters()

    def process(self, batch: pa.RecordBatch, model):
        yield from self._assign(batch, model)

    def _assign(self, batch: pa.RecordBatch, model):
        if batch.num_rows == 0:
            return
        d = batch.schema.field('features').type.list_size
        if d != model.d:
            self.counters.refuse_accepted(batch.num_rows)
            reason = (f'point has {d} features but model {model.version} has d={model.d}')
            for dl in _refused_letters(batch, np.arange(batch.num_rows), reason):
                yield beam.pvalue.TaggedOutput('errors', dl)
            return
        out, refused = add_assignment(batch, model, all_distances=self.all_distances,
                                      with_version=self.with_version)
        if len(refused):
            self.counters.refuse_accepted(len(refused))
            for reason, positions in _refusal_reasons(batch, refused, model).items():
                for dl in _refused_letters(batch, positions, reason):
                    yield beam.pvalue.TaggedOutput('errors', dl)
        if out.num_rows:
            yield from self._also(out, model)
            yield out.select(self.output_columns) if self.output_columns else _without_source(out)

    def _also(self, out: pa.RecordBatch, model):
        """Extra outputs of the assigned rows (with their features): none here; the
        shadow deployment (:mod:`beamml.transforms.deployment`) adds its comparison."""
        return ()


class _LatestModel:
    """The model a path designates, looked up again every ``refresh_seconds``.

    For a model directory that is its LATEST version: a new version saved there (or
    LATEST moved back: a rollback) is picked up at the next look, without a restart.
    A look reads the small LATEST file; the model is loaded only when it names
    another version. A look that fails (the file being replaced, storage
    unreachable) keeps the model in use and logs why.
    """

    def __init__(self, path: str, refresh_seconds: float, clock=time.monotonic):
        self.path, self.refresh_seconds, self.clock = path, refresh_seconds, clock
        self.model: CentroidModel | None = None
        self._looked = -math.inf

    def _version(self) -> str | None:
        try:
            return latest_version(self.path)
        except BeammlError:
            return None   # not a model directory: a version directory or a model.json

    def get(self) -> CentroidModel:
        now = self.clock()
        if self.model is not None and now - self._looked < self.refresh_seconds:
            return self.model
        self._looked = now
        if self.model is None:
            self.model = CentroidModel.load(self.path)
            _LOG.info('assign: model %s loaded from %s', self.model.version, self.path)
            return self.model
        try:
            version = self._version()
            if version is not None and version != self.model.version:
                model = CentroidModel.load(self.path)
                _LOG.info('assign: model %s replaces %s (from %s)', model.version,
                          self.model.version, self.path)
                self.model = model
        except Exception as e:   # keep serving with the model in use
            _LOG.warning('assign: looking for a new model at %s failed (%s); keeping %s',
                         self.path, e, self.model.version)
        return self.model


class _AssignLatestFn(_AssignFn):
    """:class:`_AssignFn` with the model looked up by path (hot swap), not a side input."""

    def __init__(self, path: str, refresh_seconds: float, all_distances: bool,
                 output_columns: Sequence[str] | None = None):
        super().__init__(all_distances, True, output_columns)
        self.path, self.refresh_seconds = path, refresh_seconds
        self.latest = None

    #: one lookup per model path and process: runners that make the DoFn again for every
    #: bundle (the local BundleBasedDirectRunner) would otherwise load the model each time
    _LOOKUPS: dict = {}

    def setup(self):
        key = (self.path, self.refresh_seconds)
        self.latest = self._LOOKUPS.get(key)
        if self.latest is None:
            self.latest = self._LOOKUPS[key] = _LatestModel(self.path, self.refresh_seconds)

    def process(self, batch: pa.RecordBatch):
        yield from self._assign(batch, self.latest.get())


class AssignLatest(beam.PTransform):
    """:class:`AssignNearestCentroid` with a model that may change while the job runs.

    ``model_path`` is a model directory (or a version directory, or a model.json,
    which never change); every worker looks at its LATEST at most once every
    ``refresh_seconds`` and switches to a new version when LATEST names one: a
    new training saved there is picked up without a restart, and moving LATEST
    back rolls back. Every row names the ``model_version`` that assigned it.
    The model is not a side input: a look is a read of one small file, by each
    worker on its own clock, which works the same on every runner (a periodic side
    input's refresh depends on the runner's triggering of side inputs). The
    first model is loaded when a worker starts, and a model path that does not
    load fails the job there, so check it before (``CentroidModel.load``).
    Outputs as :class:`AssignNearestCentroid`: ``batches`` and ``errors``.
    """

    def __init__(self, model_path: str, refresh_seconds: float = 60.0, *,
                 all_distances: bool = False, output_columns: Sequence[str] | None = None,
                 label: str | None = None):
        super().__init__(label)
        if not refresh_seconds > 0:
            raise BeammlError(f'refresh_seconds must be > 0, got {refresh_seconds!r}',
                              parameters=('refresh_seconds',))
        self.model_path, self.refresh_seconds = model_path, float(refresh_seconds)
        self.all_distances = all_distances
        self.output_columns = list(output_columns) if output_columns else None

    def expand(self, batches):
        return batches | 'NearestCentroidLatest' >> beam.ParDo(
            _AssignLatestFn(self.model_path, self.refresh_seconds, self.all_distances,
                            self.output_columns)).with_outputs('errors', main='batches')


class LoadModel(beam.PTransform):
    """``p | LoadModel(path)``: a PCollection of one CentroidModel, read when the job runs.

    ``path`` is anything :meth:`CentroidModel.load` accepts (a model directory is
    resolved through its LATEST when the step runs, not when the graph is built).
    """

    def __init__(self, path: str, label: str | None = None):
        super().__init__(label)
        self.path = path

    def expand(self, pbegin):
        return (pbegin
                | 'ModelPath' >> beam.Create([self.path])
                | 'ReadModel' >> beam.Map(CentroidModel.load))


class AssignNearestCentroid(beam.PTransform):
    """Append ``cluster`` and ``distance`` (and ``distances``) to every points batch.

    ``model`` is a :class:`~beamml.transforms.model.CentroidModel`, a PCollection holding
    exactly one CentroidModel, an ``AsSingleton`` view of one, or a model path
    (read by :class:`LoadModel` when the job runs); it always reaches the DoFn
    as a singleton side input (a model given directly goes through ``beam.Create``).

    The result is tuple-like, as ReadPoints': ``result.batches`` (the batches with
    the new columns) and ``result.errors`` (dead letters for rows that cannot
    be assigned: NaN / infinite features when the reader allowed them, a
    feature dimension that differs from the model's, or a zero vector when the
    model's distance is cosine). Refused rows are moved
    from ``records_ok`` to ``records_refused``.

    Parameters
    ----------
    model : CentroidModel, PCollection[CentroidModel], AsSingleton or str
    all_distances : bool
        Also append ``distances``, fixed_size_list<float64>[k], the distance to
        every centre.
    with_version : bool
        Also append ``model_version`` (string), the version of the model used.
    output_columns : sequence of str, optional
        Keep only these columns (in this order), e.g. ``['id', 'cluster',
        'distance']``; saves a separate selection step. Default: all.
    """

    def __init__(self, model: Any, all_distances: bool = False, *, with_version: bool = False,
                 output_columns: Sequence[str] | None = None, label: str | None = None):
        super().__init__(label)
        self.model = model
        self.all_distances = all_distances
        self.with_version = with_version
        self.output_columns = list(output_columns) if output_columns else None

    def _side_input(self, pipeline):
        model = self.model
        if isinstance(model, beam.pvalue.AsSideInput):
            return model
        if isinstance(model, beam.PCollection):
            return beam.pvalue.AsSingleton(model)
        if isinstance(model, str):
            return beam.pvalue.AsSingleton(pipeline | 'LoadModel' >> LoadModel(model))
        if hasattr(model, 'centers') and hasattr(model, 'd'):
            return beam.pvalue.AsSingleton(pipeline | 'CreateModel' >> beam.Create([model]))
        raise BeammlError(f'AssignNearestCentroid needs a CentroidModel, a PCollection of '
                          f'one, an AsSingleton view or a model path, got '
                          f'{type(model).__name__}')

    def expand(self, batches):
        model = self._side_input(batches.pipeline)
        return batches | 'NearestCentroid' >> beam.ParDo(
            _AssignFn(self.all_distances, self.with_version, self.output_columns), model
        ).with_outputs('errors', main='batches')


@beam.typehints.with_input_types(pa.RecordBatch)
@beam.typehints.with_output_types(list[int])
class ClusterSizesFn(beam.CombineFn):
    """Points per cluster over assigned batches; accumulator: int64 counts of length k."""

    def __init__(self, k: int):
        self.k = k

    def create_accumulator(self):
        return np.zeros(self.k, dtype=np.int64)

    def add_input(self, acc, batch):
        labels = batch.column('cluster').to_numpy()
        acc += np.bincount(labels, minlength=self.k)[:self.k]
        return acc

    def merge_accumulators(self, accs):
        return merge_into_first(accs, np.ndarray.__iadd__)

    def extract_output(self, acc):
        return acc.tolist()
