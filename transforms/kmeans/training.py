"""K-means training on Beam: the unrolled Lloyd iterations and the :class:`KMeans` composite.

The steps themselves are numpy (:mod:`~beamml.transforms.kmeans.lloyd`); this
module wires them into the graph: the DoFns that run them, one composite per
iteration, and :class:`KMeans`, which validates its parameters and builds the
whole training graph.

The graph
---------
``KMeansStats`` -> ``KMeansCheckInput`` (one pass: statistics, sample, checks;
with a cache directory the same pass writes each batch to the cache),
``KMeansCentrePoints`` (each batch centred, with its row hashes), ``KMeansInit``
(seeding, :class:`~beamml.transforms.kmeans.seeding.SeedCenters`),
``KMeansInitialState``, then ``KMeansIteration0 .. KMeansIteration{max_iter-1}``
unrolled, and ``KMeansFinal``. An iteration is one step, ``NearestCentre``: it
merges the previous iteration's ``CentroidCombineFn`` accumulators (a list side
input, one per bundle) with its state (a singleton side input) into the new
centres and the stopping decision (the M-step, computed once per worker; the
first iteration takes the initial state as it is), then runs the E-step on each
batch and adds it into an accumulator of its own. The state it used goes out
through one extra element of the points, a marker (:class:`_IterationFn`), and
is the next iteration's singleton side input. That is the lifted form of
``CombineGlobally(CentroidCombineFn)`` written out: Beam's own adds a keying
step, a shuffle and a merge stage to every iteration, and a separate update
step one more stage. Once stopped, the later iterations pass the state through;
they still read their input, which costs little.
"""
from __future__ import annotations

import contextlib
import math
import sys
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa

from beamml.transforms.distances import DISTANCES, unit_rows
from beamml.transforms.core.errors import ZERO_VECTOR
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.io import points_matrix
from beamml.transforms.kmeans.cache import (drop_cached_points, read_cached_points,
                                            read_cached_weights, write_cached_points)
from beamml.transforms.kmeans.accumulators import PointStats
from beamml.transforms.kmeans.combiners import (CentroidCombineFn, PartialCombineFn,
                                                PointStatsCombineFn, RunsCombineFn, StateMarker,
                                                batch_weights)
from beamml.transforms.kmeans.kernels import EMPTY_CLUSTER, INIT_METHODS, lloyd_labels, row_hashes
from beamml.transforms.kmeans.lloyd import (KMeansRuns, checked_stats, final_result, final_step,
                                            initial_runs, initial_state, lloyd_step, next_state)
from beamml.transforms.kmeans.seeding import SeedCenters, read_initial_centers

#: runs ``n_init='auto'`` gives ``init='random'`` (scikit-learn's); 1 for the others
N_INIT_RANDOM = 10

__all__ = ['N_INIT_RANDOM', 'KMeans', 'PrepareKMeans', 'LloydBlock', 'cached_points', 'centre_into_cache',
           'training_labels', 'recursion_limit_for', 'unit_points']


# ----------------------------------------------------------------------------- Beam: DoFns

def _identity(element):
    return element


def _state_marker(_) -> StateMarker:
    return StateMarker()


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


def _uncentred(stats: PointStats) -> PointStats:
    """The statistics of a cosine training: the points are not centred (mean 0); the
    variance (for the tolerance), sample and distinct points stay those of the unit
    points."""
    out = PointStats(stats.sample_size, stats.max_distinct, stats.seed)
    for name in PointStats.__slots__:   # var (m2 / n) stays about the unit points' mean
        setattr(out, name, getattr(stats, name))
    out.mean = np.zeros_like(stats.mean)
    return out


def _drop_cache(result, paths, raw_paths=()):
    """Delete the cache files once the result exists; the result passes through."""
    drop_cached_points(list(paths) + list(raw_paths))
    return result


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


class _CentreFn(beam.DoFn):
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


