"""The unrolled Lloyd iterations of a K-means training on Beam: :class:`LloydBlock`.

The steps themselves are numpy (:mod:`~beamml.transforms.kmeans.lloyd`); this
module wires them into the graph. ``KMeansIteration0 .. KMeansIteration{n-1}``
are unrolled, then ``KMeansBlockEnd`` and ``KMeansFinal``. An iteration is one
step, ``NearestCentre``: it merges the previous iteration's ``CentroidCombineFn``
accumulators (a list side input, one per bundle) with its state (a singleton
side input) into the new centres and the stopping decision (the M-step, computed
once per worker; the first iteration takes the initial state as it is), then
runs the E-step on each batch and adds it into an accumulator of its own. The
state it used goes out through one extra element of the points, a marker
(:class:`_IterationFn`), and is the next iteration's singleton side input. That
is the lifted form of ``CombineGlobally(CentroidCombineFn)`` written out: Beam's
own adds a keying step, a shuffle and a merge stage to every iteration, and a
separate update step one more stage. Once stopped, the later iterations pass
the state through; they still read their input, which costs little.
"""
from __future__ import annotations

import apache_beam as beam

from beamml.transforms.kmeans.combiners import (CentroidCombineFn, PartialCombineFn,
                                                RunsCombineFn, StateMarker)
from beamml.transforms.kmeans.lloyd import final_result, final_step, lloyd_step, next_state

__all__ = ['LloydBlock', 'cached_points', 'state_marker']


# ----------------------------------------------------------------------------- Beam: DoFns

def state_marker(_) -> StateMarker:
    return StateMarker()


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
    iterations read no point (their input is cache paths).

    ``final=False`` leaves out ``KMeansFinal`` and ``KMeansResult`` (no
    ``'result'``): the caller makes the final E-step itself, in a pass that also
    does other work with the final centres (``beamml kmeans``' final pass).
    """

    def __init__(self, n_clusters: int, iterations: int, max_iter: int, empty_cluster: str,
                 label: str | None = None, *, n_init: int = 1, final: bool = True):
        super().__init__(label)
        self.n_clusters, self.iterations = n_clusters, iterations
        self.max_iter, self.empty_cluster = max_iter, empty_cluster
        self.n_init, self.final = n_init, final

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
        if not self.final:
            return {'state': end}
        combine_fn = _sums_fn(k, self.n_init)
        final = points | 'KMeansFinal' >> beam.ParDo(
            PartialCombineFn(_final_step_if_stopped, combine_fn), beam.pvalue.AsSingleton(end))
        result = end | 'KMeansResult' >> beam.FlatMap(
            _result_if_stopped, beam.pvalue.AsList(final), combine_fn=combine_fn)
        return {'state': end, 'result': result}


def cached_points(pipeline, paths, label: str = 'KMeansCachedPoints'):
    """The input of a later :class:`LloydBlock`: the cache ``paths`` (a checkpoint's
    manifest) and one :class:`StateMarker`."""
    return ((pipeline | f'{label}Paths' >> beam.Create(sorted(paths)),
             pipeline | f'{label}Marker' >> beam.Create([None])
             | f'{label}ToMarker' >> beam.Map(state_marker))
            | label >> beam.Flatten())
