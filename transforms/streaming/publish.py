"""Rows and records to a Pub/Sub topic: the output message formats and a sink that fails closed.

Output message formats of rows (:data:`MESSAGE_FORMATS`, :func:`encode_rows`):

* ``json`` (the default): one JSON object per row, one message per row;
* ``json_array``: a JSON array of row objects per message, the rows of one output batch
  (one bundle of one window and pane), at most ``max_rows`` rows and about
  ``max_bytes`` bytes per message: what beamml's own Pub/Sub read takes as a batch
  message;
* ``arrow``: an Arrow IPC stream of a table of up to ``max_rows`` rows per message,
  with the attribute ``format=arrow`` (beamml's own batch-message layout; times stay
  Arrow timestamps).

A row object is a line of the JSON-lines sink
(:func:`~beamml.transforms.io.sinks.to_json_lines`, times spelled as the files spell
them, :func:`~beamml.transforms.streaming.windows.iso_times`). Serialising is
vectorised (pyarrow over the batch); a message is cut from the serialised rows
without a Python loop over rows.

On the local runner the messages are published by a DoFn of beamml's
(:class:`PublishFn`): one ``PublisherClient`` per process (Beam's local runner calls
a DoFn's ``setup`` once per bundle), every message of a bundle published before the
bundle may finish (a publish that fails fails the bundle, and with it the stream:
nothing is dropped, and the local read, which acknowledges a message only once the
output it led to is written, does not acknowledge it). Elsewhere (Dataflow) Beam's
``WriteToPubSub`` publishes the same payloads (:func:`to_pubsub_messages`); the
transforms are :mod:`~beamml.transforms.streaming.pubsub`'s.
"""
from __future__ import annotations

import json
import os
import threading

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beamml.transforms.core.documents import dumps
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.io.layout import printable
from beamml.transforms.io.sinks import _json_values
from beamml.transforms.streaming.windows import iso_times

__all__ = ['MESSAGE_FORMATS', 'DEFAULT_MESSAGE_FORMAT', 'encode_rows', 'encode_record',
           'Encode', 'PublishFn', 'to_pubsub_messages']

#: the output message formats of rows; the first is the default
MESSAGE_FORMATS = ('json', 'json_array', 'arrow')
DEFAULT_MESSAGE_FORMAT = MESSAGE_FORMATS[0]
#: rows per batch message at most, and bytes per batch message about at most (Pub/Sub
#: takes up to 10 MB per message; the emulator's pull replies stop at 4 MB)
MAX_ROWS, MAX_BYTES = 1000, 1 << 20
#: the attribute that marks an Arrow message (what beamml's read looks for)
ARROW_ATTRIBUTES = {'format': 'arrow'}
#: seconds a bundle waits for its publishes before it fails
PUBLISH_TIMEOUT = 120.0


# ----------------------------------------------------------------------------- payloads

def _cuts(sizes: np.ndarray, max_rows: int, max_bytes: int) -> list[int]:
    """Row offsets that cut rows of ``sizes`` bytes into runs of at most ``max_rows``
    rows and about ``max_bytes`` bytes (a run holds one row at least)."""
    n = len(sizes)
    if n <= max_rows and int(sizes.sum()) <= max_bytes:
        return [0, n]
    ends = np.cumsum(sizes)
    cuts, start = [0], 0
    while start < n:   # a loop per message, not per row
        base = ends[start - 1] if start else 0
        stop = int(np.searchsorted(ends, base + max_bytes, side='right'))
        stop = min(max(stop, start + 1), start + max_rows, n)
        cuts.append(stop)
        start = stop
    return cuts


def _column_json(col: pa.Array) -> pa.Array:
    """JSON text of each value of a column (the JSON-lines sink's spelling); a text or
    time column with few distinct values (a window's bounds, a model version, a message
    id shared by the rows of a batch message) is spelled once per distinct value."""
    if pa.types.is_timestamp(col.type) or pa.types.is_string(col.type):
        enc = pc.dictionary_encode(col)
        if len(enc.dictionary) * 2 <= len(col):
            values = enc.dictionary
            if pa.types.is_timestamp(col.type):
                values = iso_times(pa.record_batch([values], names=['t'])).column(0)
            return pc.fill_null(_json_values(values).take(enc.indices), 'null')
    if pa.types.is_timestamp(col.type):
        col = iso_times(pa.record_batch([col], names=['t'])).column(0)
    return _json_values(col)


def _json_rows(batch: pa.RecordBatch) -> tuple[bytes, np.ndarray]:
    """(the JSON lines of ``batch``, byte for byte those of
    :func:`~beamml.transforms.io.sinks.to_json_lines` over
    :func:`~beamml.transforms.streaming.windows.iso_times`; the offset of each line's
    start, n + 1 of them)."""
    parts = []
    for i, (name, col) in enumerate(zip(batch.schema.names, batch.columns)):
        parts.append(('{' if i == 0 else ', ') + json.dumps(name) + ': ')
        parts.append(_column_json(col))
    parts.append('}\n')
    lines = pc.cast(pc.binary_join_element_wise(*parts, ''), pa.large_string())
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)[
        lines.offset:lines.offset + len(lines) + 1]
    start, end = int(offsets[0]), int(offsets[-1])
    return lines.buffers()[2].to_pybytes()[start:end], offsets - start


