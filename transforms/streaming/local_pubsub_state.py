"""What the local Pub/Sub read keeps between bundles: pulls, held messages, acknowledgements.

The read itself (the transform, its evaluator, the event times) is
:mod:`~beamml.transforms.streaming.local_pubsub`, whose docstring says when a message
is acknowledged and why; this module holds the state one application of the read
keeps (:class:`ReadState`): the subscriber client, the pulls (sized by bytes), the
watermark, the held messages (:class:`Held`, numpy over the messages of a pull) and
the *drains* that tell when what a message led to is written.
"""
from __future__ import annotations

import collections
import logging
import random
import threading
import time
import types
import weakref

import numpy as np
from apache_beam.transforms import window as beam_window
from apache_beam.transforms.trigger import TimeDomain
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp

from beamml.transforms.core.errors import BeammlError

__all__ = ['ReadState', 'Held', 'last_window_ends', 'window_keys', 'close_state',
           'STATES', 'STATES_LOCK', 'HOLD_SECONDS', 'PULL_TIMEOUT', 'PULL_BYTES']

LOG = logging.getLogger('beamml')

#: seconds the read waits for the pull thread when it has nothing; seconds between
#: pulls of an idle subscription; seconds without a take after which the thread ends
WAIT, IDLE_PULL, THREAD_IDLE = 0.1, 0.1, 5.0
#: pull threads (the emulator gives at most 100 messages a pull; two overlap their round
#: trips)
PULL_THREADS = 2
#: bytes of message data the pull threads hold, not yet taken, at most (and
#: max_batch_size messages)
BUFFER_BYTES = 8 << 20
#: seconds a pull waits for messages (an idle subscription: then the watermark is now)
PULL_TIMEOUT = 2.0
#: bytes of message data asked for per pull (the emulator refuses replies over 4 MB)
PULL_BYTES = 3 << 20
#: ack deadline of a held message (set when pulled, renewed every third of it)
HOLD_SECONDS = 10
#: ids per acknowledge / modify_ack_deadline request
ACK_CHUNK = 1000

# ----------------------------------------------------------------------------- windows

def last_window_ends(windowfn, t: np.ndarray) -> np.ndarray:
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


def window_keys(windowfn, t: np.ndarray) -> np.ndarray:
    """A key per event time ``t`` (micros), equal for two times when they fall in the same
    windows: for fixed and sliding windows the period they fall in (vectorised), for
    another WindowFn its windows, asked per element; no windows: 0."""
    if windowfn is None or isinstance(windowfn, beam_window.GlobalWindows):
        return np.zeros(len(t), dtype=np.int64)
    if isinstance(windowfn, (beam_window.FixedWindows, beam_window.SlidingWindows)):
        period = getattr(windowfn, 'period', windowfn.size).micros
        return (t - windowfn.offset.micros) // period
    seen: dict = {}
    return np.asarray([seen.setdefault(tuple(windowfn.assign(beam_window.WindowFn.AssignContext(
        Timestamp(micros=micros)))), len(seen)) for micros in t.tolist()], dtype=np.int64)


# ----------------------------------------------------------------------------- held messages

class Held:
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


