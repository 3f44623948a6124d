"""The points of a K-means training on Beam: unit points, the statistics pass, centring.

Before the iterations (:class:`~beamml.transforms.kmeans.training.PrepareKMeans`)
each batch goes once through the statistics pass (:func:`stats_pass`: count,
mean, variance, sample, distinct points; with a cache directory the same pass
writes the batch to the cache) and is centred (:class:`CentreFn`: ``X - mean``
with its row hashes, or the path of the cache file holding them). A cosine
training first scales the points to unit norm (:func:`unit_points`) and does
not centre them (:func:`uncentred`). :func:`centre_into_cache` centres the points
again for a resumed training; :func:`training_labels` labels them against the
final state.
"""
from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow as pa

from beamml.transforms.core.errors import ZERO_VECTOR, BeammlError
from beamml.transforms.distances import unit_rows
from beamml.transforms.io import points_matrix
from beamml.transforms.kmeans.accumulators import PointStats
from beamml.transforms.kmeans.cache import (read_cached_points, read_cached_weights,
                                            write_cached_points)
from beamml.transforms.kmeans.combiners import (PartialCombineFn, PointStatsCombineFn,
                                                batch_weights)
from beamml.transforms.kmeans.kernels import lloyd_labels, row_hashes

__all__ = ['unit_points', 'uncentred', 'stats_pass', 'CentreFn', 'centre_into_cache',
           'training_labels']


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


class _StatsAndCacheFn(PartialCombineFn):
    """The statistics pass that also writes each batch (raw) to the cache.

    Main output: the bundle's :class:`PointStatsCombineFn` accumulator; output
    ``'raw'``: the path of each batch's raw cache file. The batches then never
    travel between stages (on the local runner, handing a stage 1M x 8 points
    as RecordBatches costs about 0.3 s), and each batch is hashed once.
    """

    def __init__(self, combine_fn: PointStatsCombineFn, cache_dir: str):
        super().__init__(_identity, combine_fn)
        self.cache_dir = cache_dir

    def process(self, element):
        X = points_matrix(element)
        if not X.shape[0]:
            return
        hashes = row_hashes(X)
        weights = batch_weights(element)
        if self.acc is None:
            self.acc = self.combine_fn.create_accumulator()
        self.acc = self.combine_fn.add_points(self.acc, X, hashes, weights)
        yield beam.pvalue.TaggedOutput(
            'raw', write_cached_points(self.cache_dir, X, hashes, prefix='raw',
                                       weights=weights))


class CentreFn(beam.DoFn):
    """Points batch -> (X - mean, row hashes[, weights]), or the path of a cache file
    holding them.

    With a cache the input is the path of a raw cache file (:class:`_StatsAndCacheFn`).
    A weighted batch (a ``weight`` column) keeps its weights beside the points.
    """

    def __init__(self, cache_dir: str | None, dtype: str = 'float64'):
        self.cache_dir, self.dtype = cache_dir, np.dtype(dtype)

    def process(self, batch, stats):
        if isinstance(batch, str):
            X, hashes = read_cached_points(batch)
            weights = read_cached_weights(batch)
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


def stats_pass(batches, stats_fn: PointStatsCombineFn, cache_dir: str | None):
    """(partial statistics, the batches or the paths of their raw cache files): the
    ``KMeansStats`` step, one ``stats_fn`` accumulator per bundle; with ``cache_dir``
    the same pass writes each batch (raw) to the cache (:class:`_StatsAndCacheFn`)."""
    if cache_dir is None:
        partial_stats = batches | 'KMeansStats' >> beam.ParDo(
            PartialCombineFn(_identity, stats_fn))
        return partial_stats, batches
    # the statistics pass also writes the batches to the cache
    outs = batches | 'KMeansStats' >> beam.ParDo(
        _StatsAndCacheFn(stats_fn, cache_dir)).with_outputs('raw', main='stats')
    return outs.stats, outs.raw


# ----------------------------------------------------------------------------- later passes

class _Mean:
    """Stands in for the statistics when the points are centred again (a resumed training)."""

    def __init__(self, mean):
        self.mean = np.asarray(mean, dtype=np.float64)


class _CentreIntoCache(beam.PTransform):
    def __init__(self, cache_dir: str, mean, dtype: str, distance: str):
        super().__init__()
        self.cache_dir, self.mean, self.dtype, self.distance = cache_dir, mean, dtype, distance

    def expand(self, batches):
        if self.distance == 'cosine':
            batches = batches | 'KMeansNormalise' >> beam.Map(unit_points)
        return batches | 'Centre' >> beam.ParDo(CentreFn(self.cache_dir, self.dtype),
                                                _Mean(self.mean))


def centre_into_cache(cache_dir: str, mean, dtype: str = 'float64',
                      distance: str = 'euclidean') -> beam.PTransform:
    """Points batches -> the paths of their centred cache files (``X - mean``; cosine:
    the unit points, mean 0): the files
    :class:`~beamml.transforms.kmeans.training.PrepareKMeans` writes for the same
    batches, mean, dtype and distance."""
    return _CentreIntoCache(cache_dir, mean, dtype, distance)


def training_labels(batch, state, version: str | None = None):
    """A points batch -> ``id, cluster, distance, model_version`` against the final state:
    the labels of the final E-step (scikit-learn's ``labels_``: the Lloyd kernel on the
    centred points) and the direct Euclidean distance to that centre (cosine: the unit
    points, and the cosine distance ``1 - cos = ||x - c||^2 / 2`` on unit vectors)."""
    if state.distance == 'cosine':
        X = unit_points(points_matrix(batch))
    else:
        X = points_matrix(batch) - state.mean
    labels = lloyd_labels(X, state.centers, state.centers_sq, return_distances=False)
    diff = X - state.centers[labels]
    dist = np.einsum('ij,ij->i', diff, diff)
    dist = dist / 2 if state.distance == 'cosine' else np.sqrt(dist)
    n = len(labels)
    return pa.RecordBatch.from_arrays(
        [batch.column('id'), pa.array(labels, pa.int64()), pa.array(dist, pa.float64()),
         pa.repeat(pa.scalar(version, pa.string()), n) if version else pa.nulls(n, pa.string())],
        names=['id', 'cluster', 'distance', 'model_version'])
