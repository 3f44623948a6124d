"""The polls of a watched pattern, and how the local streaming runner runs them.

A watched pattern's polls are ``Impulse -> poll_schedule -> _PollFn`` (files.py): the
schedule ``(start, stop, interval)`` is taken when the run starts, and ``_PollFn``, a
splittable DoFn with a manual watermark estimator, emits one element per poll,
timestamped with its scheduled time, the last before ``stop``. Dataflow (and the
FnApiRunner) run that. On Beam's ``BundleBasedDirectRunner`` (the local streaming
runner) a ``PTransformOverride`` replaces the ``_PollFn`` step with
:class:`_DirectPolls`, a primitive of the same input and output that
:class:`_PollsEvaluator` runs.

Why a primitive with its own evaluator (as Beam's ``_PubSubReadEvaluator`` for the local
Pub/Sub read, with its override in ``direct_runner.py``), and not the splittable DoFn:
the BundleBasedDirectRunner's SDF support (``runners/direct/sdf_direct_runner.py``,
``ProcessFn``) holds the output watermark at minus infinity while a restriction has a
residual and re-invokes it through a watermark timer at minus infinity; the watermark
estimator's value is never used. A polling SDF there would hold every window open until
the watch ends (and in streaming mode its ``ProcessKeyedElements`` GroupByKey is not
even replaced: the run fails). The FnApiRunner runs stage by stage, so a GroupByKey
after the polls (every window's pane file) waits for the polling stage to end. Prism,
which streams, downloads a binary.

The evaluator, each time the runner gives it work (its own bundle, which it sends itself
again until the last poll, as Beam's TestStream evaluator does; the runner has one
worker thread and hands a waiting step work only when nothing else can run), sleeps
until the next poll is due (at most ``MAX_WAIT``, so a cancel is quick), emits one
element for the latest poll due (polls missed while the runner was busy are skipped:
two polls run back to back would take a file still being written as settled), and
holds the watermark at the next poll's time. A window ``[s, e)`` therefore closes as
soon as the last poll scheduled before ``e`` has run and its files are read: within one
``interval`` of ``e``, plus the reading. :func:`register_direct_runner` adds
the override and the evaluator to Beam's lists (never replaces them), so another local
source added the same way keeps working.
"""
from __future__ import annotations

import threading
import time

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.transforms.periodicsequence import ImpulseSeqGenRestrictionProvider
from apache_beam.transforms.window import GlobalWindows, TimestampedValue
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Duration, Timestamp

from beamml.transforms.streaming.direct_counts import count_every_bundle

__all__ = ['poll_schedule', 'register_direct_runner']

#: longest sleep of one evaluation (seconds): a cancel waits for it
MAX_WAIT = 0.5


def poll_schedule(_, interval: float, stop_after: float | None):
    """``(start, stop, interval)`` of a watch starting now: ``stop`` ``stop_after``
    seconds later (None: the end of time)."""
    now = Timestamp.now()
    return now, MAX_TIMESTAMP if stop_after is None else now + stop_after, float(interval)


class _PollFn(beam.DoFn):
    """The poll times of ``(start, stop, interval)``, each element the time itself.

    ``PeriodicImpulse``'s generator, except that a call whose next poll is at most
    one interval ahead sleeps until it instead of returning at once: the local
    FnApiRunner resumes a deferred restriction immediately, so ``PeriodicImpulse``
    there runs a bundle every few milliseconds (a core busy, and after about a
    thousand bundles ``result.metrics()`` fails with a RecursionError in Beam's
    metric consolidation). Dataflow resumes it at the time asked, so it rarely
    sleeps at all.
    """

    @beam.DoFn.unbounded_per_element()
    def process(self, element,
                tracker=beam.DoFn.RestrictionParam(ImpulseSeqGenRestrictionProvider()),
                watermark=beam.DoFn.WatermarkEstimatorParam(
                    ManualWatermarkEstimator.default_provider())):
        start, _, interval = element
        start = start.micros / 1e6 if isinstance(start, Timestamp) else float(start)
        index = tracker.current_restriction().start
        wait = start + interval * index - time.time()
        if 0 < wait <= interval:
            time.sleep(wait)
        while True:
            at = start + interval * index
            if at > time.time():   # ahead of time: no element before ``at``
                _advance(watermark, Timestamp.of(at))
                tracker.defer_remainder(Timestamp.of(at))
                return
            if not tracker.try_claim(index):
                return
            _advance(watermark, Timestamp.of(at))
            yield TimestampedValue(Timestamp.of(at), Timestamp.of(at))
            index += 1


def _advance(watermark, at: Timestamp) -> None:
    current = watermark.current_watermark()
    if current is None or at > current:   # monotonic
        watermark.set_watermark(at)


