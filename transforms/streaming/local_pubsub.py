"""The local runner's Pub/Sub read: big pulls, acks after the output, the messages' watermark.

Beam's own local read (``_PubSubReadEvaluator``) pulls 10 messages per bundle with a 30 s
timeout, acknowledges them before they are processed and sets the watermark to the wall
clock after every bundle. :class:`LocalPubSubRead` is a primitive transform with its own
evaluator on the BundleBasedDirectRunner, added to Beam's ``TransformEvaluatorRegistry``:

* **Pulls** of up to ``max_batch_size`` messages per bundle (several pulls when the
  service returns fewer), each asking for about ``PULL_BYTES`` by the largest message
  seen (half as many when a reply is still too big: the emulator refuses over 4 MB). A
  pull waits at most ``PULL_TIMEOUT`` s; an empty one sleeps ``IDLE_PAUSE`` s, so a
  cancel takes a few seconds at most.
* **Watermark**: the oldest event time of the messages just pulled (publish time, or
  ``timestamp_attribute``), never lower than before; the wall clock once a pull comes
  back empty, but not in the first ``HOLD_SECONDS`` of a run (what a crashed run held
  comes back then) nor within an ack deadline of a failed pull (whose messages come
  back then). A backlog is read at its own times; a message older than the watermark
  when it arrives (Pub/Sub does not promise order) is late data, as on any runner.
* **Acknowledgement after the output**: a message is held (ack deadline
  ``HOLD_SECONDS``, set when pulled, renewed every third of it) until all it can have
  led to is written. ``P``, the pipeline's output watermark, is the lowest output
  watermark of every step but this one (``_evaluation_context``). A message of event
  time ``t`` is acknowledged when (1) ``P`` has passed the end ``H`` of its last window
  (its on-time panes, stamped before ``H``, hold every later step's watermark until
  processed), (2) ``L`` successive *drains* have completed since it was emitted, ``L``
  the longest path of steps after the read (a drain: every bundle, and every event-time
  timer the watermark passed, in flight at its start is processed; after ``L`` of them
  whatever the message led to without waiting for a watermark, such as a late pane, is
  processed; a drain that finds nothing in flight settles everything before it), at
  time ``T``, (3) ``P`` has passed ``T + S``, ``S`` the largest window of the pipeline
  (dead letters, stamped with the wall clock before ``T``, wait in windows of at most
  ``S``), and (4) no other message of its window waits (a window's messages are
  acknowledged together).
* A bad ``timestamp_attribute`` value is not an exception: the message keeps its
  publish time and becomes one dead letter (:class:`RefusedMessage`, turned into a
  dead letter by :func:`~beamml.transforms.streaming.messages.parse_messages`).

After a crash every message not acknowledged is delivered again, within
``HOLD_SECONDS``, to the next run on the subscription; those whose output was already
written are written twice (rows and dead letters carry their ``message_id``). Dataflow
keeps Beam's native ``ReadFromPubSub`` (acknowledged after a durable commit).
"""
from __future__ import annotations

import logging
import random
import threading
import time
import types
import weakref

import apache_beam as beam
import numpy as np
from apache_beam import pvalue
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.runners.direct.transform_evaluator import (TransformEvaluatorRegistry,
                                                            _TransformEvaluator)
from apache_beam.runners.direct.util import TransformResult
from apache_beam.transforms import window as beam_window
from apache_beam.transforms.trigger import TimeDomain
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp

from beamml.transforms.core.errors import BeammlError
from beamml.transforms.io.layout import printable

__all__ = ['LocalPubSubRead', 'RefusedMessage', 'event_time', 'runs_locally']

LOG = logging.getLogger('beamml')

#: seconds an evaluator sleeps after an empty pull (the pace of an idle stream)
IDLE_PAUSE = 0.1
#: pulls per bundle at most, and seconds spent pulling per bundle at most
MAX_PULLS, PULL_BUDGET = 20, 0.5
#: seconds a pull waits for messages (an idle subscription: then the watermark is now)
PULL_TIMEOUT = 2.0
#: bytes of message data asked for per pull (the emulator refuses replies over 4 MB)
PULL_BYTES = 3 << 20
#: downstream bundles in flight above which the read waits instead of pulling
MAX_IN_FLIGHT = 64
#: ack deadline of a held message (set when pulled, renewed every third of it)
HOLD_SECONDS = 10
#: ids per acknowledge / modify_ack_deadline request
ACK_CHUNK = 1000
#: bytes of message data per output bundle (a pull of big messages is several bundles)
BUNDLE_BYTES = 1 << 20


