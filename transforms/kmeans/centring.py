"""The points of a K-means training on Beam: unit points, the statistics pass, centring.

Before the iterations (:class:`~beamml.transforms.kmeans.training.PrepareKMeans`)
each batch goes once through the statistics pass (:func:`stats_pass`: count,
mean, variance, sample, distinct points; with a cache directory the same pass
writes the batch to the cache) and is centred (:class:`CentreFn`: ``X - mean``
with its row hashes, or the path of the cache file holding them). A cosine
training first scales the points to unit norm (:func:`unit_points`) and does
not centre them (:func:`uncentred`). :func:`cache_again` writes the cache again
for a resumed training; :func:`training_labels` and :func:`labels_batch` label the
points against the final state.
"""
from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow as pa

from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from beamml.transforms.core.errors import ZERO_VECTOR, BeammlError
from beamml.transforms.distances import unit_rows
from beamml.transforms.io import points_matrix
from beamml.transforms.kmeans.accumulators import PointStats
from beamml.transforms.kmeans.cache import (read_cached_points, read_cached_weights,
                                            write_cached_points)
from beamml.transforms.kmeans.combiners import (PartialCombineFn, PointStatsCombineFn,
                                                batch_weights)
from beamml.transforms.kmeans.kernels import lloyd_labels, row_hashes
from beamml.transforms.norms import row_norms

__all__ = ['unit_points', 'uncentred', 'stats_pass', 'CentreFn', 'cache_again',
           'training_labels', 'labels_batch', 'merge_ranges', 'cache_again']


# ----------------------------------------------------------------------------- points

def _identity(element):
    return element


def unit_points(batch):
    """A points batch (RecordBatch or (n, d) array) -> the same with its rows scaled to
    unit norm (the input of a cosine training; a RecordBatch keeps its other columns,
    such as the sample weights). A zero vector is a BeammlError: it should have
    been refused where its file and row are known (``ReadPoints(..., refuse_zero=True)``,
    which ``beamml kmeans --distance cosine`` uses)."""
    X, zero = unit_rows(points_matrix(batch))
    if zero.any():
        raise BeammlError(f'{int(zero.sum())} point(s) given to KMeans(distance=\'cosine\') '
                          f'are zero vectors ({ZERO_VECTOR}); read the input with '
                          'ReadPoints(..., refuse_zero=True) to refuse them as dead letters')
    if isinstance(batch, pa.Table):
        batch = batch.combine_chunks().to_batches()[0] if batch.num_rows else None
    if not isinstance(batch, pa.RecordBatch):
        return X
    # a RecordBatch keeps its other columns (the sample weights)
    features = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), X.shape[1])
    names = batch.schema.names
    return pa.RecordBatch.from_arrays(
        [features if name == 'features' else batch.column(name) for name in names], names=names)


def uncentred(stats: PointStats) -> PointStats:
    """The statistics of a cosine training: the points are not centred (mean 0); the
    variance (for the tolerance), sample and distinct points stay those of the unit
    points."""
    out = PointStats(stats.sample_size, stats.max_distinct, stats.seed)
    for name in PointStats.__slots__:   # var (m2 / n) stays about the unit points' mean
        setattr(out, name, getattr(stats, name))
    out.mean = np.zeros_like(stats.mean)
    return out


def _batch_ids(element):
    """The ``id`` column of a points RecordBatch (None: an array, or no such column)."""
    if isinstance(element, pa.RecordBatch) and 'id' in element.schema.names:
        return element.column('id')
    return None