class _DirectPolls(beam.PTransform):
    """``_PollFn``'s step on the BundleBasedDirectRunner: a primitive (see the module)."""

    def get_windowing(self, unused_inputs):
        return beam.Windowing(beam.window.GlobalWindows())

    def expand(self, pcoll):
        return pvalue.PCollection(pcoll.pipeline, is_bounded=False, element_type=Timestamp)


def due_poll(start_us: int, interval_us: int, index: int, now_us: int, n_polls: int) -> int:
    """The index of the latest poll due at ``now_us`` (never below ``index``, never past
    the last of ``n_polls``): polls missed while the runner was busy are skipped, not
    run back to back. Times in microseconds since the epoch."""
    return min(max(index, (now_us - start_us) // interval_us), n_polls - 1)


def _schedule_micros(element) -> tuple[int, int, int, int]:
    """``(start, interval, number of polls, next index)``, times in microseconds, of the
    schedule ``(start, stop, interval)`` (polls counted as ``PeriodicImpulse``'s
    restriction counts them: those before ``stop``)."""
    start, stop, interval = element
    start, stop = Timestamp.of(start), Timestamp.of(stop)
    interval_us = Duration(interval).micros
    return start.micros, interval_us, -(-(stop - start).micros // interval_us), 0


def _evaluator_class():
    """The TransformEvaluator of :class:`_DirectPolls` (Beam's direct-runner modules are
    imported only when a pipeline is built for it)."""
    from apache_beam.runners.direct.transform_evaluator import _TransformEvaluator
    from apache_beam.runners.direct.util import TransformResult

    class _PollsEvaluator(_TransformEvaluator):
        """Emits the latest poll due and holds the watermark at the next one. Its input:
        the schedule ``(start, stop, interval)`` once, then the bundle it sends itself,
        ``(start, interval, number of polls, next index)`` in microseconds, timestamped
        with the next poll's time (which holds its input watermark there)."""

        def start_bundle(self):
            self.schedules = []

        def process_element(self, element):
            value = element.value
            self.schedules.append(_schedule_micros(value) if len(value) == 3 else value)

        def finish_bundle(self):
            out = self._evaluation_context.create_bundle(list(self._outputs)[0])
            again = self._evaluation_context.create_bundle(
                self._applied_ptransform.inputs[0])
            holds = []
            for schedule in self.schedules:   # (one, but a Map may give more)
                nxt = self._poll(schedule, out, wait=len(self.schedules) == 1)
                if nxt is not None:
                    at = Timestamp(micros=nxt[0] + nxt[3] * nxt[1])
                    again.add(GlobalWindows.windowed_value(nxt, timestamp=at))
                    holds.append(at)
            return TransformResult(self, [out], [again] if holds else [], None,
                                   {None: min(holds) if holds else MAX_TIMESTAMP})

        def _poll(self, schedule, out, *, wait: bool):
            """Emit the latest poll due into ``out``; the schedule after it (None: done)."""
            start_us, interval_us, n_polls, index = schedule
            if index >= n_polls:
                return None
            at = start_us + index * interval_us
            ahead = at - Timestamp.now().micros
            if ahead > 0 and wait:   # the runner has nothing else to do: wait for it
                time.sleep(min(ahead / 1e6, MAX_WAIT))
            now_us = Timestamp.now().micros
            if at <= now_us:
                index = due_poll(start_us, interval_us, index, now_us, n_polls)
                at = Timestamp(micros=start_us + index * interval_us)
                out.output(GlobalWindows.windowed_value(at, timestamp=at))
                index += 1
            return None if index >= n_polls else (start_us, interval_us, n_polls, index)

    return _PollsEvaluator


_REGISTERED = threading.Lock(), []


def register_direct_runner() -> None:
    """Teach the BundleBasedDirectRunner the polls (once per process): an override put in
    front of the runner's own (before its splittable-DoFn override takes ``_PollFn``)
    and an evaluator added to its table. What others added the same way stays."""
    lock, done = _REGISTERED
    with lock:
        if done:
            return
        from apache_beam.pipeline import PTransformOverride
        from apache_beam.runners.direct import direct_runner
        from apache_beam.runners.direct.transform_evaluator import TransformEvaluatorRegistry

        class _PollsOverride(PTransformOverride):
            def matches(self, applied_ptransform):
                t = applied_ptransform.transform
                return isinstance(t, beam.ParDo) and isinstance(t.fn, _PollFn)

            def get_replacement_transform_for_applied_ptransform(self, applied_ptransform):
                return _DirectPolls()

        previous = direct_runner._get_transform_overrides

        def with_polls(pipeline_options):
            return [_PollsOverride()] + list(previous(pipeline_options))

        direct_runner._get_transform_overrides = with_polls
        count_every_bundle()   # (a stream's counters, not only each step's first bundle's)
        TransformEvaluatorRegistry._test_evaluators_overrides[_DirectPolls] = (
            _evaluator_class())
        done.append(True)