class _IterationFn(PartialCombineFn):
    """One pass over the points: the M-step of the previous iteration, then this E-step.

    Side inputs: the state the previous iteration used and its partial
    accumulators (none for the first iteration, which uses the initial
    state). The state of this iteration (:func:`next_state`: merge, new
    centres, stopping test) is computed from them once per DoFn instance (the
    side inputs of a step never change: batch, global window), so an
    iteration is one stage instead of two (a separate update step, with its
    side input, costs one more transform per iteration, about 15 ms on the
    local runner). Each points batch goes through
    ``step(element, state, **kwargs)`` (an accumulator value, or None) into a
    :class:`CentroidCombineFn` accumulator emitted at the end of the bundle
    (main output); the :class:`StateMarker` element emits the state (output
    ``'state'``, one element: the singleton side input of the next iteration).
    """

    def __init__(self, step, combine_fn: CentroidCombineFn, *,
                 update_fn: CentroidCombineFn | None, max_iter: int, empty_cluster: str,
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
            self.state = previous if self.update_fn is None else next_state(
                previous, partials, combine_fn=self.update_fn, max_iter=self.max_iter,
                empty_cluster=self.empty_cluster)
        return self.state

    def process(self, element, previous, partials=None):
        state = self._state(previous, partials)
        if isinstance(element, StateMarker):
            yield beam.pvalue.TaggedOutput('state', state)
            return
        self._add(self.step(element, state, **self.step_kwargs))


# ----------------------------------------------------------------------------- composites

def _sums_fn(n_clusters: int, n_init: int, track_farthest: bool = False):
    """The M-step's combiner: CentroidCombineFn, or one per run (RunsCombineFn)."""
    inner = CentroidCombineFn(n_clusters, track_farthest=track_farthest)
    return inner if n_init == 1 else RunsCombineFn(inner, n_init)


def _iteration_side_inputs(state, partials):
    side = [beam.pvalue.AsSingleton(state)]
    if partials is not None:
        side.append(beam.pvalue.AsList(partials))
    return side


class _LloydIteration(beam.PTransform):
    """One Lloyd iteration: {'points', 'state'[, 'partials']} -> {'state', 'partials'}.

    ``NearestCentre`` (one step, :class:`_IterationFn`) computes the centres of
    this iteration from the previous iteration's state and partial
    accumulators (no ``partials``: ``state`` is used as it is: the initial
    state, or a block's first state), labels each batch against them and adds
    it into a :class:`CentroidCombineFn` accumulator. Its outputs: that state
    (one element) and the partial accumulators, which the next iteration (or
    the block's end) merges.
    """

    def __init__(self, n_clusters: int, max_iter: int, empty_cluster: str, n_init: int = 1):
        super().__init__()
        self.n_clusters, self.max_iter, self.empty_cluster = n_clusters, max_iter, empty_cluster
        self.n_init = n_init

    def expand(self, inputs):
        points, state, partials = inputs['points'], inputs['state'], inputs.get('partials')
        farthest = self.empty_cluster == 'farthest'
        combine_fn = _sums_fn(self.n_clusters, self.n_init, farthest)
        outs = points | 'NearestCentre' >> beam.ParDo(
            _IterationFn(lloyd_step, combine_fn,
                         update_fn=None if partials is None else combine_fn,
                         max_iter=self.max_iter, empty_cluster=self.empty_cluster,
                         exact_distances=farthest),
            *_iteration_side_inputs(state, partials)).with_outputs('state', main='partials')
        return {'state': outs.state, 'partials': outs.partials}


def _final_step_if_stopped(element, state):
    return final_step(element, state) if state.stopped else None


def _result_if_stopped(state, partials, combine_fn):
    if state.stopped:
        yield final_result(state, partials, combine_fn=combine_fn)


class LloydBlock(beam.PTransform):
    """``iterations`` Lloyd iterations, then the result if they stopped.

    ``{'points': centred points (cache paths) and one StateMarker, 'state': one
    KMeansState}`` -> ``{'state': the state after the block's last M-step (the
    state the next block starts from, ``n_iter`` advanced by the iterations run),
    'result': one KMeansResult when the training stopped in this block (the
    final E-step against the final centres), else nothing}``.

    :class:`KMeans` is one block of ``max_iter`` iterations; ``beamml kmeans``
    runs blocks of ``--block_size`` as separate pipelines, checkpointing the
    state between them. The block's start state is used as it is (its M-step
    was done at the end of the block before), so a run split into blocks
    computes exactly what one long block computes. Once stopped, the remaining
    iterations and the final pass read no point (their input is cache paths).
    """

    def __init__(self, n_clusters: int, iterations: int, max_iter: int, empty_cluster: str,
                 label: str | None = None, *, n_init: int = 1):
        super().__init__(label)
        self.n_clusters, self.iterations = n_clusters, iterations
        self.max_iter, self.empty_cluster = max_iter, empty_cluster
        self.n_init = n_init

    def expand(self, inputs):
        points, state = inputs['points'], inputs['state']
        k = self.n_clusters
        step = {'state': state}  # no 'partials': the block's state is used as it is
        for i in range(self.iterations):
            step = {'points': points, **step} | f'KMeansIteration{i}' >> \
                _LloydIteration(k, self.max_iter, self.empty_cluster, self.n_init)
        update_fn = _sums_fn(k, self.n_init, self.empty_cluster == 'farthest')
        end = step['state'] | 'KMeansBlockEnd' >> beam.Map(
            next_state, beam.pvalue.AsList(step['partials']), combine_fn=update_fn,
            max_iter=self.max_iter, empty_cluster=self.empty_cluster)
        combine_fn = _sums_fn(k, self.n_init)
        final = points | 'KMeansFinal' >> beam.ParDo(
            PartialCombineFn(_final_step_if_stopped, combine_fn), beam.pvalue.AsSingleton(end))
        result = end | 'KMeansResult' >> beam.FlatMap(
            _result_if_stopped, beam.pvalue.AsList(final), combine_fn=combine_fn)
        return {'state': end, 'result': result}


# ----------------------------------------------------------------------------- KMeans

def _is_count(v) -> bool:
    return isinstance(v, (int, np.integer)) and v >= 1


#: KMeans's scalar parameters: (accepts the value, what it must be), checked in this order.
_CONSTRAINTS = {
    'n_clusters': (_is_count, 'an integer >= 1'),
    'max_iter': (_is_count, 'an integer >= 1'),
    'tol': (lambda v: isinstance(v, (int, float)) and math.isfinite(v) and v >= 0,
            'a number >= 0'),
    'empty_cluster': (lambda v: v in EMPTY_CLUSTER, f'one of {", ".join(EMPTY_CLUSTER)}'),
    'init_sample_size': (lambda v: v >= 1, '>= 1'),
    'init_steps': (lambda v: v >= 1, '>= 1'),
    'oversampling_factor': (lambda v: v > 0, '> 0'),
    'n_init': (lambda v: v == 'auto' or _is_count(v), "'auto' or an integer >= 1"),
}


def _check_parameters(**values) -> None:
    """Raise a BeammlError naming the first parameter that breaks :data:`_CONSTRAINTS`."""
    for name, (accepts, requirement) in _CONSTRAINTS.items():
        value = values[name]
        if not accepts(value):
            raise BeammlError(f'{name} must be {requirement}, got {value!r}',
                              parameters=(name,))


def _check_init(init: Any, n_clusters: int) -> str | np.ndarray:
    """A method name, or the initial centres as a (k, d) float array (a path is read)."""
    if isinstance(init, str):
        if init in INIT_METHODS:
            return init
        return read_initial_centers(init, n_clusters=n_clusters)
    init = np.array(init, dtype=np.float64)
    if init.ndim != 2 or init.shape[0] != n_clusters:
        raise BeammlError(f'init must be an array of shape (k={n_clusters}, d), '
                          f'got shape {init.shape}', parameters=('init',))
    if not np.isfinite(init).all():
        raise BeammlError('init contains NaN or infinite values', parameters=('init',))
    return init


class KMeans(beam.PTransform):
    """Train K-means on a PCollection of points batches; outputs one ``KMeansResult``.

    (:class:`~beamml.transforms.kmeans.lloyd.KMeansResult`.)

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
        stop costs only its stage's overhead, but ask for what you need). The
        local runner walks that chain of stages recursively before it runs
        it, one Python frame per iteration: from a little under ``max_iter=1000``
        Python's default recursion limit (1000) is too low, so run such a
        pipeline inside ``with recursion_limit_for(max_iter):``
        (:func:`recursion_limit_for`; ``beamml kmeans`` does). Building the
        graph changes no process state.
    tol : float, default 1e-4
        Relative tolerance, as scikit-learn's.
    init : {'k-means++', 'k-means||', 'random'}, ndarray of shape (k, d), or a path
        A path is read with :func:`~beamml.transforms.kmeans.seeding.read_initial_centers`.
    random_state : int, optional
        Seeds every random choice; drawn once (and reported) when None.
    empty_cluster : {'keep', 'farthest'}, default 'keep'
        See :mod:`beamml.transforms.kmeans.kernels` (empty clusters).
    init_sample_size : int, default 10000
        Points sampled for 'k-means++' and 'random'.
    init_steps : int, default 5
        Rounds of 'k-means||'.
    oversampling_factor : float, default 2.0
        'k-means||' samples about ``oversampling_factor * k`` points per round.
    n_init : int or 'auto', default 'auto'
        Seedings trained side by side, the run of lowest final inertia kept
        (scikit-learn's ``n_init``; 'auto' is 10 for ``init='random'``, else 1).
        Run ``r`` is seeded with ``random_state + r`` on the same sample (run 0
        is the ``n_init=1`` training). The runs share every pass over the
        points: one product per chunk against all the runs' centres
        (:func:`~beamml.transforms.kmeans.kernels.lloyd_pass_runs`), each run
        stopping by its own rule (a run that stopped drops out of the
        products); the training stops when the last run does. k-means|| runs
        its ``init_steps`` rounds once per run. Given initial centres are one
        run (``n_init > 1`` is refused). The result records every run
        (``KMeansResult.inits``).
    cache_dir : str, optional
        Where to keep the centred points between iterations (local or gs://).
        By default they travel through Beam (materialised by the runner and
        sent to every iteration). With a directory, ``KMeansStats`` writes each
        batch there as it reads it (so the batches never go from one stage to
        another), ``KMeansCentrePoints`` writes its centred copy as ``.npy``
        files, the iterations read those (memory-mapped when local, and kept
        mapped in the process) and ``KMeansDropCache`` deletes the files at the
        end (give each KMeans a directory of its own). The local runner's data
        plane copies a stage's whole input several times, which the cache saves.
    dtype : {'float64', 'float32'}, default 'float64'
        What the centred points are kept and the E-step computed in; sums,
        centres and inertia stay float64. float32 halves the bytes per
        iteration; on 1M blobs (d=8, k=16, 10 iterations) the centres moved by
        at most 2.3e-10 relative and no label changed.
    distance : {'euclidean', 'cosine'}, default 'euclidean'
        ``'cosine'`` is Spark MLlib's ``CosineDistanceMeasure``: distance
        ``1 - x.c / (||x|| ||c||)``; the points are scaled to unit norm (not
        centred: ``KMeansNormalise`` before ``KMeansStats``; a zero vector is a
        BeammlError, so read with ``ReadPoints(..., refuse_zero=True)``), the
        initial centres too (k-means++, k-means|| and random seeding run on the
        unit points; given centres are normalised); the E-step is the Euclidean
        one on unit vectors (which orders centres as the cosine distance does);
        a centre is the normalised mean (= normalised sum) of its unit points;
        the inertia is the sum of ``1 - cos``; the stopping rule is unchanged
        (see :mod:`~beamml.transforms.kmeans.lloyd`). Both ``empty_cluster``
        policies apply ('farthest': the largest ``1 - cos``).

    Raises
    ------
    BeammlError
        A parameter out of range; the message names it (``parameters``).
    """

    def __init__(self, n_clusters: int, max_iter: int = 300, tol: float = 1e-4,
                 init: Any = 'k-means++', random_state: int | None = None,
                 empty_cluster: str = 'keep', init_sample_size: int = 10_000,
                 init_steps: int = 5, oversampling_factor: float = 2.0, *,
                 n_init: int | str = 'auto', cache_dir: str | None = None,
                 dtype: str = 'float64', distance: str = 'euclidean', label: str | None = None):
        super().__init__(label)
        if distance not in DISTANCES:
            raise BeammlError(f'distance must be one of {", ".join(DISTANCES)}, got '
                              f'{distance!r}', parameters=('distance',))
        if np.dtype(dtype) not in (np.float64, np.float32):
            raise BeammlError(f'dtype must be float64 or float32, got {dtype!r}',
                              parameters=('dtype',))
        _check_parameters(n_clusters=n_clusters, max_iter=max_iter, tol=tol,
                          empty_cluster=empty_cluster, init_sample_size=init_sample_size,
                          init_steps=init_steps, oversampling_factor=oversampling_factor,
                          n_init=n_init)
        init = _check_init(init, int(n_clusters))
        if n_init == 'auto':   # scikit-learn's: 10 runs for 'random', else 1
            n_init = N_INIT_RANDOM if isinstance(init, str) and init == 'random' else 1
        if isinstance(init, np.ndarray) and n_init > 1:
            raise BeammlError(f'n_init={n_init} needs a seeding method: given initial centres '
                              'are one run (scikit-learn warns and runs it once)',
                              parameters=('n_init',))
        if distance == 'cosine' and isinstance(init, np.ndarray) and unit_rows(init)[1].any():
            raise BeammlError(f'initial centre {int(np.flatnonzero(unit_rows(init)[1])[0])} is '
                              f'a zero vector ({ZERO_VECTOR})', parameters=('init',))
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
        self.dtype = np.dtype(dtype).name
        self.distance = distance
        self.n_init = int(n_init)

    @property
    def init_name(self) -> str:
        return 'array' if isinstance(self.init, np.ndarray) else self.init

    def _stats_pass(self, batches, stats_fn: PointStatsCombineFn):
        """(partial statistics, the batches or the paths of their raw cache files)."""
        if self.cache_dir is None:
            partial_stats = batches | 'KMeansStats' >> beam.ParDo(
                PartialCombineFn(_identity, stats_fn))
            return partial_stats, batches
        # the statistics pass also writes the batches to the cache
        outs = batches | 'KMeansStats' >> beam.ParDo(
            _StatsAndCacheFn(stats_fn, self.cache_dir)).with_outputs('raw', main='stats')
        return outs.stats, outs.raw

    def expand(self, batches):
        prepared = batches | 'KMeansPrepare' >> self.prepare()
        block = prepared | 'KMeansLloyd' >> self.block(self.max_iter)
        result = block['result']
        if self.cache_dir is not None:
            result = result | 'KMeansDropCache' >> beam.Map(
                _drop_cache, beam.pvalue.AsList(prepared['centred']),
                beam.pvalue.AsList(prepared['raw']))
        return result

    def prepare(self) -> 'PrepareKMeans':
        """The steps before the iterations, as a transform of their own (see
        :class:`PrepareKMeans`)."""
        return PrepareKMeans(self)

    def block(self, iterations: int) -> LloydBlock:
        """A :class:`LloydBlock` of ``iterations`` iterations of this training."""
        return LloydBlock(self.n_clusters, iterations, self.max_iter, self.empty_cluster,
                          n_init=self.n_init)


class PrepareKMeans(beam.PTransform):
    """Batches -> what the iterations need: ``{'points', 'state', 'stats', 'centred', 'raw'}``.

    ``KMeansStats`` and ``KMeansCheckInput`` (statistics, sample, checks; with a
    cache directory the same pass writes each batch to the cache),
    ``KMeansCentrePoints`` (each batch centred: the cache paths, or the centred
    arrays), a :class:`StateMarker`, ``KMeansInit`` (seeding) and
    ``KMeansInitialState``. ``points`` is the centred points plus the marker
    (the input of :class:`LloydBlock`), ``state`` the initial state, ``centred``
    and ``raw`` the cache paths (for dropping the cache).
    """

    def __init__(self, kmeans: KMeans):
        super().__init__()
        self.kmeans = kmeans

    def expand(self, batches):
        km = self.kmeans
        k = km.n_clusters
        sample_size = 0 if isinstance(km.init, np.ndarray) else km.init_sample_size
        if km.init_name == 'k-means||':
            sample_size = 1
        stats_fn = PointStatsCombineFn(sample_size, k, km.random_state)
        if km.distance == 'cosine':   # unit points from here on: statistics, cache, seeding
            batches = batches | 'KMeansNormalise' >> beam.Map(unit_points)
        partial_stats, raw = km._stats_pass(batches, stats_fn)
        stats = (batches.pipeline
                 | 'KMeansStatsOnce' >> beam.Create([None])
                 | 'KMeansCheckInput' >> beam.Map(
                     checked_stats, beam.pvalue.AsList(partial_stats), combine_fn=stats_fn,
                     n_clusters=k, centres_given=isinstance(km.init, np.ndarray)))
        if km.distance == 'cosine':
            stats = stats | 'KMeansUncentred' >> beam.Map(_uncentred)
        stats_si = beam.pvalue.AsSingleton(stats)
        centred = raw | 'KMeansCentrePoints' >> beam.ParDo(_CentreFn(km.cache_dir, km.dtype),
                                                           stats_si)
        # one more element, where each iteration emits its state (see _IterationFn)
        marker = stats | 'KMeansStateMarker' >> beam.Map(_state_marker)
        points = (centred, marker) | 'KMeansPoints' >> beam.Flatten()
        seeds = [km.random_state + r for r in range(km.n_init)]
        inits = [{'stats': stats, 'points': points}
                 | ('KMeansInit' if r == 0 else f'KMeansInit{r}') >> SeedCenters(
                     km.init, k, seed, km.init_steps, km.oversampling_factor)
                 for r, seed in enumerate(seeds)]
        if km.n_init == 1:
            state = inits[0] | 'KMeansInitialState' >> beam.Map(
                initial_state, stats_si, n_clusters=k, tol=km.tol, distance=km.distance)
        else:   # the runs' seedings, each a singleton, into one state
            state = stats | 'KMeansInitialState' >> beam.Map(
                _initial_runs, stats_si, *[beam.pvalue.AsSingleton(c) for c in inits],
                seeds=seeds, n_clusters=k, tol=km.tol, distance=km.distance)
        return {'points': points, 'state': state, 'stats': stats, 'centred': centred,
                'raw': raw}


def _initial_runs(_, stats, *centers, seeds, n_clusters, tol, distance) -> KMeansRuns:
    return initial_runs(centers, stats, seeds=seeds, n_clusters=n_clusters, tol=tol,
                        distance=distance)


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
        return batches | 'Centre' >> beam.ParDo(_CentreFn(self.cache_dir, self.dtype),
                                                _Mean(self.mean))


def centre_into_cache(cache_dir: str, mean, dtype: str = 'float64',
                      distance: str = 'euclidean') -> beam.PTransform:
    """Points batches -> the paths of their centred cache files (``X - mean``; cosine:
    the unit points, mean 0): the files :class:`PrepareKMeans` writes for the same
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


def cached_points(pipeline, paths, label: str = 'KMeansCachedPoints'):
    """The input of a later :class:`LloydBlock`: the cache ``paths`` (a checkpoint's
    manifest) and one :class:`StateMarker`."""
    return ((pipeline | f'{label}Paths' >> beam.Create(sorted(paths)),
             pipeline | f'{label}Marker' >> beam.Create([None])
             | f'{label}ToMarker' >> beam.Map(_state_marker))
            | label >> beam.Flatten())


@contextlib.contextmanager
def recursion_limit_for(max_iter: int):
    """Within the block, a recursion limit high enough to run a KMeans of ``max_iter`` iterations.

    Before it runs a pipeline, the local runner (``FnApiRunner``, what
    ``DirectRunner`` means for a batch pipeline) annotates each stage with the
    side inputs downstream of it by a recursive walk over the stages
    (``annotate_downstream_side_inputs`` in Beam's
    ``runners/portability/fn_api_runner/translations.py``): one Python frame
    per stage of the longest chain, and :class:`KMeans`'s unrolled iterations
    are a chain of ``max_iter`` stages (measured: about ``max_iter + 20``
    frames below the caller's). The limit is raised to at least
    ``1000 + 2 * max_iter`` inside the block (never lowered) and put back when
    the block ends, however it ends. Dataflow's translation does not recurse
    over the chain. Use it around building and running::

        with recursion_limit_for(max_iter):
            with beam.Pipeline() as p:
                p | ... | KMeans(k, max_iter=max_iter)
    """
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 1000 + 2 * max_iter))
    try:
        yield
    finally:
        sys.setrecursionlimit(old)
