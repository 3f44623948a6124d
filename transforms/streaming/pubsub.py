"""Pub/Sub on Beam: a subscription read into RecordBatches; rows and dead letters out to topics.

:class:`ReadPubSubBatches` reads the messages (locally with
:mod:`~beamml.transforms.streaming.local_pubsub`, elsewhere with Beam's read),
batches them per window (:class:`BatchMessagesFn`) and parses each list
(:class:`ParseMessagesFn`, which delegates to
:func:`~beamml.transforms.streaming.messages.parse_messages`: one JSON object, a JSON
array of them, or Arrow IPC; every problem a dead letter).
:class:`WriteJsonToPubSub` publishes rows (one JSON object per row by default, or a
JSON array of rows per message, or Arrow IPC) and :class:`WriteDeadLettersToPubSub`
one JSON message per dead letter (the formats and the local sink:
:mod:`~beamml.transforms.streaming.publish`). Topic and subscription names are checked
where they are given (:func:`check_topic`, :func:`check_subscription`).
"""
from __future__ import annotations

import re

import apache_beam as beam
import pyarrow as pa
from apache_beam.utils.windowed_value import WindowedValue

from beamml.transforms.core.errors import ERRORS, BeammlError, RecordCounters
from beamml.transforms.io.coder import RecordBatchCoder
from beamml.transforms.io.layout import Layout, printable
from beamml.transforms.streaming.messages import parse_messages
from beamml.transforms.streaming.publish import (DEFAULT_MESSAGE_FORMAT, Encode, PublishFn,
                                                 encode_rows, to_pubsub_messages)

__all__ = ['check_subscription', 'check_topic', 'ParseMessagesFn', 'BatchMessagesFn',
           'ReadPubSubBatches', 'rows_to_json_messages', 'WriteJsonToPubSub',
           'WriteDeadLettersToPubSub']


# Beam's own rule for the project of a Pub/Sub name (apache_beam.io.gcp.pubsub), and
# Pub/Sub's for a topic or subscription id.
_PROJECT_RE = r'[a-z][-a-z0-9:.]{4,61}[a-z0-9]'
_ID_RE = r'(?!goog)[A-Za-z][-A-Za-z0-9_.~+%]{2,254}'
#: pyarrow.RecordBatch PCollections use it (registered when its module is imported)
_BATCH_CODER = RecordBatchCoder
_SUBSCRIPTION = re.compile(rf'projects/({_PROJECT_RE})/subscriptions/({_ID_RE})')
_TOPIC = re.compile(rf'projects/({_PROJECT_RE})/topics/({_ID_RE})')


def _check_name(name, pattern: re.Pattern, kind: str, parameter: str) -> str:
    if not isinstance(name, str) or not pattern.fullmatch(name):
        raise BeammlError(
            f'{parameter} {printable(str(name))!r} is not a Pub/Sub {kind} name: write '
            f'projects/<project>/{kind}s/<id> (project: 6-30 lowercase letters, digits, '
            f'dashes; id: 3-255 characters, a letter first)', parameters=(parameter,))
    return name


def check_subscription(name: str, parameter: str = 'subscription') -> str:
    """``name`` when it is ``projects/P/subscriptions/S``, else a one-line BeammlError."""
    return _check_name(name, _SUBSCRIPTION, 'subscription', parameter)


def check_topic(name: str, parameter: str = 'topic') -> str:
    """``name`` when it is ``projects/P/topics/T``, else a one-line BeammlError."""
    return _check_name(name, _TOPIC, 'topic', parameter)


# ----------------------------------------------------------------------------- Beam

class ParseMessagesFn(beam.DoFn):
    """A list of PubsubMessages -> RecordBatches (main; with ``message_id_column``, each
    row's message id in it) and dead letters (``errors``), counted with
    :class:`~beamml.transforms.core.errors.RecordCounters`. Outputs keep the input
    element's timestamp and window."""

    def __init__(self, layout: Layout, source: str, *, points: bool = True,
                 allow_nan: bool = False, refuse_zero: bool = False,
                 source_columns: bool = False, message_id_column: str | None = None):
        self.layout, self.source, self.points = layout, source, points
        self.allow_nan, self.refuse_zero = allow_nan, refuse_zero
        self.source_columns = source_columns
        self.message_id_column = message_id_column
        counters = RecordCounters()
        self.read, self.ok, self.refused = counters.read, counters.ok, counters.refused

    def process(self, messages):
        batches, dead = parse_messages(
            list(messages), self.layout, source=self.source, points=self.points,
            allow_nan=self.allow_nan, refuse_zero=self.refuse_zero,
            source_columns=self.source_columns, message_id_column=self.message_id_column)
        n_ok = sum(b.num_rows for b in batches)
        self.read.inc(n_ok + len(dead))
        if n_ok:
            self.ok.inc(n_ok)
        if dead:
            self.refused.inc(len(dead))
        for b in batches:
            yield b
        for dl in dead:
            yield beam.pvalue.TaggedOutput(ERRORS, dl)