def encode_rows(batch: pa.RecordBatch | pa.Table, message_format: str = DEFAULT_MESSAGE_FORMAT,
                max_rows: int = MAX_ROWS, max_bytes: int = MAX_BYTES) -> list[tuple[bytes, dict]]:
    """``[(data, attributes)]``: the messages that carry the rows of ``batch`` in
    ``message_format`` (see the module docstring), in row order, every row once."""
    if message_format not in MESSAGE_FORMATS:
        raise BeammlError(f'message_format must be one of {", ".join(MESSAGE_FORMATS)}, got '
                          f'{message_format!r}', parameters=('message_format',))
    if not batch.num_rows:
        return []
    if isinstance(batch, pa.Table):
        batch = batch.combine_chunks().to_batches()[0]
    if message_format == 'arrow':
        per_row = max(1, batch.nbytes // batch.num_rows)
        cuts = _cuts(np.full(batch.num_rows, per_row), max_rows, max_bytes)
        out = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, batch.schema) as w:
                w.write_batch(batch.slice(a, b - a))
            out.append((sink.getvalue().to_pybytes(), dict(ARROW_ATTRIBUTES)))
        return out
    text, starts = _json_rows(batch)
    view = memoryview(text)
    if message_format == 'json':   # the line without its newline, per row
        return [(bytes(view[a:b - 1]), {}) for a, b in zip(starts[:-1].tolist(),
                                                           starts[1:].tolist())]
    cuts = _cuts(np.diff(starts), max_rows, max_bytes)
    out = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        rows = bytearray(view[starts[a]:starts[b]])   # "{...}\n{...}\n"
        nl = np.flatnonzero(np.frombuffer(rows, dtype=np.uint8) == 0x0A)
        arr = np.frombuffer(rows, dtype=np.uint8).copy()
        arr[nl[:-1]] = 0x2C   # the newlines between rows become commas
        out.append((b'[' + arr[:-1].tobytes() + b']', {}))
    return out


def encode_record(record: dict) -> tuple[bytes, dict]:
    """One JSON object (sorted keys, beamml's JSON policy) per record: a dead letter,
    a metrics record."""
    return dumps(record, sort_keys=True).encode('utf-8'), {}


# ----------------------------------------------------------------------------- the local sink

_CLIENTS: dict = {}
_CLIENTS_LOCK = threading.Lock()


def _publisher():
    """The process's PublisherClient for the Pub/Sub service it talks to now (the
    emulator of ``PUBSUB_EMULATOR_HOST``, else Google's): thread-safe, made once per
    service, since Beam's local runner sets a DoFn up again for every bundle and a
    client per bundle costs a channel."""
    service = os.environ.get('PUBSUB_EMULATOR_HOST')
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(service)
        if client is None:
            from google.cloud import pubsub_v1
            client = _CLIENTS[service] = pubsub_v1.PublisherClient(
                batch_settings=pubsub_v1.types.BatchSettings(
                    max_messages=1000, max_bytes=9 << 20, max_latency=0.005))
        return client


class PublishFn(beam.DoFn):
    """Publishes ``encode(element)`` (a list of ``(data, attributes)``) to ``topic`` and
    waits, before its bundle finishes, for Pub/Sub to accept every message of the bundle.
    A message Pub/Sub refuses, or a wait over ``PUBLISH_TIMEOUT`` s, fails the bundle
    with one line (a BeammlError naming the topic): nothing is dropped, and nothing the
    bundle held counts as written. Yields nothing; counts the messages in
    ``self.published`` (for tests: a bundle's)."""

    def __init__(self, topic: str, encode):
        self.topic, self.encode = topic, encode

    def start_bundle(self):
        self._futures = []
        self.published = 0

    def process(self, element):
        client = _publisher()
        for data, attributes in self.encode(element):
            try:
                self._futures.append(client.publish(self.topic, data, **attributes))
            except Exception as e:   # refused before sending (too large...): one line
                raise self._error(e) from None

    def finish_bundle(self):
        futures, self._futures = self._futures, []
        for f in futures:
            try:
                f.result(timeout=PUBLISH_TIMEOUT)
            except Exception as e:   # the bundle fails; its messages come again
                raise self._error(e) from None
        self.published = len(futures)

    def _error(self, e: BaseException) -> BeammlError:
        text = str(e).strip().splitlines()[0] if str(e).strip() else ''
        return BeammlError(f'publishing to {self.topic} failed: {type(e).__name__}: '
                           f'{printable(text)[:300]}')


class Encode:
    """A picklable ``element -> [(data, attributes)]`` of rows or of one record."""

    def __init__(self, what: str, message_format: str):
        if message_format not in MESSAGE_FORMATS:
            raise BeammlError(f'message_format must be one of {", ".join(MESSAGE_FORMATS)}, '
                              f'got {message_format!r}', parameters=('message_format',))
        self.what, self.message_format = what, message_format

    def __call__(self, element):
        if self.what == 'rows':
            return encode_rows(element, self.message_format)
        return [encode_record(element)]


def to_pubsub_messages(encode):
    """``element -> [PubsubMessage]`` of ``encode``: the payloads for Beam's
    ``WriteToPubSub(with_attributes=True)`` (Dataflow)."""
    def to_messages(element):
        from apache_beam.io.gcp.pubsub import PubsubMessage
        return [PubsubMessage(data, attributes) for data, attributes in encode(element)]
    return to_messages
