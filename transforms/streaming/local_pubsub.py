"""The local runner's Pub/Sub read: big pulls, acks after the output, the messages' watermark.

Beam's own local read (``_PubSubReadEvaluator``) pulls 10 messages per bundle with a 30 s
timeout, acknowledges them before they are processed and sets the watermark to the wall
clock after every bundle. :class:`LocalPubSubRead` is a primitive transform with its own
evaluator on the BundleBasedDirectRunner, added to Beam's ``TransformEvaluatorRegistry``:

* **Pulls** run ahead of the runner in threads of their own (``PULL_THREADS``; Beam's
  local executor has one worker and asks a root step for more only when every other
  step is idle: a pull made in the evaluator left the pipeline idle for its round
  trip), each asking for about ``PULL_BYTES`` by the largest message seen lately (half
  as many after a reply too big: the emulator refuses over 4 MB) and waiting at most
  ``PULL_TIMEOUT`` s, so a cancel takes a few seconds at most. A bundle takes what was
  pulled, up to ``max_batch_size`` messages, and gives it out as **lists**, one element
  per event-time window (and per ``BUNDLE_BYTES`` of data), at the list's earliest
  event time: the runner's cost is per element and per bundle, not per message.
* **Watermark**: the oldest event time of the messages just taken (publish time, or
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
keeps Beam's native ``ReadFromPubSub`` (acknowledged after a durable commit). The state
between bundles (pulls, held messages, drains) is
:mod:`~beamml.transforms.streaming.local_pubsub_state`.
"""
from __future__ import annotations

import logging
import weakref
from datetime import timezone

import apache_beam as beam
import numpy as np
from apache_beam import pvalue
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.runners.direct.transform_evaluator import (TransformEvaluatorRegistry,
                                                            _TransformEvaluator)
from apache_beam.runners.direct.util import TransformResult
from apache_beam.transforms import window as beam_window
from apache_beam.utils.timestamp import Timestamp

from beamml.transforms.io.layout import printable
from beamml.transforms.streaming.local_pubsub_state import (HOLD_SECONDS, STATES, STATES_LOCK,
                                                            Held, ReadState, close_state,
                                                            last_window_ends, window_keys)

__all__ = ['LocalPubSubRead', 'RefusedMessage', 'event_time', 'runs_locally']

LOG = logging.getLogger('beamml')
UTC = timezone.utc

#: downstream bundles in flight above which the read waits instead of pulling
MAX_IN_FLIGHT = 64
#: bytes of message data per output element (a list of messages) at most: large, since
#: Beam's local runner processes one bundle at a time (nothing to overlap) and costs
#: a few milliseconds per bundle and step
BUNDLE_BYTES = 16 << 20


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
    micros, refusal = _event_micros(message.attributes, attribute,
                                    Timestamp.from_utc_datetime(message.publish_time).micros)
    return Timestamp(micros=micros), refusal


def _event_micros(attributes, attribute: str | None, publish: int) -> tuple[int, str | None]:
    """:func:`event_time` in microseconds, ``publish`` the publish time's."""
    if not attribute or attribute not in attributes:
        return publish, None
    value = attributes[attribute]
    try:
        return int(value) * 1000, None
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
    return ts.micros, None


def runs_locally(pipeline) -> bool:
    """Whether ``pipeline`` runs on the BundleBasedDirectRunner (which runs this read)."""
    from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
    return isinstance(getattr(pipeline, 'runner', None), BundleBasedDirectRunner)