class BatchMessagesFn(beam.DoFn):
    """Lists of at most ``max_batch_size`` messages, per window, within a bundle.

    Unlike ``beam.BatchElements``, which stamps each batch with the end of its window
    (the end of time in the global window), a batch keeps an event time: the
    earliest timestamp of its messages, in their window.
    """

    def __init__(self, max_batch_size: int):
        self.max_batch_size = max_batch_size

    def start_bundle(self):
        self._open: dict = {}

    def process(self, message, timestamp=beam.DoFn.TimestampParam,
                window=beam.DoFn.WindowParam):
        entry = self._open.get(window)
        if entry is None:
            entry = self._open[window] = [[], timestamp]
        entry[0].append(message)
        entry[1] = min(entry[1], timestamp)
        if len(entry[0]) >= self.max_batch_size:
            del self._open[window]
            yield WindowedValue(entry[0], entry[1], (window,))

    def finish_bundle(self):
        for w, (msgs, ts) in self._open.items():
            yield WindowedValue(msgs, ts, (w,))
        self._open = {}


class ReadPubSubBatches(beam.PTransform):
    """Read a Pub/Sub subscription (or topic) into RecordBatches plus dead letters.

    The messages with their event times (the attribute, else the publish time): on
    the BundleBasedDirectRunner beamml's own read,
    :class:`~beamml.transforms.streaming.local_pubsub.LocalPubSubRead` (pulls of up to
    ``max_batch_size``, each message acknowledged once the output it led to is
    written, a watermark from the messages' times, a bad event-time attribute a dead
    letter), which emits lists of the messages of one pull and window, each at its
    earliest event time, then ``windowing`` (a PTransform such as
    ``beam.WindowInto(...)``; None leaves the global window); on any other runner Beam's
    ``ReadFromPubSub(with_attributes=True, timestamp_attribute=...)``, ``windowing``,
    then the same lists, of at most ``max_batch_size`` messages of one bundle and window
    (:class:`BatchMessagesFn`: ``beam.BatchElements`` would stamp each list with
    the end of its window, and its ``max_batch_duration_secs`` variant with a
    processing time). Then :class:`ParseMessagesFn`. ``max_batch_duration_secs``
    is refused (a BeammlError): on the local runner its timer fires only when the
    next pull returns. With ``message_id_column`` every batch carries each row's
    message id in that column (what lets a reader drop the rows of a message delivered
    twice). Returns a result with ``.batches`` and ``.errors``.
    Exactly one of ``subscription`` / ``topic``. A topic read makes a temporary
    subscription when the pipeline starts.
    """

    def __init__(self, subscription: str | None = None, topic: str | None = None,
                 layout: Layout | None = None, *, timestamp_attribute: str | None = None,
                 windowing: beam.PTransform | None = None, max_batch_size: int = 1000,
                 max_batch_duration_secs: float | None = None, points: bool = True,
                 allow_nan: bool = False, refuse_zero: bool = False,
                 source_columns: bool = False, message_id_column: str | None = None,
                 label: str | None = None):
        super().__init__(label)
        if (subscription is None) == (topic is None):
            raise BeammlError('give exactly one of subscription and topic',
                              parameters=('subscription', 'topic'))
        if subscription is not None:
            self.source = check_subscription(subscription)
        else:
            self.source = check_topic(topic)
        self.subscription, self.topic = subscription, topic
        if not isinstance(layout, Layout):
            raise BeammlError('layout is missing: build one with message_layout(...)',
                              parameters=('layout',))
        if points and not layout.feature_columns:
            raise BeammlError('the layout has no features; build it with points=True',
                              parameters=('layout',))
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) \
                or max_batch_size < 1:
            raise BeammlError(f'max_batch_size must be an integer >= 1, got {max_batch_size!r}',
                              parameters=('max_batch_size',))
        if max_batch_duration_secs is not None:
            # Measured on the BundleBasedDirectRunner: Beam's stateful BatchElements holds a
            # partial batch until the runner's next Pub/Sub pull returns (up to 30 s when the
            # subscription is idle) and stamps it with the timer's processing time.
            raise BeammlError('max_batch_duration_secs is not supported: a batch is the '
                              "messages of one bundle (at most max_batch_size), at its "
                              "messages' earliest event time",
                              parameters=('max_batch_duration_secs', 'max_batch_size'))
        if timestamp_attribute is not None and not str(timestamp_attribute).strip():
            raise BeammlError('timestamp_attribute is empty', parameters=('timestamp_attribute',))
        self.layout, self.points = layout, points
        self.timestamp_attribute = timestamp_attribute
        self.windowing = windowing
        self.max_batch_size = max_batch_size
        self.max_batch_duration_secs = max_batch_duration_secs
        self.allow_nan, self.refuse_zero = allow_nan, refuse_zero
        self.source_columns = source_columns
        if message_id_column is not None and message_id_column in layout.columns:
            raise BeammlError(f'message_id_column {message_id_column!r} is a column of the '
                              'messages; name another', parameters=('message_id_column',))
        self.message_id_column = message_id_column

    def expand(self, pbegin):
        from beamml.transforms.streaming.local_pubsub import LocalPubSubRead, runs_locally
        if runs_locally(pbegin.pipeline):   # acks after the output, publish-time watermark
            # lists of the messages of one pull and window, at their earliest time
            lists = pbegin | 'ReadMessages' >> LocalPubSubRead(
                self.subscription, self.topic, timestamp_attribute=self.timestamp_attribute,
                max_batch_size=self.max_batch_size,
                windowfn=None if self.windowing is None else self.windowing.windowing.windowfn)
            if self.windowing is not None:
                lists = lists | 'WindowMessages' >> self.windowing
        else:   # Dataflow: Beam's native read (acks after a durable commit)
            messages = pbegin | 'ReadMessages' >> beam.io.ReadFromPubSub(
                topic=self.topic, subscription=self.subscription, with_attributes=True,
                timestamp_attribute=self.timestamp_attribute)
            if self.windowing is not None:
                messages = messages | 'WindowMessages' >> self.windowing
            lists = messages | 'BatchMessages' >> beam.ParDo(
                BatchMessagesFn(self.max_batch_size))
        return lists | 'ParseMessages' >> beam.ParDo(ParseMessagesFn(
            self.layout, self.source, points=self.points, allow_nan=self.allow_nan,
            refuse_zero=self.refuse_zero, source_columns=self.source_columns,
            message_id_column=self.message_id_column)
        ).with_output_types(pa.RecordBatch).with_outputs(ERRORS, main='batches')