class RefusedMessage(PubsubMessage):
    """A message the read could not give an event time: ``refusal`` says why; it keeps
    its publish time and becomes one dead letter when parsed."""

    def __init__(self, message: PubsubMessage, refusal: str):
        super().__init__(message.data, message.attributes, message.message_id,
                         message.publish_time, message.ordering_key)
        self.refusal = refusal

    def __reduce__(self):
        return RefusedMessage, (PubsubMessage(self.data, self.attributes, self.message_id,
                                              self.publish_time, self.ordering_key),
                                self.refusal)


def event_time(message, attribute: str | None) -> tuple[Timestamp, str | None]:
    """``(timestamp, refusal)`` of a received message: ``attribute``'s value
    (milliseconds since the epoch or RFC 3339, as Beam reads it) when the message has
    it, else the publish time; a value that is neither gives the publish time and a
    one-line refusal."""
    publish = Timestamp.from_utc_datetime(message.publish_time)
    if not attribute or attribute not in message.attributes:
        return publish, None
    value = message.attributes[attribute]
    try:
        return Timestamp(micros=int(value) * 1000), None
    except ValueError:
        pass
    try:
        ts = Timestamp.from_rfc3339(value)
    except ValueError:
        return publish, (f'invalid event time: attribute {attribute!r} is '
                         f'{printable(str(value))[:100]!r}, not RFC 3339 or milliseconds '
                         'since the epoch')
    if ts.precision() > Timestamp.MICROS_PRECISION:
        ts = ts.to_precision(Timestamp.MICROS_PRECISION, allow_lossy_conversion=True)
    return ts, None


def runs_locally(pipeline) -> bool:
    """Whether ``pipeline`` runs on the BundleBasedDirectRunner (which runs this read)."""
    from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
    return isinstance(getattr(pipeline, 'runner', None), BundleBasedDirectRunner)


class LocalPubSubRead(beam.PTransform):
    """PubsubMessages (with attributes and ``message_id``) of a subscription, or of a
    temporary subscription to ``topic``, stamped with their event time, in the global
    window; ``windowfn`` is the windowing the messages get next (what their completion
    waits for). Runs on the BundleBasedDirectRunner only (its evaluator is registered
    when this module is imported)."""

    def __init__(self, subscription: str | None = None, topic: str | None = None, *,
                 timestamp_attribute: str | None = None, max_batch_size: int = 1000,
                 windowfn=None, label: str | None = None):
        super().__init__(label)
        self.subscription, self.topic = subscription, topic
        self.timestamp_attribute = timestamp_attribute
        self.max_batch_size = int(max_batch_size)
        self.windowfn = windowfn

    def get_windowing(self, unused_inputs):
        return beam.Windowing(beam_window.GlobalWindows())

    def expand(self, pbegin):
        return pvalue.PCollection(pbegin.pipeline, is_bounded=False)


# ----------------------------------------------------------------------------- windows

def _last_window_ends(windowfn, t: np.ndarray) -> np.ndarray:
    """End (micros) of the last window each event time ``t`` (micros) falls in: fixed and
    sliding windows vectorised, another WindowFn asked per element; no windows: ``t``."""
    if windowfn is None or isinstance(windowfn, beam_window.GlobalWindows):
        return t + 1
    if isinstance(windowfn, (beam_window.FixedWindows, beam_window.SlidingWindows)):
        size = windowfn.size.micros
        period = getattr(windowfn, 'period', windowfn.size).micros
        offset = windowfn.offset.micros
        start = (t - offset) // period * period + offset
        return start + size
    out = np.empty_like(t)
    for i, micros in enumerate(t.tolist()):
        ctx = beam_window.WindowFn.AssignContext(Timestamp(micros=micros))
        out[i] = max(w.end.micros for w in windowfn.assign(ctx))
    return out


# ----------------------------------------------------------------------------- held messages

class _Held:
    """The messages of one bundle until they are acknowledged (numpy over the bundle)."""

    def __init__(self, ack_ids, ends, drains_started):
        self.ack_ids = np.asarray(ack_ids, dtype=object)
        self.ends = np.asarray(ends, dtype=np.int64)        # H: last window end, micros
        self.seen = np.full(len(ends), -1, dtype=np.int64)  # when P first passed H, micros
        self.drains_started = drains_started                # drains begun before it
        self.drained_at = None                              # T of its L drains, micros

    def ready(self, p: int, now: int, size: int) -> np.ndarray:
        self.seen[(self.seen < 0) & (self.ends <= p)] = now
        if self.drained_at is None:
            return np.zeros(len(self.ends), dtype=bool)
        settled = np.maximum(self.seen, self.drained_at)
        return (self.seen >= 0) & (p >= np.maximum(self.ends, settled + size))

    def keep(self, mask: np.ndarray) -> None:
        self.ack_ids, self.ends, self.seen = self.ack_ids[mask], self.ends[mask], self.seen[mask]