def column_ranges(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) of each feature of X and of its rows' L2 norms (d + 1 values each):
    what a baseline's histogram edges are made from (``monitor_columns``' columns)."""
    norms = row_norms(X, 'l2')
    return (np.append(X.min(axis=0), norms.min()), np.append(X.max(axis=0), norms.max()))


def merge_ranges(parts) -> dict | None:
    """The (min, max) pairs of :func:`column_ranges` over many batches (None: none)."""
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    return {'min': np.min([p[0] for p in parts], axis=0).tolist(),
            'max': np.max([p[1] for p in parts], axis=0).tolist()}


class _StatsAndCacheFn(PartialCombineFn):
    """The statistics pass that also writes each batch (raw) to the cache.

    Main output: the bundle's :class:`PointStatsCombineFn` accumulator; output
    ``'raw'``: the path of each batch's raw cache file. The batches then never
    travel between stages (on the local runner, handing a stage 1M x 8 points
    as RecordBatches costs about 0.3 s), and each batch is hashed once.

    The raw file holds the points as read (and their row hashes): with
    ``normalise`` (a cosine training) the statistics are those of the unit points,
    computed here, while the file keeps the points as they came (its name then
    comes from their own hashes), so a later pass can compute on them exactly.
    With ``keep_ids`` the batch's ids are written beside them; with ``ranges`` the
    bundle's :func:`column_ranges` go out on output ``'ranges'`` (one per bundle).
    """

    def __init__(self, combine_fn: PointStatsCombineFn, cache_dir: str, *,
                 normalise: bool = False, keep_ids: bool = False, ranges: bool = False):
        super().__init__(_identity, combine_fn)
        self.cache_dir = cache_dir
        self.normalise, self.keep_ids, self.ranges = normalise, keep_ids, ranges
        self.range_parts = None

    def start_bundle(self):
        super().start_bundle()
        self.range_parts = []

    def process(self, element):
        raw = points_matrix(element)
        if not raw.shape[0]:
            return
        X = unit_points(raw) if self.normalise else raw
        hashes = row_hashes(X)
        weights = batch_weights(element)
        if self.acc is None:
            self.acc = self.combine_fn.create_accumulator()
        self.acc = self.combine_fn.add_points(self.acc, X, hashes, weights)
        if self.ranges:
            self.range_parts.append(column_ranges(raw))
        yield beam.pvalue.TaggedOutput('raw', write_cached_points(
            self.cache_dir, raw, row_hashes(raw) if self.normalise else hashes, prefix='raw',
            weights=weights, ids=_batch_ids(element) if self.keep_ids else None))

    def finish_bundle(self):
        yield from super().finish_bundle()
        if self.range_parts:
            lo = np.min([p[0] for p in self.range_parts], axis=0)
            hi = np.max([p[1] for p in self.range_parts], axis=0)
            yield beam.pvalue.TaggedOutput('ranges', WindowedValue(
                (lo, hi), GlobalWindow().max_timestamp(), [GlobalWindow()]))
        self.range_parts = []


class CentreFn(beam.DoFn):
    """Points batch -> (X - mean, row hashes[, weights]), or the path of a cache file
    holding them.

    With a cache the input is the path of a raw cache file (:class:`_StatsAndCacheFn`);
    with ``normalise`` (cosine) it holds the points as read, which are scaled to unit
    norm here, as :func:`unit_points` does, and hashed again.
    A weighted batch (a ``weight`` column) keeps its weights beside the points.
    """

    def __init__(self, cache_dir: str | None, dtype: str = 'float64', normalise: bool = False):
        self.cache_dir, self.dtype = cache_dir, np.dtype(dtype)
        self.normalise = normalise

    def process(self, batch, stats):
        if isinstance(batch, str):
            X, hashes = read_cached_points(batch)
            weights = read_cached_weights(batch)
            if self.normalise and X.shape[0]:
                X = unit_points(np.asarray(X))
                hashes = row_hashes(X)
        else:
            X = points_matrix(batch)
            hashes = row_hashes(X) if X.shape[0] else None
            weights = batch_weights(batch)
        if X.shape[0]:
            Xc = X - stats.mean   # centred in float64, then stored as dtype
            if self.cache_dir is None:
                Xc = Xc.astype(self.dtype, copy=False)
                yield (Xc, hashes) if weights is None else (Xc, hashes, np.array(weights))
            else:
                yield write_cached_points(self.cache_dir, Xc, hashes, dtype=self.dtype,
                                          weights=weights)


def stats_pass(batches, stats_fn: PointStatsCombineFn, cache_dir: str | None, *,
               normalise: bool = False, keep_ids: bool = False, ranges: bool = False):
    """(partial statistics, the batches or the paths of their raw cache files, the
    partial :func:`column_ranges` or None): the ``KMeansStats`` step, one ``stats_fn``
    accumulator per bundle; with ``cache_dir`` the same pass writes each batch (raw,
    as read) to the cache (:class:`_StatsAndCacheFn`, which also takes ``normalise``,
    ``keep_ids`` and ``ranges``)."""
    if cache_dir is None:
        partial_stats = batches | 'KMeansStats' >> beam.ParDo(
            PartialCombineFn(_identity, stats_fn))
        return partial_stats, batches, None
    # the statistics pass also writes the batches to the cache
    outs = batches | 'KMeansStats' >> beam.ParDo(_StatsAndCacheFn(
        stats_fn, cache_dir, normalise=normalise, keep_ids=keep_ids, ranges=ranges)
    ).with_outputs('raw', 'ranges', main='stats')
    return outs.stats, outs.raw, (outs.ranges if ranges else None)


# ----------------------------------------------------------------------------- later passes

class _Mean:
    """Stands in for the statistics when the points are centred again (a resumed training)."""

    def __init__(self, mean):
        self.mean = np.asarray(mean, dtype=np.float64)


class _CacheAgainFn(beam.DoFn):
    """Points batch -> the paths of its raw and centred cache files (output ``'ranges'``:
    its :func:`column_ranges`)."""

    def __init__(self, cache_dir: str, mean, dtype: str, distance: str, keep_ids: bool):
        self.cache_dir, self.mean, self.dtype = cache_dir, _Mean(mean), dtype
        self.normalise, self.keep_ids = distance == 'cosine', keep_ids
        self.centre = CentreFn(cache_dir, dtype, normalise=self.normalise)

    def process(self, batch):
        raw = points_matrix(batch)
        if not raw.shape[0]:
            return
        hashes = row_hashes(raw)
        path = write_cached_points(self.cache_dir, raw, hashes, prefix='raw',
                                   weights=batch_weights(batch),
                                   ids=_batch_ids(batch) if self.keep_ids else None)
        yield path
        yield from self.centre.process(path, self.mean)
        yield beam.pvalue.TaggedOutput('ranges', column_ranges(raw))


def cache_again(cache_dir: str, mean, dtype: str = 'float64', distance: str = 'euclidean',
                keep_ids: bool = False) -> beam.PTransform:
    """Points batches -> the paths of their raw and centred cache files, with output
    ``'ranges'`` (:func:`column_ranges` per batch): the files
    :class:`~beamml.transforms.kmeans.training.PrepareKMeans` writes for the same
    batches, mean, dtype and distance (a resumed training whose cache was lost)."""
    return beam.ParDo(_CacheAgainFn(cache_dir, mean, dtype, distance, keep_ids)
                      ).with_outputs('ranges', main='paths')


def training_labels(batch, state, version: str | None = None):
    """A points batch -> ``id, cluster, distance, model_version`` against the final state
    (:func:`labels_batch` of its ids and points)."""
    return labels_batch(batch.column('id'), points_matrix(batch), state, version)


def labels_batch(ids, X: np.ndarray, state, version: str | None = None) -> pa.RecordBatch:
    """``id, cluster, distance, model_version`` of the points X (as read) against the final
    state: the labels of the final E-step (scikit-learn's ``labels_``: the Lloyd kernel on
    the centred points, in float64) and the direct Euclidean distance to that centre
    (cosine: the unit points, and the cosine distance ``1 - cos = ||x - c||^2 / 2`` on
    unit vectors)."""
    if state.distance == 'cosine':
        X = unit_points(X)
    else:
        X = X - state.mean
    labels = lloyd_labels(X, state.centers, state.centers_sq, return_distances=False)
    diff = X - state.centers[labels]
    dist = np.einsum('ij,ij->i', diff, diff)
    dist = dist / 2 if state.distance == 'cosine' else np.sqrt(dist)
    n = len(labels)
    return pa.RecordBatch.from_arrays(
        [ids, pa.array(labels, pa.int64()), pa.array(dist, pa.float64()),
         pa.repeat(pa.scalar(version, pa.string()), n) if version else pa.nulls(n, pa.string())],
        names=['id', 'cluster', 'distance', 'model_version'])
