"""Streaming K-means on Beam: Spark MLlib's ``StreamingKMeans``, one model update per window.

The update rule itself (Spark's ``StreamingKMeansModel.update``: nearest
centres, the discount, the weighted move of each centre, the dying-cluster
split) is numpy, in :mod:`~beamml.transforms.kmeans.streaming_kernels`
(:func:`~beamml.transforms.kmeans.streaming_kernels.streaming_update`); this
module runs it over a stream.

Initial model
-------------
As Spark: given centres with given weights (``setInitialCenters(centers,
weights)``), or centres drawn from the data with one weight for all
(``setRandomCenters(dim, weight, seed)``; Spark's own example uses weight 0).
Here the drawn centres are k-means++
(:func:`~beamml.transforms.kmeans.seeding_kernels.kmeans_plusplus`,
``random_state``) on the first window's points, with ``initial_weight``,
default 0.0: the seeds are points of that same window, so they carry no data
of their own, and the first update makes each centre the mean of the points
nearest to it (one Lloyd step from the seeds). With 0, a cluster that gets no
point stays at weight 0 and is split off the largest by the dying-cluster rule,
exactly as in Spark. When the first window has fewer than ``k`` points, the
windows are held until there are ``k``; then the seeds are drawn from all the
held points and the held windows are applied one after the other, each its
own update.

Windows with no points
----------------------
Spark Streaming updates the model on every batch interval, also on an empty
one: with ``'batches'`` an empty batch discounts every weight by
``decay_factor`` (and the dying-cluster check runs); with ``'points'`` its
discount is ``decay_factor ** 0 = 1``. A Beam window with no element does not
exist, so the update of the next window with points first applies the empty
windows in between (:func:`empty_updates`, counted from the fixed windows'
size). Empty windows before the first window with points are not counted
(the stream starts there). Their effect shows in the next update's weights;
the centres do not move without points (unless the dying rule splits one).

The Beam transform
------------------
:class:`StreamingKMeans` takes the windowed points RecordBatches (``id``,
``features``[, ``weight``][, ``_file``, ``_row``, ``_line``], in fixed
event-time windows) and gives one :class:`ModelUpdate` per window with points,
in window order. Each update needs the centres the previous window left, so
the updates are a sequence, as Spark's: every batch is keyed to one constant
key and re-windowed into the global window, and a stateful DoFn buffers each
window's points (BagState; only the ``(n, d)`` features and the weights are
kept, not the ids) and, on an event-time timer at the window's end (plus
``allowed_lateness``), runs :func:`streaming_update` over them with the model
held in its state. Reading, parsing and windowing stay parallel; the update
runs on one key, so on one worker, and costs ``O(n k d)`` there per window,
and that worker holds the points of every window whose end the watermark has
not passed yet. There is no parallel alternative with these semantics: the
assignment of window ``t`` needs the centres of window ``t - 1``, and a Beam
graph has no cycles to feed them back to parallel workers. A point that
reaches the update after its window was applied (its window ended more than
``allowed_lateness`` before the watermark) cannot change the past and is a
dead letter (``errors``, reason ``late: ...``), moved from records_ok to
records_refused.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.coders import PickleCoder
from apache_beam.transforms import window as beam_window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (BagStateSpec, ReadModifyWriteStateSpec,
                                              TimerSpec, on_timer)
from apache_beam.utils.timestamp import Duration, Timestamp

from beamml.transforms.core.errors import BeammlError, RecordCounters, dead_letter
from beamml.transforms.io.rows import features_matrix
from beamml.transforms.kmeans.seeding_kernels import kmeans_plusplus
from beamml.transforms.kmeans.streaming_kernels import (check_decay, decay_from_half_life,
                                                        empty_updates, streaming_step)
from beamml.transforms.streaming.windows import iso

__all__ = ['ModelUpdate', 'StreamingKMeans', 'StreamingKMeansResult']

_KEY = 0   # the one key every batch goes to
_LATE = 'late'   # the update's output of the batches that came after their window


# ----------------------------------------------------------------------------- Beam

class ModelUpdate(NamedTuple):
    """The model after one window (what :class:`StreamingKMeans` emits).

    ``window_start``, ``window_end`` (Beam Timestamps, end exclusive);
    ``centers`` (k, d) and ``weights`` (k,) after the update; ``n_points``:
    the window's points; ``n_points_total``: points of every update so far
    (with ``points_before``); ``n_updates``: updates so far, this one included
    (with ``updates_before``); ``counts``: the window's points per cluster
    (against the previous centres); ``inertia``: the window's sum of squared
    distances to those centres; ``empty_windows``: windows with no point
    applied just before (discount only); ``split``: (largest, smallest) when the
    dying-cluster rule split a cluster; ``seeded``: the centres were drawn
    (k-means++) from this window's points, or from held windows ending here.
    """
    window_start: Timestamp
    window_end: Timestamp
    centers: np.ndarray
    weights: np.ndarray
    n_points: int
    n_points_total: int
    n_updates: int
    counts: np.ndarray
    inertia: float
    empty_windows: int
    split: tuple[int, int] | None
    seeded: bool


class _KeyByWindowFn(beam.DoFn):
    """(window start, window end, batch) under the one key; empty batches dropped
    (a window with no point is counted from the gap, as Spark's empty batches)."""

    def process(self, batch, w=beam.DoFn.WindowParam):
        if batch.num_rows:
            yield _KEY, (w.start, w.end, batch)


class _LateLettersFn(beam.DoFn):
    """The dead letters of the batches too late for the model, each row moved from
    records_ok to records_refused (out of the one-key update, so that its per-row
    loop runs in parallel)."""

    def setup(self):
        self.counters = RecordCounters()

    def process(self, element):
        start, end, batch = element
        letters = _late_letters(batch, start, end)
        self.counters.refuse_accepted(len(letters))
        yield from letters


def _late_letters(batch: pa.RecordBatch, start, end) -> list[dict]:
    """Dead letters of a batch that came after its window was applied (a loop over the
    refused rows, as every dead-letter writer)."""
    reason = (f'late: window [{iso(start)}, {iso(end)}) was already applied '
              'to the streaming K-means model')
    cols = [c for c in ('id', 'features', 'weight') if c in batch.schema.names]
    records = batch.select(cols).to_pylist()
    names = batch.schema.names
    files = batch.column('_file').to_pylist() if '_file' in names else [None] * len(records)
    rows = batch.column('_row').to_pylist() if '_row' in names else [None] * len(records)
    lines = batch.column('_line').to_pylist() if '_line' in names else [None] * len(records)
    return [dead_letter(f, r, li, reason, rec)
            for f, r, li, rec in zip(files, rows, lines, records)]


class _StreamingKMeansFn(beam.DoFn):
    """The sequential update on the one key (see the module docstring)."""

    BUFFER = BagStateSpec('buffer', PickleCoder())        # (start, end, X, w)
    MODEL = ReadModifyWriteStateSpec('model', PickleCoder())
    NEXT = ReadModifyWriteStateSpec('next_fire', PickleCoder())
    WINDOW_END = TimerSpec('window_end', TimeDomain.WATERMARK)

    def __init__(self, params: dict):
        self.params = params

    # -- state
    def _model(self, state) -> dict:
        model = state.read()
        if model is None:
            p = self.params
            model = {'centers': p['centers'], 'weights': p['weights'],
                     'n_points_total': p['points_before'], 'n_updates': p['updates_before'],
                     'last_end': None, 'size': None, 'held': []}
        return model

    def process(self, element, buffer=beam.DoFn.StateParam(BUFFER),
                model_state=beam.DoFn.StateParam(MODEL), next_fire=beam.DoFn.StateParam(NEXT),
                timer=beam.DoFn.TimerParam(WINDOW_END)):
        start, end, batch = element[1]
        model = model_state.read()
        last_end = None if model is None else model['last_end']
        if last_end is not None and end <= last_end:
            yield beam.pvalue.TaggedOutput(_LATE, (start, end, batch))
            return
        X = np.array(features_matrix(batch), dtype=np.float64)
        w = (np.array(batch.column('weight').to_numpy(zero_copy_only=False), dtype=np.float64)
             if 'weight' in batch.schema.names else None)
        buffer.add((start, end, X, w))
        fire = self._fire_time(end)
        current = next_fire.read()
        if current is None or fire < current:
            timer.set(fire)
            next_fire.write(fire)

    def _fire_time(self, end: Timestamp) -> Timestamp:
        # the window's end plus the lateness, not its max timestamp (end - 1 us): a timer
        # at the very timestamp the window's batches carry livelocks the FnApiRunner in
        # streaming mode (measured: a watched-files run never finished)
        return end + Duration(micros=self.params['lateness_micros'])

    @on_timer(WINDOW_END)
    def on_window_end(self, fired=beam.DoFn.TimestampParam,
                      buffer=beam.DoFn.StateParam(BUFFER),
                      model_state=beam.DoFn.StateParam(MODEL),
                      next_fire=beam.DoFn.StateParam(NEXT),
                      timer=beam.DoFn.TimerParam(WINDOW_END)):
        items = list(buffer.read())
        buffer.clear()
        due, rest = {}, []
        for item in items:
            if self._fire_time(item[1]) <= fired:
                due.setdefault((item[0], item[1]), []).append(item)
            else:
                rest.append(item)
        for item in rest:
            buffer.add(item)
        if rest:
            nxt = min(self._fire_time(item[1]) for item in rest)
            timer.set(nxt)
            next_fire.write(nxt)
        else:
            next_fire.clear()
        if not due:
            return
        model = self._model(model_state)
        for (start, end), parts in sorted(due.items()):
            X = np.concatenate([p[2] for p in parts])
            ws = [p[3] for p in parts]
            w = (None if all(v is None for v in ws) else
                 np.concatenate([np.ones(len(p[2])) if p[3] is None else p[3] for p in parts]))
            yield from self._apply(model, start, end, X, w)
        model_state.write(model)

    def _apply(self, model: dict, start, end, X, w):
        p = self.params
        empty = 0
        if model['last_end'] is not None and model['size']:
            gap = (start - model['last_end']).micros
            empty = max(0, int(round(gap / model['size'])))
        if model['size'] is None:
            model['size'] = (end - start).micros
        model['last_end'] = end
        if model['centers'] is None:   # k-means++ on the first k points
            model['held'].append((start, end, X, w, empty))
            held = model['held']
            if sum(len(h[2]) for h in held) < p['k']:
                return
            pool = np.concatenate([h[2] for h in held])
            pw = (None if all(h[3] is None for h in held) else
                  np.concatenate([np.ones(len(h[2])) if h[3] is None else h[3] for h in held]))
            if pw is not None and not pw.sum() > 0:
                pw = None   # every seed candidate weighs 0: draw them unweighted
            centers, _ = kmeans_plusplus(pool, p['k'], sample_weight=pw,
                                         random_state=p['random_state'])
            model['centers'] = centers
            model['weights'] = np.full(p['k'], float(p['initial_weight']))
            model['held'] = []
            for s, e, hx, hw, he in held:
                yield self._update(model, s, e, hx, hw, he, True)
            return
        yield self._update(model, start, end, X, w, empty, False)

    def _update(self, model, start, end, X, w, empty, seeded) -> ModelUpdate:
        p = self.params
        centers, weights = model['centers'], model['weights']
        if X.shape[1] != centers.shape[1]:
            raise BeammlError(f'streaming K-means: the window [{iso(start)}, '
                              f'{iso(end)}) has points of {X.shape[1]} features, '
                              f'the model {centers.shape[1]}')
        if empty:
            centers, weights, _ = empty_updates(centers, weights, empty,
                                                decay_factor=p['decay_factor'],
                                                time_unit=p['time_unit'])
        step = streaming_step(centers, weights, X, decay_factor=p['decay_factor'],
                              time_unit=p['time_unit'], sample_weight=w)
        model['centers'], model['weights'] = step.centers, step.weights
        model['n_points_total'] += len(X)
        model['n_updates'] += 1
        return ModelUpdate(start, end, step.centers.copy(), step.weights.copy(), len(X),
                           model['n_points_total'], model['n_updates'], step.counts,
                           step.inertia, empty, step.split, seeded)


class StreamingKMeansResult(NamedTuple):
    """``updates``: :class:`ModelUpdate` per window (global window, timestamped at the
    window's end); ``errors``: dead letters of points too late for their window."""
    updates: Any
    errors: Any


class StreamingKMeans(beam.PTransform):
    """Windowed points RecordBatches -> one :class:`ModelUpdate` per window, in window order.

    Parameters
    ----------
    n_clusters : int, optional
        k; taken from ``init`` when that is an array.
    init : 'k-means++' or array-like of shape (k, d)
        Given centres (Spark's ``setInitialCenters``), or k-means++ on the first
        window's points.
    initial_weights : float or array-like of shape (k,), default 0.0
        The initial centres' weights (the same for all when a float); for
        k-means++ a float.
    decay_factor : float in [0, 1], default 1.0
    half_life : float, optional
        Instead of ``decay_factor``: ``exp(log(0.5) / half_life)``.
    time_unit : {'batches', 'points'}, default 'batches'
        What ``decay_factor`` (or the half-life) counts: windows, or points.
    random_state : int, optional
        Seed of the k-means++ draws (``RandomState``); drawn when None
        (``self.random_state`` then holds it, to record).
    allowed_lateness : float, default 0
        Seconds after a window's end the update waits for late points (the
        windowing's allowed lateness, so that what it lets through is used).
    points_before, updates_before : int, default 0
        Counts carried over from the model the stream resumes.
    """

    def __init__(self, n_clusters: int | None = None, *, init='k-means++',
                 initial_weights=0.0, decay_factor: float | None = None,
                 half_life: float | None = None, time_unit: str = 'batches',
                 random_state: int | None = None, allowed_lateness: float = 0.0,
                 points_before: int = 0, updates_before: int = 0, label: str | None = None):
        super().__init__(label)
        if half_life is not None and decay_factor is not None:
            raise BeammlError('give decay_factor or half_life, not both',
                              parameters=('decay_factor', 'half_life'))
        self.decay_factor = (decay_from_half_life(half_life) if half_life is not None
                             else check_decay(1.0 if decay_factor is None else decay_factor,
                                              time_unit))
        check_decay(self.decay_factor, time_unit)
        self.half_life, self.time_unit = half_life, time_unit
        if isinstance(init, str):
            if init != 'k-means++':
                raise BeammlError(f"streaming K-means seeds with 'k-means++' on the first "
                                  f'window or starts from given centres, not {init!r}',
                                  parameters=('init',))
            if n_clusters is None or int(n_clusters) < 1:
                raise BeammlError(f'n_clusters must be >= 1, got {n_clusters!r}',
                                  parameters=('n_clusters',))
            centers, weights = None, None
            if not np.ndim(initial_weights) == 0 or not float(initial_weights) >= 0:
                raise BeammlError('initial_weights must be one number >= 0 for k-means++',
                                  parameters=('initial_weights',))
        else:
            centers = np.array(init, dtype=np.float64)
            if centers.ndim != 2 or centers.shape[0] < 1 or centers.shape[1] < 1:
                raise BeammlError(f'init must be a (k, d) array, got shape {centers.shape}',
                                  parameters=('init',))
            if not np.isfinite(centers).all():
                raise BeammlError('init holds NaN or infinite values', parameters=('init',))
            if n_clusters is not None and int(n_clusters) != centers.shape[0]:
                raise BeammlError(f'init holds {centers.shape[0]} centres but '
                                  f'n_clusters={n_clusters}', parameters=('init', 'n_clusters'))
            weights = np.broadcast_to(np.asarray(initial_weights, dtype=np.float64),
                                      (centers.shape[0],)).copy()
            if not (np.isfinite(weights).all() and (weights >= 0).all()):
                raise BeammlError('initial_weights must be finite and >= 0',
                                  parameters=('initial_weights',))
        self.n_clusters = int(n_clusters) if centers is None else centers.shape[0]
        self.centers, self.weights = centers, weights
        self.initial_weight = 0.0 if weights is not None else float(initial_weights)
        if random_state is None:
            random_state = int(np.random.SeedSequence().generate_state(1)[0] & 0x7FFFFFFF)
        self.random_state = int(random_state)
        lateness = float(allowed_lateness)
        if not lateness >= 0 or math.isinf(lateness):
            raise BeammlError(f'allowed_lateness must be >= 0 seconds, got {allowed_lateness!r}',
                              parameters=('allowed_lateness',))
        self.allowed_lateness = lateness
        self.points_before, self.updates_before = int(points_before), int(updates_before)

    def params(self) -> dict:
        return {'k': self.n_clusters, 'centers': self.centers, 'weights': self.weights,
                'initial_weight': self.initial_weight, 'decay_factor': self.decay_factor,
                'time_unit': self.time_unit, 'random_state': self.random_state,
                'lateness_micros': int(round(self.allowed_lateness * 1e6)),
                'points_before': self.points_before, 'updates_before': self.updates_before}

    def expand(self, batches):
        out = (batches
               | 'KeyByWindow' >> beam.ParDo(_KeyByWindowFn())
               | 'GlobalWindow' >> beam.WindowInto(beam_window.GlobalWindows())
               | 'UpdateModel' >> beam.ParDo(_StreamingKMeansFn(self.params()))
               .with_input_types(beam.typehints.Tuple[int, Any])
               .with_outputs(_LATE, main='updates'))
        errors = out[_LATE] | 'LateDeadLetters' >> beam.ParDo(_LateLettersFn())
        return StreamingKMeansResult(out['updates'], errors)