class _ReadState:
    """What one application of the read keeps between bundles: the client, the
    watermark, the held messages, the drains."""

    def __init__(self, read: LocalPubSubRead, applied, context):
        from google.cloud import pubsub_v1
        # the parameters only, and weak references to the graph and the runner: the
        # state must not keep a finished pipeline (and its client) alive
        self.read = types.SimpleNamespace(
            subscription=read.subscription, topic=read.topic, windowfn=read.windowfn,
            timestamp_attribute=read.timestamp_attribute, max_batch_size=read.max_batch_size)
        self.applied, self._context = weakref.ref(applied), weakref.ref(context)
        self.client = pubsub_v1.SubscriberClient()
        self.subscription = read.subscription or self._temporary(read.topic)
        self.deadline = self._ack_deadline()
        self.watermark = MIN_TIMESTAMP
        self.held: list[_Held] = []
        self.by_id: dict[str, str] = {}   # message_id -> ack_id of the held messages
        self.ack_of: dict[str, str] = {}  # ack_id -> message_id
        self.drains_started = self.drains_done = 0
        self.settled_by = -1              # the last drain that found nothing in flight
        self.snapshot = None
        self.extended_at = time.monotonic()
        self.failing_since = None
        self.cap = read.max_batch_size   # halved when a reply is too big
        self.message_bytes, self.failed_at = 262144.0, -1e9   # a guess until a pull
        self.started = time.monotonic()
        self.depth = self._depth()
        self.size = self._largest_window()
        self.lock = threading.Lock()

    # setup -----------------------------------------------------------------
    def _temporary(self, topic: str) -> str:
        project = topic.split('/')[1]
        name = self.client.subscription_path(
            project, 'beamml_%d_%x' % (int(time.time()), random.randrange(1 << 32)))
        self.client.create_subscription(name=name, topic=topic)
        self.temporary = name
        return name

    def _ack_deadline(self) -> int:
        try:
            return max(10, int(self.client.get_subscription(
                subscription=self.subscription).ack_deadline_seconds))
        except Exception as e:   # no permission to read it: Pub/Sub's default
            LOG.debug('ack deadline of %s: %s', self.subscription, e)
            return 10

    def _consumers(self, applied):
        outs = applied.outputs.values()
        for pc in outs:
            yield from self.context._value_to_consumers.get(pc, ())

    @property
    def context(self):
        return self._context()

    def _depth(self) -> int:
        """The longest path of steps after the read (how many drains a message waits)."""
        memo: dict = {}

        def longest(node):
            if node in memo:
                return memo[node]
            memo[node] = 1 + max((longest(c) for c in self._consumers(node)), default=0)
            return memo[node]
        return longest(self.applied())

    def _largest_window(self) -> int:
        """Micros of the largest fixed or sliding window of any collection (0: none)."""
        size = 0
        for pc in list(self.context._value_to_consumers):
            try:
                fn = pc.windowing.windowfn
            except Exception:   # a collection whose windowing cannot be asked: skip it
                continue
            if isinstance(fn, (beam_window.FixedWindows, beam_window.SlidingWindows)):
                size = max(size, fn.size.micros)
        return size

    # the runner's view -------------------------------------------------------
    def _in_flight(self):
        """(bundles with elements and fired timers pending at every other step, P)."""
        context, me = self.context, self.applied()
        if context is None:   # the run is over
            return set(), self.watermark.micros
        manager = context._watermark_manager
        items, low = set(), None
        with context._lock:
            for applied, tw in manager._transform_to_watermarks.items():
                if applied is me:
                    continue
                with tw._lock:
                    items.update(b for b in tw._pending if b.has_elements())
                    items.update((applied, t) for t in tw._fired_timers)
                    w, due = tw._output_watermark, tw._input_watermark
                    states = list(tw._keyed_states.items())
                items.update(_due_timers(applied, states, due))
                low = w if low is None or w < low else low
        return items, (low.micros if low is not None else self.watermark.micros)

    def _drain(self, items, now: int) -> None:
        if self.snapshot is not None and not (self.snapshot & items):
            self.drains_done += 1
            self.snapshot = None
        if self.snapshot is None:
            self.drains_started += 1
            if items:
                self.snapshot = items
            else:   # nothing in flight: all emitted before is processed
                self.drains_done += 1
                self.settled_by = self.drains_started
        for h in self.held:
            if h.drained_at is None and (self.drains_done >= h.drains_started + self.depth
                                         or self.settled_by > h.drains_started):
                h.drained_at = now

    # acknowledgements --------------------------------------------------------
    def maintain(self) -> int:
        """Advance the drains, acknowledge what is complete, extend what is held.
        Returns the number of bundles in flight after the read."""
        items, p = self._in_flight()
        now = Timestamp.now().micros
        self._drain(items, now)
        done, ready = [], [h.ready(p, now, self.size) for h in self.held]
        if self.held:   # a window's messages together: none while one of them waits
            waiting = np.unique(np.concatenate([h.ends[~r] for h, r in zip(self.held, ready)]))
        for h, r in zip(self.held, ready):
            r &= ~np.isin(h.ends, waiting)
            if r.any():
                done.extend(h.ack_ids[r].tolist())
                h.keep(~r)
        self.held = [h for h in self.held if len(h.ack_ids)]
        if done:
            self._call('acknowledge', done)
            for a in done:
                self.by_id.pop(self.ack_of.pop(a, None), None)
        if self.held and time.monotonic() - self.extended_at >= HOLD_SECONDS / 3:
            self._call('modify_ack_deadline', [a for h in self.held for a in h.ack_ids.tolist()],
                       ack_deadline_seconds=HOLD_SECONDS)
            self.extended_at = time.monotonic()
        return sum(1 for i in items if not isinstance(i, tuple))

    def _call(self, method: str, ack_ids: list, **kwargs) -> None:
        for i in range(0, len(ack_ids), ACK_CHUNK):
            try:
                getattr(self.client, method)(subscription=self.subscription,
                                             ack_ids=ack_ids[i:i + ACK_CHUNK], **kwargs)
            except Exception as e:   # the message comes again: a duplicate, not a loss
                LOG.warning('Pub/Sub %s on %s failed (%s): those messages will be delivered '
                            'again', method, self.subscription, str(e).splitlines()[0][:200])

    # pulls -------------------------------------------------------------------
    def pull(self) -> tuple[list, bool]:
        """``(received, idle)``: up to max_batch_size received messages (several pulls
        when the service returns fewer; about PULL_BYTES per pull by the largest message
        seen lately), and whether the subscription had nothing to give: a pull came back
        empty, no pull failed within an ack deadline (a failed pull's messages come back
        then), and the read started over HOLD_SECONDS ago (what a crashed run held comes
        back within that)."""
        from google.api_core import exceptions
        got, start, idle = [], time.monotonic(), False
        for _ in range(MAX_PULLS):
            want = max(1, min(self.read.max_batch_size - len(got), self.cap,
                              int(PULL_BYTES / self.message_bytes)))
            try:
                resp = self.client.pull(subscription=self.subscription, max_messages=want,
                                        timeout=PULL_TIMEOUT)
                self.failing_since = None
            except exceptions.DeadlineExceeded:   # an idle long poll
                idle = True
                break
            except exceptions.ResourceExhausted as e:   # the reply was too big
                self.failed_at = time.monotonic()
                if want == 1:
                    raise BeammlError(f'Pub/Sub pull from {self.subscription} failed: '
                                      f'{str(e).splitlines()[0][:300]}') from None
                self.cap = max(1, want // 2)
                LOG.info('stream: a pull of %d messages was too big; pulling %d at a time',
                         want, self.cap)
                continue
            except (exceptions.ServiceUnavailable, exceptions.InternalServerError) as e:
                self.failed_at = time.monotonic()
                self._failing(e)
                break
            except exceptions.NotFound:   # deleted while the stream ran: one line, exit 2
                raise BeammlError(f'{self.subscription}: the subscription does not exist any '
                                  'more (deleted while the stream ran)') from None
            except Exception as e:   # no permission...: the service's answer, one line
                raise BeammlError(f'Pub/Sub pull from {self.subscription} failed: '
                                  f'{str(e).splitlines()[0][:300]}') from None
            received = resp.received_messages
            if not received:
                idle = True
                break
            got.extend(received)
            largest = max(len(r.message.data) for r in received)
            self.message_bytes = max(0.9 * self.message_bytes, largest, 1.0)
            if len(got) >= self.read.max_batch_size or time.monotonic() - start > PULL_BUDGET:
                break
        now = time.monotonic()
        recovering = (now - self.failed_at < self.deadline + 1
                      or now - self.started < HOLD_SECONDS + 1)
        return got, idle and not got and not recovering

    def _failing(self, e) -> None:
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        elif time.monotonic() - self.failing_since > 30:
            raise BeammlError(f'Pub/Sub pull from {self.subscription} failed for 30 s: '
                              f'{str(e).splitlines()[0][:300]}') from None


def _due_timers(applied, states, watermark):
    """The event-time timers of a step that its input watermark has passed, fired or
    not yet (a timer stays in its key's state until it is processed): what a drain
    waits for, since their output (a window's pane, a K-means update) is not held by
    any watermark."""
    for key, state in states:
        for window, timers in list(getattr(state, 'timers', {}).items()):
            for (name, domain, tag), ts in list(timers.items()):
                if domain == TimeDomain.WATERMARK and ts <= watermark:
                    yield (applied, key, window, name, tag, ts)


_STATES: 'weakref.WeakKeyDictionary' = weakref.WeakKeyDictionary()
_STATES_LOCK = threading.Lock()


def _close(state: _ReadState) -> None:
    try:
        if getattr(state, 'temporary', None):
            state.client.delete_subscription(subscription=state.temporary)
        state.client.close()
    except Exception as e:
        LOG.debug('closing the Pub/Sub read: %s', e)


class _LocalPubSubReadEvaluator(_TransformEvaluator):
    """One bundle of :class:`LocalPubSubRead`: maintain the held messages, pull, emit
    the messages at their event times, hold the watermark, come back (an unprocessed
    bundle to itself, as Beam's Pub/Sub and TestStream evaluators do)."""

    def __init__(self, evaluation_context, applied_ptransform, input_committed_bundle,
                 side_inputs):
        assert not side_inputs
        super().__init__(evaluation_context, applied_ptransform, input_committed_bundle,
                         side_inputs)
        with _STATES_LOCK:
            state = _STATES.get(applied_ptransform)
            if state is None:
                state = _STATES[applied_ptransform] = _ReadState(
                    applied_ptransform.transform, applied_ptransform, evaluation_context)
                weakref.finalize(applied_ptransform, _close, state)
        self.state = state

    def start_bundle(self):
        pass

    def process_element(self, element):
        pass

    def finish_bundle(self) -> TransformResult:
        st = self.state
        bundles = []
        with st.lock:
            in_flight = st.maintain()
            received, idle = ([], False) if in_flight >= MAX_IN_FLIGHT else st.pull()
            if received:
                bundles = self._emit(received)
            elif idle:   # nothing left to read: the present is the watermark
                st.watermark = max(st.watermark, Timestamp.now())
            watermark = st.watermark
        if not received:
            time.sleep(IDLE_PAUSE if idle else IDLE_PAUSE / 5)
        again = self._evaluation_context.create_bundle(
            pvalue.PBegin(self._applied_ptransform.transform.pipeline))
        return TransformResult(self, bundles, [again], None, {None: watermark})

    def _emit(self, received) -> list:
        """The received messages as bundles of at most BUNDLE_BYTES of data each (the
        steps after the read then work on one bundle while the next is parsed)."""
        st, read = self.state, self.state.read
        output = list(self._outputs)[0]
        bundles, size = [], BUNDLE_BYTES
        acks, times, renew = [], [], []
        for rm in received:
            mid = rm.message.message_id
            if mid in st.by_id:   # delivered again while held: keep the newest ack id
                old = st.by_id[mid]
                st.ack_of.pop(old, None)
                st.by_id[mid] = rm.ack_id
                st.ack_of[rm.ack_id] = mid
                for h in st.held:
                    h.ack_ids[h.ack_ids == old] = rm.ack_id
                renew.append(rm.ack_id)
                continue
            message = PubsubMessage._from_message(rm.message)
            ts, refusal = event_time(message, read.timestamp_attribute)
            if refusal is not None:
                message = RefusedMessage(message, refusal)
            if size >= BUNDLE_BYTES:
                bundles.append(self._evaluation_context.create_bundle(output))
                size = 0
            size += len(message.data or b'')
            bundles[-1].output(beam_window.GlobalWindows.windowed_value(message, timestamp=ts))
            st.by_id[mid] = rm.ack_id
            st.ack_of[rm.ack_id] = mid
            acks.append(rm.ack_id)
            times.append(ts.micros)
        if acks or renew:   # held from now on: a crash gives them back within HOLD_SECONDS
            st._call('modify_ack_deadline', acks + renew, ack_deadline_seconds=HOLD_SECONDS)
        if times:
            t = np.asarray(times, dtype=np.int64)
            st.held.append(_Held(acks, _last_window_ends(read.windowfn, t), st.drains_started))
            st.watermark = max(st.watermark, Timestamp(micros=int(t.min())))
        return bundles


TransformEvaluatorRegistry._test_evaluators_overrides[LocalPubSubRead] = \
    _LocalPubSubReadEvaluator