class LocalPubSubRead(beam.PTransform):
    """Lists of PubsubMessages (with attributes and ``message_id``) of a subscription,
    or of a temporary subscription to ``topic``, in the global window: the messages of
    one pull that fall in the same windows of ``windowfn`` (the windowing the messages
    get next, also what their acknowledgement waits for), stamped with their earliest
    event time. Runs on the BundleBasedDirectRunner only (its evaluator is registered
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




class _LocalPubSubReadEvaluator(_TransformEvaluator):
    """One bundle of :class:`LocalPubSubRead`: maintain the held messages, pull, emit
    the messages at their event times, hold the watermark, come back (an unprocessed
    bundle to itself, as Beam's Pub/Sub and TestStream evaluators do)."""

    def __init__(self, evaluation_context, applied_ptransform, input_committed_bundle,
                 side_inputs):
        assert not side_inputs
        super().__init__(evaluation_context, applied_ptransform, input_committed_bundle,
                         side_inputs)
        with STATES_LOCK:
            state = STATES.get(applied_ptransform)
            if state is None:
                state = STATES[applied_ptransform] = ReadState(
                    applied_ptransform.transform, applied_ptransform, evaluation_context)
                weakref.finalize(applied_ptransform, close_state, state)
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
        again = self._evaluation_context.create_bundle(
            pvalue.PBegin(self._applied_ptransform.transform.pipeline))
        return TransformResult(self, bundles, [again], None, {None: watermark})

    def _emit(self, received) -> list:
        """The received messages (raw ``ReceivedMessage`` protobufs) as lists of
        messages, one list per bundle: the messages of one window (the same windows: a
        key of :func:`window_keys`), at most BUNDLE_BYTES of data per list, stamped with
        the earliest event time of the list (what ``BatchMessagesFn`` does on Beam's
        read). One element per list, not per message: the runner's cost is per element
        and per bundle, and the parse takes lists anyway."""
        st, read = self.state, self.state.read
        messages, acks, times, renew = [], [], [], []
        for rm in received:   # per message: its id, data, attributes and time
            msg, ack = rm.message, rm.ack_id
            mid = msg.message_id
            if mid in st.by_id:   # delivered again while held: keep the newest ack id
                old = st.by_id[mid]
                st.ack_of.pop(old, None)
                st.by_id[mid] = ack
                st.ack_of[ack] = mid
                for h in st.held:
                    h.ack_ids[h.ack_ids == old] = ack
                renew.append(ack)
                continue
            pt = msg.publish_time
            attributes = dict(msg.attributes)
            micros, refusal = _event_micros(attributes, read.timestamp_attribute,
                                            pt.seconds * 1_000_000 + pt.nanos // 1000)
            message = PubsubMessage(msg.data, attributes, mid, pt.ToDatetime(tzinfo=UTC),
                                    msg.ordering_key or None)
            messages.append(message if refusal is None else RefusedMessage(message, refusal))
            st.by_id[mid] = ack
            st.ack_of[ack] = mid
            acks.append(ack)
            times.append(micros)
        if renew:   # (the pull threads gave the others the hold when they pulled them)
            st._call('modify_ack_deadline', renew, ack_deadline_seconds=HOLD_SECONDS)
        if not times:
            return []
        t = np.asarray(times, dtype=np.int64)
        st.held.append(Held(acks, last_window_ends(read.windowfn, t), st.drains_started))
        st.watermark = max(st.watermark, Timestamp(micros=int(t.min())))
        output = list(self._outputs)[0]
        keys = window_keys(read.windowfn, t)
        sizes = np.fromiter((len(m.data or b'') for m in messages), dtype=np.int64,
                            count=len(messages))
        bundles = []
        for key in np.unique(keys):   # a loop per window, then per list
            idx = np.flatnonzero(keys == key)
            ends = np.cumsum(sizes[idx])
            chunk = (ends - 1) // BUNDLE_BYTES if ends[-1] > BUNDLE_BYTES else \
                np.zeros(len(idx), dtype=np.int64)
            for c in np.unique(chunk):
                part = idx[chunk == c]
                bundle = self._evaluation_context.create_bundle(output)
                bundle.output(beam_window.GlobalWindows.windowed_value(
                    [messages[i] for i in part.tolist()],
                    timestamp=Timestamp(micros=int(t[part].min()))))
                bundles.append(bundle)
        return bundles


TransformEvaluatorRegistry._test_evaluators_overrides[LocalPubSubRead] = \
    _LocalPubSubReadEvaluator