# ----------------------------------------------------------------------------- sinks

def rows_to_json_messages(batch: pa.RecordBatch | pa.Table) -> list[bytes]:
    """One JSON object (bytes, no newline) per row: the JSON-lines sink's very lines
    (:func:`~beamml.transforms.io.sinks.to_json_lines`: non-finite floats as
    ``"NaN"``..., null a missing value; times as the files spell them,
    :func:`~beamml.transforms.streaming.windows.iso_times`)."""
    return [data for data, _ in encode_rows(batch, 'json')]


def _publish(pcoll, topic: str, encode: Encode, to_messages: str, publish: str):
    """``encode``'s messages of each element to ``topic``: on the local runner by
    :class:`~beamml.transforms.streaming.publish.PublishFn` (each bundle waits for its
    publishes: a failed publish fails the stream), elsewhere by Beam's
    ``WriteToPubSub``."""
    from beamml.transforms.streaming.local_pubsub import runs_locally
    if runs_locally(pcoll.pipeline):
        return pcoll | publish >> beam.ParDo(PublishFn(topic, encode))
    from apache_beam.io.gcp.pubsub import PubsubMessage
    return (pcoll
            | to_messages >> beam.FlatMap(to_pubsub_messages(encode))
            .with_output_types(PubsubMessage)
            | publish >> beam.io.WriteToPubSub(topic, with_attributes=True))


class WriteJsonToPubSub(beam.PTransform):
    """RecordBatches -> messages of rows on ``topic``, ``message_format`` one of
    :data:`~beamml.transforms.streaming.publish.MESSAGE_FORMATS`: ``json`` (the default:
    one JSON object per row, :func:`rows_to_json_messages`), ``json_array`` (a JSON array
    of up to 1,000 rows per message, the rows of one batch) or ``arrow`` (Arrow IPC,
    attribute ``format=arrow``). Locally a publish that fails fails the
    stream (:class:`~beamml.transforms.streaming.publish.PublishFn`)."""

    def __init__(self, topic: str, message_format: str = DEFAULT_MESSAGE_FORMAT,
                 label: str | None = None):
        super().__init__(label)
        self.topic = check_topic(topic)
        self.encode = Encode('rows', message_format)   # a bad format: refused here

    def expand(self, batches):
        return _publish(batches, self.topic, self.encode, 'RowsToJson', 'PublishRows')


class WriteDeadLettersToPubSub(beam.PTransform):
    """Dead-letter dicts (or metrics records) -> one JSON message each (sorted keys,
    beamml's JSON policy) on ``topic``; locally a publish that fails fails the stream."""

    def __init__(self, topic: str, label: str | None = None):
        super().__init__(label)
        self.topic = check_topic(topic)

    def expand(self, errors):
        return _publish(errors, self.topic, Encode('records', 'json'), 'DeadLettersToJson',
                        'PublishDeadLetters')