class ReadState:
    """What one application of the read keeps between bundles: the client, the
    watermark, the held messages, the drains."""

    def __init__(self, read, applied, context):   # read: a LocalPubSubRead
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
        self.held: list[Held] = []
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
        # the pull thread's buffer (see pull())
        self.cond = threading.Condition()
        self.buffer: collections.deque = collections.deque()
        self.buffered_bytes, self.error = 0, None
        self.empty = [False] * PULL_THREADS   # each thread's latest pull came back empty
        self.threads = [None] * PULL_THREADS
        self.closed, self.last_take = False, time.monotonic()

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
        """``(received, idle)``: the messages the pull threads have received since the
        last call, up to max_batch_size (waiting up to ``WAIT`` s when there are none),
        and whether the subscription had nothing to give: nothing is buffered, each
        thread's latest pull came back empty, no pull failed within an ack deadline (a failed pull's
        messages come back then), and the read started over HOLD_SECONDS ago (what a
        crashed run held comes back within that). A pull's failure (a BeammlError: a
        deleted subscription, no permission, the service gone for 30 s) is raised here.

        The pulls run in ``PULL_THREADS`` threads of their own (:meth:`_pull_loop`),
        ahead of the runner:
        Beam's local runner processes one bundle at a time and asks a root step for more
        only when every other step is idle, so a pull made here would leave the
        pipeline idle for its round trip; made ahead, it overlaps the processing of what
        came before. At most max_batch_size messages (and ``BUFFER_BYTES``) wait."""
        with self.cond:
            self.last_take = time.monotonic()
            for i, t in enumerate(self.threads):
                if t is None or not t.is_alive():
                    self.threads[i] = threading.Thread(
                        target=self._pull_loop, args=(i,), daemon=True,
                        name=f'beamml pull {i} {self.subscription}')
                    self.threads[i].start()
            if not self.buffer and self.error is None:
                self.cond.wait(WAIT)
            if self.error is not None:
                raise self.error
            got = []
            while self.buffer and len(got) < self.read.max_batch_size:
                got.append(self.buffer.popleft())
            self.buffered_bytes -= sum(len(r.message.data) for r in got)
            idle = not got and not self.buffer and all(self.empty)
            self.cond.notify_all()   # room for the pull thread
        now = time.monotonic()
        recovering = (now - self.failed_at < self.deadline + 1
                      or now - self.started < HOLD_SECONDS + 1)
        return got, idle and not recovering

    def _full(self) -> bool:
        return len(self.buffer) >= self.read.max_batch_size or self.buffered_bytes >= BUFFER_BYTES

    def _pull_loop(self, me: int) -> None:
        """The pull thread: pulls while there is room in the buffer; ends when nobody took
        messages for ``THREAD_IDLE`` s (the run is over, failed or cancelled; a later
        take starts it again) or the read is closed, and gives what it holds back to
        the subscription (a zero ack deadline: delivered again at once)."""
        extended = time.monotonic()
        while True:
            with self.cond:
                while self._full() and not self.closed and \
                        time.monotonic() - self.last_take < THREAD_IDLE:
                    self.cond.wait(0.5)
                    if time.monotonic() - extended >= HOLD_SECONDS / 3:
                        break
                if self.closed or time.monotonic() - self.last_take >= THREAD_IDLE \
                        or self.context is None:   # the run is over: give the rest back
                    left = [r.ack_id for r in self.buffer]
                    self.buffer.clear()
                    self.buffered_bytes, self.empty[me], self.threads[me] = 0, False, None
                    break
                waiting = [r.ack_id for r in self.buffer] \
                    if time.monotonic() - extended >= HOLD_SECONDS / 3 else []
            if waiting:   # not taken yet: held on, as the read holds what it emitted
                self._call('modify_ack_deadline', waiting, ack_deadline_seconds=HOLD_SECONDS)
                extended = time.monotonic()
            if self._full():
                continue
            try:
                received, empty = self._pull_once()
            except BeammlError as e:
                with self.cond:
                    self.error, self.threads[me] = e, None
                    self.cond.notify_all()
                return
            self._hold([r.ack_id for r in received])
            with self.cond:
                self.buffer.extend(received)
                self.buffered_bytes += sum(len(r.message.data) for r in received)
                self.empty[me] = empty
                self.cond.notify_all()
                if not received:   # an idle subscription: pulled every IDLE_PULL s
                    self.cond.wait(IDLE_PULL)
        if left:   # at once to the next pull (this run's, or the next run's)
            self._call('modify_ack_deadline', left, ack_deadline_seconds=0)

    def _hold(self, ack_ids: list) -> None:
        """Give pulled messages the hold (ack deadline HOLD_SECONDS: a crash gives them
        back within it, while the next run's watermark waits), at once: a message a
        crashed run had pulled without it comes back only after the subscription's ack
        deadline, late for the next run. A subscription whose own ack deadline is no
        longer needs no request (one per pull of 100 took a third of the pulling time)."""
        if ack_ids and self.deadline > HOLD_SECONDS:
            self._call('modify_ack_deadline', ack_ids, ack_deadline_seconds=HOLD_SECONDS)

    def _pull_once(self) -> tuple[list, bool]:
        """``(received, empty)`` of one pull of about PULL_BYTES by the largest message
        seen lately (half as many messages after a reply too big); ``empty``: the
        subscription had nothing. A pull that fails for good is a BeammlError."""
        from google.api_core import exceptions
        want = max(1, min(self.read.max_batch_size, self.cap,
                          int(PULL_BYTES / self.message_bytes)))
        try:
            resp = self.client.pull(subscription=self.subscription, max_messages=want,
                                    timeout=PULL_TIMEOUT)
            self.failing_since = None
        except exceptions.DeadlineExceeded:   # an idle long poll
            return [], True
        except exceptions.ResourceExhausted as e:   # the reply was too big
            self.failed_at = time.monotonic()
            if want == 1:
                raise BeammlError(f'Pub/Sub pull from {self.subscription} failed: '
                                  f'{str(e).splitlines()[0][:300]}') from None
            self.cap = max(1, want // 2)
            LOG.info('stream: a pull of %d messages was too big; pulling %d at a time',
                     want, self.cap)
            return [], False
        except (exceptions.ServiceUnavailable, exceptions.InternalServerError) as e:
            self.failed_at = time.monotonic()
            self._failing(e)
            time.sleep(IDLE_PULL)
            return [], False
        except exceptions.NotFound:   # deleted while the stream ran: one line, exit 2
            raise BeammlError(f'{self.subscription}: the subscription does not exist any '
                              'more (deleted while the stream ran)') from None
        except Exception as e:   # no permission...: the service's answer, one line
            raise BeammlError(f'Pub/Sub pull from {self.subscription} failed: '
                              f'{str(e).splitlines()[0][:300]}') from None
        # the raw protobuf under proto-plus's wrapper: its fields are read per message
        # afterwards, and proto-plus costs microseconds per field read
        received = list(type(resp).pb(resp).received_messages)
        if received:   # the largest size lately: it halves per 50 smaller messages seen
            largest = max(len(r.message.data) for r in received)
            self.message_bytes = max(self.message_bytes * 0.5 ** (len(received) / 50),
                                     largest, 1.0)
        return received, not received

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


STATES: 'weakref.WeakKeyDictionary' = weakref.WeakKeyDictionary()
STATES_LOCK = threading.Lock()


def close_state(state: ReadState) -> None:
    """End the pull threads, delete a temporary subscription, close the client."""
    with state.cond:
        state.closed = True
        state.cond.notify_all()
    try:
        if getattr(state, 'temporary', None):
            state.client.delete_subscription(subscription=state.temporary)
        state.client.close()
    except Exception as e:
        LOG.debug('closing the Pub/Sub read: %s', e)
