"""K-means training on Beam: the :class:`KMeans` composite.

The steps themselves are numpy (:mod:`~beamml.transforms.kmeans.lloyd`); the
points' preparation (statistics, centring, the cache) is
:mod:`~beamml.transforms.kmeans.centring`, the unrolled iterations
:mod:`~beamml.transforms.kmeans.iterations`. This module holds :class:`KMeans`,
which validates its parameters and builds the whole training graph.

The graph
---------
``KMeansStats`` -> ``KMeansCheckInput`` (one pass: statistics, sample, checks;
with a cache directory the same pass writes each batch to the cache),
``KMeansCentrePoints`` (each batch centred, with its row hashes), ``KMeansInit``
(seeding, :class:`~beamml.transforms.kmeans.seeding.SeedCenters`),
``KMeansInitialState``, then ``KMeansIteration0 .. KMeansIteration{max_iter-1}``
unrolled (:class:`~beamml.transforms.kmeans.iterations.LloydBlock`), and
``KMeansFinal``.
"""
from __future__ import annotations

import contextlib
import math
import sys
from typing import Any

import apache_beam as beam
import numpy as np

from beamml.transforms.core.errors import ZERO_VECTOR, BeammlError
from beamml.transforms.distances import DISTANCES, unit_rows
from beamml.transforms.kmeans.cache import drop_cached_points
from beamml.transforms.kmeans.centring import CentreFn, stats_pass, uncentred, unit_points
from beamml.transforms.kmeans.combiners import PointStatsCombineFn
from beamml.transforms.kmeans.iterations import LloydBlock, state_marker
from beamml.transforms.kmeans.kernels import EMPTY_CLUSTER, INIT_METHODS
from beamml.transforms.kmeans.lloyd import (KMeansRuns, checked_stats, initial_runs,
                                            initial_state)
from beamml.transforms.kmeans.seeding import SeedCenters, read_initial_centers

#: runs ``n_init='auto'`` gives ``init='random'`` (scikit-learn's); 1 for the others
N_INIT_RANDOM = 10

__all__ = ['N_INIT_RANDOM', 'KMeans', 'PrepareKMeans', 'recursion_limit_for']


def _drop_cache(result, paths, raw_paths=()):
    """Delete the cache files once the result exists; the result passes through."""
    drop_cached_points(list(paths) + list(raw_paths))
    return result


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

    def expand(self, batches):
        prepared = batches | 'KMeansPrepare' >> self.prepare()
        block = prepared | 'KMeansLloyd' >> self.block(self.max_iter)
        result = block['result']
        if self.cache_dir is not None:
            result = result | 'KMeansDropCache' >> beam.Map(
                _drop_cache, beam.pvalue.AsList(prepared['centred']),
                beam.pvalue.AsList(prepared['raw']))
        return result

    def prepare(self, *, keep_ids: bool = False, ranges: bool = False) -> 'PrepareKMeans':
        """The steps before the iterations, as a transform of their own (see
        :class:`PrepareKMeans`)."""
        return PrepareKMeans(self, keep_ids=keep_ids, ranges=ranges)

    def block(self, iterations: int, *, final: bool = True) -> LloydBlock:
        """A :class:`LloydBlock` of ``iterations`` iterations of this training (``final``:
        with its final E-step once stopped, see :class:`LloydBlock`)."""
        return LloydBlock(self.n_clusters, iterations, self.max_iter, self.empty_cluster,
                          n_init=self.n_init, final=final)


class PrepareKMeans(beam.PTransform):
    """Batches -> what the iterations need: ``{'points', 'state', 'stats', 'centred', 'raw',
    'ranges'}``.

    ``KMeansStats`` and ``KMeansCheckInput`` (statistics, sample, checks; with a
    cache directory the same pass writes each batch to the cache),
    ``KMeansCentrePoints`` (each batch centred: the cache paths, or the centred
    arrays), a :class:`~beamml.transforms.kmeans.combiners.StateMarker`,
    ``KMeansInit`` (seeding) and ``KMeansInitialState``. ``points`` is the
    centred points plus the marker (the input of
    :class:`~beamml.transforms.kmeans.iterations.LloydBlock`), ``state`` the
    initial state, ``centred`` and ``raw`` the cache paths (for dropping the cache).

    With a cache directory the raw files hold the points as read (a cosine training
    scales them to unit norm in ``KMeansStats`` and ``KMeansCentrePoints``, not
    before), so a pass after the training can compute on the very points read
    (``beamml kmeans``' final pass); ``keep_ids`` keeps their ids too, and
    ``ranges`` adds ``ranges``: the per-bundle (min, max) of each raw feature and of
    the L2 norms (:func:`~beamml.transforms.kmeans.centring.column_ranges`).
    """

    def __init__(self, kmeans: KMeans, *, keep_ids: bool = False, ranges: bool = False):
        super().__init__()
        self.kmeans = kmeans
        self.keep_ids, self.ranges = keep_ids, ranges

    def expand(self, batches):
        km = self.kmeans
        k = km.n_clusters
        sample_size = 0 if isinstance(km.init, np.ndarray) else km.init_sample_size
        if km.init_name == 'k-means||':
            sample_size = 1
        stats_fn = PointStatsCombineFn(sample_size, k, km.random_state)
        # cosine: unit points from here on (statistics, centred points, seeding); with a
        # cache the raw files keep the points as read, normalised in the steps that use them
        normalise = km.distance == 'cosine' and km.cache_dir is not None
        if km.distance == 'cosine' and not normalise:
            batches = batches | 'KMeansNormalise' >> beam.Map(unit_points)
        partial_stats, raw, ranges = stats_pass(batches, stats_fn, km.cache_dir,
                                                normalise=normalise, keep_ids=self.keep_ids,
                                                ranges=self.ranges)
        stats = (batches.pipeline
                 | 'KMeansStatsOnce' >> beam.Create([None])
                 | 'KMeansCheckInput' >> beam.Map(
                     checked_stats, beam.pvalue.AsList(partial_stats), combine_fn=stats_fn,
                     n_clusters=k, centres_given=isinstance(km.init, np.ndarray)))
        if km.distance == 'cosine':
            stats = stats | 'KMeansUncentred' >> beam.Map(uncentred)
        stats_si = beam.pvalue.AsSingleton(stats)
        centred = raw | 'KMeansCentrePoints' >> beam.ParDo(
            CentreFn(km.cache_dir, km.dtype, normalise=normalise), stats_si)
        # one more element, where each iteration emits its state (see iterations._IterationFn)
        marker = stats | 'KMeansStateMarker' >> beam.Map(state_marker)
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
        out = {'points': points, 'state': state, 'stats': stats, 'centred': centred,
               'raw': raw}
        return out if ranges is None else {**out, 'ranges': ranges}


def _initial_runs(_, stats, *centers, seeds, n_clusters, tol, distance) -> KMeansRuns:
    return initial_runs(centers, stats, seeds=seeds, n_clusters=n_clusters, tol=tol,
                        distance=distance)


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
