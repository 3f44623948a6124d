"""Pub/Sub messages into RecordBatches and dead letters (no Beam): the parsing.

A message is one JSON object with the fields of a file row
(``{"id": 7, "features": [0.1, 2.0]}``, scalar feature columns, or a prediction
log's columns), a JSON array of such objects, or, with the attribute
``format=arrow``, an Arrow IPC stream of a table with the same columns.

Parsing reuses the file readers: the objects of every JSON message of a list
become the lines of one JSON-lines payload, read by
:func:`~beamml.transforms.io.jsonio.read_jsonl` and checked by
:func:`~beamml.transforms.io.rows.to_points` (points) or
:func:`~beamml.transforms.io.rows.table_checks` (tables), so a row gives the
same batch and the same refusal reason as the same row in a ``.jsonl`` file.
An array is split into its objects by a numpy scan of its bytes (strings,
escapes and nesting depth, vectorised), not by a parse per object.

Every problem is a dead letter, never an exception:
``dead_letter(file=<subscription or topic>, row=<index of the object in the
message, or None for the whole message>, line=None, reason, record)`` plus
``message_id``. Each object of a message counts as one record read; a message
that cannot be parsed at all counts as one record read and refused.

The Beam side (reading a subscription, batching, the sinks) is
:mod:`~beamml.transforms.streaming.pubsub`.
"""
from __future__ import annotations

import io
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa

from beamml.transforms.core.errors import BeammlError, dead_letter
from beamml.transforms.core.types import SOURCE_COLUMNS
from beamml.transforms.io.jsonio import read_jsonl
from beamml.transforms.io.layout import Layout, printable
from beamml.transforms.io.rows import RowBatch, table_checks, to_points

__all__ = ['ARROW_FORMAT', 'FORMAT_ATTRIBUTE', 'message_layout', 'parse_messages']


#: the message attribute that names a binary format, and its value for Arrow IPC
FORMAT_ATTRIBUTE = 'format'
ARROW_FORMAT = 'arrow'


# ----------------------------------------------------------------------------- layout

def message_layout(*, id_column: str | None = 'id',
                   feature_columns: Sequence[str] = ('features',),
                   dimension: int | None = None, points: bool = True, id_type: str = 'int64',
                   weight_column: str | None = None,
                   list_features: bool | None = None) -> Layout:
    """The Layout a JSON-lines file with these columns would give (inspect_input's).

    One feature column holds a list per row (``list_features=False``: one scalar
    column, ``dimension`` 1); several are scalar columns, one per dimension. For
    ``points=False`` (prediction logs) the table needs no features: only the id
    column, when there is one, is checked.
    """
    if id_type not in ('int64', 'string'):
        raise BeammlError(f"id_type must be 'int64' or 'string', got {id_type!r}",
                          parameters=('id_type',))
    if id_column is not None and not id_column:
        raise BeammlError('id_column is empty; name a field or pass None',
                          parameters=('id_column',))
    id_fields = [(id_column, pa.int64() if id_type == 'int64' else pa.string())] \
        if id_column else []
    if not points:
        if weight_column:
            raise BeammlError('weight_column is for reading points, not tables',
                              parameters=('weight_column',))
        schema = pa.schema(id_fields)
        return Layout('jsonl', tuple(schema.names), id_column, id_type, (), False, 0, schema)
    feature_columns = tuple(feature_columns or ())
    if not feature_columns:
        raise BeammlError('feature_columns is empty; name the feature field(s)',
                          parameters=('feature_columns',))
    if dimension is None or int(dimension) < 1:
        raise BeammlError(f'dimension must be >= 1, got {dimension}', parameters=('dimension',))
    dimension = int(dimension)
    names = ([id_column] if id_column else []) + list(feature_columns) + \
        ([weight_column] if weight_column else [])
    repeated = sorted({c for c in names if names.count(c) > 1})
    if repeated:
        raise BeammlError(f'field {repeated[0]!r} is named twice among id_column, '
                          'feature_columns and weight_column',
                          parameters=('id_column', 'feature_columns', 'weight_column'))
    if list_features is None:
        list_features = len(feature_columns) == 1
    if list_features and len(feature_columns) != 1:
        raise BeammlError('list features are one field; give one feature column',
                          parameters=('feature_columns',))
    if not list_features and len(feature_columns) != dimension:
        raise BeammlError(f'{len(feature_columns)} feature columns '
                          f'({", ".join(feature_columns)}) but dimension is {dimension}',
                          parameters=('dimension',))
    feat_type = pa.list_(pa.float64()) if list_features else pa.float64()
    fields = id_fields + [(c, feat_type) for c in feature_columns]
    if weight_column:
        fields.append((weight_column, pa.float64()))
    schema = pa.schema(fields)
    return Layout('jsonl', tuple(schema.names), id_column, id_type, feature_columns,
                  bool(list_features), dimension, schema, weight_column=weight_column)


# ----------------------------------------------------------------------------- JSON split

_WS = np.zeros(256, dtype=bool)
_WS[[0x20, 0x09, 0x0A, 0x0D]] = True
_NONWS = (~_WS).astype(np.int8)
_OPEN = np.zeros(256, dtype=np.int8)
_OPEN[[ord('['), ord('{')]] = 1
_OPEN[[ord(']'), ord('}')]] = -1


def _escaped(b: np.ndarray) -> np.ndarray:
    """Whether each byte is escaped: an odd run of backslashes precedes it."""
    n = len(b)
    bs = b == 0x5C
    if not bs.any():
        return np.zeros(n, dtype=bool)
    idx = np.arange(n, dtype=np.int64)
    last_plain = np.maximum.accumulate(np.where(bs, -1, idx))
    run_before = np.empty(n, dtype=np.int64)
    run_before[0] = 0
    run_before[1:] = idx[:-1] - last_plain[:-1]
    return run_before % 2 == 1


def _json_lines_many(datas: Sequence[bytes]) -> tuple[bytes, np.ndarray, list]:
    """The JSON-lines payload of many messages' JSON text at once: ``(payload, counts,
    reasons)``, the payload holding the lines of the messages that are one object or an
    array of objects' worth of JSON (one line per object, in message order),
    ``counts[i]`` the lines of message i (0 when refused) and ``reasons[i]`` None or why
    message i as a whole is refused (the first of: empty, not an object or array,
    an unterminated string, a line break in a string, unbalanced brackets, more than
    one value, an empty array, an empty element).

    One vectorised scan (numpy over the bytes of all the messages, each followed by a
    newline): escapes, strings, nesting depth, each restarted at every message; the
    commas between an array's elements become newlines and whitespace newlines spaces,
    so each element is one line for the JSON-lines reader, which then parses (and
    refuses) each as it would a file's line. No Python loop over messages or bytes; the
    full-length arrays are bytes and int32 (about 12 bytes of scratch per byte).
    """
    m = len(datas)
    lengths = np.fromiter(map(len, datas), dtype=np.int64, count=m)
    buf = b'\n'.join(datas) + b'\n'
    b = np.frombuffer(buf, dtype=np.uint8)
    starts = np.zeros(m, dtype=np.int64)
    starts[1:] = np.cumsum(lengths + 1)[:-1]
    ends = starts + lengths                        # each message's newline
    span = lengths + 1

    def message_of(positions):
        return np.searchsorted(starts, positions, side='right') - 1

    quote = (b == 0x22) & ~_escaped(b)
    parity = np.bitwise_xor.accumulate(quote.view(np.uint8))     # quotes so far, mod 2
    base = parity[starts] ^ quote[starts]
    if base.any():   # after a message with an odd number of quotes: restart per message
        parity ^= np.repeat(base, span)
    in_string = parity.view(bool) & ~quote                       # strictly inside a string
    structural = _OPEN[b] * ~(in_string | quote)
    depth = np.cumsum(structural, dtype=np.int32)                # after each byte
    base = depth[starts] - structural[starts]
    if base.any():   # after an unbalanced message
        depth -= np.repeat(base, span)
    nonws = np.cumsum(_NONWS[b], dtype=np.int32)                 # non-blanks up to here
    before = nonws[starts] - _NONWS[b[starts]]
    empty = nonws[ends] == before
    first = np.where(empty, starts, np.searchsorted(nonws, before + 1))
    last = np.where(empty, starts, np.searchsorted(nonws, nonws[ends]))
    lead = b[first]
    is_array = lead == ord('[')
    breaks = np.flatnonzero((b == 0x0A) | (b == 0x0D))
    breaks = breaks[in_string[breaks]]
    broken = np.bincount(message_of(breaks), minlength=m) > 0
    broken[message_of(ends[in_string[ends]])] = False   # an unterminated string's newline
    unbalanced = depth[ends] != 0
    unbalanced[message_of(np.flatnonzero(depth < 0))] = True
    zero = np.flatnonzero(depth == 0)   # outside every value (few, in good messages)
    of = message_of(zero)
    zero = zero[(zero >= first[of]) & (zero < last[of])]
    several = np.bincount(message_of(zero), minlength=m) > 0   # a value ended before last
    # an array's elements: the commas at depth 1, outside strings, between its brackets
    commas = np.flatnonzero(b == 0x2C)
    commas = commas[~in_string[commas] & (depth[commas] == 1)]
    of = message_of(commas)
    commas = commas[is_array[of] & (commas > first[of]) & (commas < last[of])]
    of = message_of(commas)
    n_commas = np.bincount(of, minlength=m)
    arrays = np.flatnonzero(is_array)
    bounds = np.sort(np.concatenate([commas, first[arrays], last[arrays]]))
    bound_of = message_of(bounds)
    filled = nonws[bounds[1:] - 1] - nonws[bounds[:-1]]   # non-blanks between two bounds
    hollow = np.bincount(bound_of[:-1][(bound_of[:-1] == bound_of[1:]) & (filled == 0)],
                         minlength=m) > 0
    checks = [(empty, 'empty message'),
              (~np.isin(lead, (ord('{'), ord('['))), 'not a JSON object or array of objects'),
              (in_string[ends], 'invalid JSON: an unterminated string'),
              (broken, 'invalid JSON: a line break in a string'),
              (unbalanced, 'invalid JSON: unbalanced brackets'),
              (several, 'invalid JSON: more than one JSON value in the message'),
              (is_array & (n_commas == 0) & hollow, 'empty JSON array'),
              (is_array & hollow, 'invalid JSON: an empty element in the array')]
    code = np.zeros(m, dtype=np.int64)
    for i, (bad, _) in reversed(list(enumerate(checks))):   # the first reason wins
        code[bad] = i + 1
    reasons = [None if c == 0 else checks[c - 1][1] for c in code.tolist()]
    ok = code == 0
    out = b.copy()
    blanks = np.flatnonzero((b == 0x0A) | (b == 0x0D))
    out[blanks[~in_string[blanks]]] = 0x20
    out[ends] = 0x0A
    out[commas] = 0x0A
    out[first[arrays]] = out[last[arrays]] = 0x20
    counts = np.where(ok, np.where(is_array, n_commas + 1, 1), 0)
    if ok.all():
        return out.tobytes(), counts, reasons
    return out[np.repeat(ok, span)].tobytes(), counts, reasons


# ----------------------------------------------------------------------------- parsing

def _raw_text(data) -> str:
    return bytes(data or b'').decode('utf-8', 'backslashreplace')


def _is_arrow(message) -> bool:
    attrs = getattr(message, 'attributes', None) or {}
    return str(attrs.get(FORMAT_ATTRIBUTE, '')).strip().lower() == ARROW_FORMAT


def _with_message(dl: dict, message_id, row: int | None) -> dict:
    dl['row'] = None if row is None else int(row)
    dl['line'] = None
    dl['message_id'] = message_id
    return dl


def _check(rb: RowBatch, layout: Layout, source: str, points: bool, allow_nan: bool,
           refuse_zero: bool, source_columns: bool):
    """to_points / table_checks of one RowBatch. A table whose own column is named as a
    source column (``_file``...) cannot carry source columns: its rows holding a value
    there are refused, the column dropped for the others."""
    if points:
        return to_points(rb, layout, source, allow_nan, source_columns, refuse_zero)
    clash = [c for c in SOURCE_COLUMNS if c in rb.table.column_names] if source_columns else []
    if not clash:
        return table_checks(rb, layout, source, source_columns)
    t = rb.table
    has = np.zeros(t.num_rows, dtype=bool)
    for c in clash:
        has |= t.column(c).is_valid().to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(has)
    dead = [dead_letter(source, rb.rows[i], None if rb.lines is None else rb.lines[i],
                        f'field {clash[0]!r} is a name beamml gives the source of each row; '
                        'rename it', rec)
            for i, rec in zip(bad, t.take(pa.array(bad)).to_pylist())]
    keep = np.flatnonzero(~has)
    if not len(keep):
        return None, dead
    t = t.take(pa.array(keep)).drop_columns(clash)
    out, more = table_checks(RowBatch(t, rb.rows[keep], None if rb.lines is None
                                      else rb.lines[keep]), layout, source, source_columns)
    return out, dead + more


def _set_rows(batch: pa.RecordBatch, rows: np.ndarray) -> pa.RecordBatch:
    """``batch`` with its ``_row`` column (global payload rows) as ``rows``."""
    i = batch.schema.get_field_index(SOURCE_COLUMNS[1])
    return batch.set_column(i, SOURCE_COLUMNS[1], pa.array(rows, pa.int64()))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return printable(text.splitlines()[0]) if text else type(e).__name__


def parse_messages(messages: Iterable, layout: Layout, *, source: str, points: bool = True,
                   allow_nan: bool = False, refuse_zero: bool = False,
                   source_columns: bool = False, message_id_column: str | None = None
                   ) -> tuple[list[pa.RecordBatch], list[dict]]:
    """RecordBatches and dead letters of a list of Pub/Sub messages (no Beam).

    ``messages`` have ``.data`` (bytes), ``.attributes`` (dict) and
    ``.message_id``; ``source`` (``projects/P/subscriptions/S``) is each dead
    letter's ``file``. The JSON messages of the list are parsed together, once;
    each Arrow message (attribute ``format=arrow``) is read with
    ``pa.ipc.open_stream`` and checked the same way. The batches hold the rows of
    the JSON messages in their order, then those of each Arrow message. With
    ``source_columns`` a batch carries ``_file`` (``source``), ``_row`` (the
    object's index in its message) and ``_line`` (null). With ``message_id_column`` a
    batch also carries each row's message id in that column (string), last: what lets a
    reader drop the rows of a message delivered twice. A message the read refused
    (a :class:`~beamml.transforms.streaming.local_pubsub.RefusedMessage`: a bad event
    time) is one dead letter with the read's reason. Every object is one record: in a
    batch or a dead letter.
    """
    batches: list[pa.RecordBatch] = []
    dead: list[dict] = []
    parts: list[bytes] = []
    part_ids: list = []
    counts: list[int] = []
    arrow_batches: list[pa.RecordBatch] = []
    with_rows = source_columns or message_id_column is not None
    order: list[int] = []   # the message of each dead letter (they come out in that order)
    texts, text_ids, text_at = [], [], []
    for i, m in enumerate(messages):   # per message: its kind; the JSON is split below
        mid = getattr(m, 'message_id', None)
        data = getattr(m, 'data', None) or b''
        refusal = getattr(m, 'refusal', None)
        if refusal is not None:
            dead.append(_with_message(dead_letter(source, None, None, refusal,
                                                  _raw_text(data)), mid, None))
            order.append(i)
            continue
        if _is_arrow(m):
            b, d = _parse_arrow(m, layout, source, points, allow_nan, refuse_zero, with_rows)
            arrow_batches.extend(_finish(x, np.full(x.num_rows, mid, dtype=object),
                                         source_columns, message_id_column) for x in b)
            dead.extend(d)
            order.extend([i] * len(d))
            continue
        texts.append(bytes(data))
        text_ids.append(mid)
        text_at.append(i)
    texts, text_ids, text_at = _utf8(texts, text_ids, text_at, source, dead, order)
    if texts:
        payload, n_lines, reasons = _json_lines_many(texts)
        for data, mid, i, reason in zip(texts, text_ids, text_at, reasons):
            if reason is not None:   # the refused messages only
                dead.append(_with_message(dead_letter(
                    source, None, None, f'invalid message: {reason}', _raw_text(data)),
                    mid, None))
                order.append(i)
        keep = n_lines > 0
        parts = [payload] if keep.any() else []
        part_ids = [mid for mid, k in zip(text_ids, keep.tolist()) if k]
        counts = n_lines[keep].tolist()
    dead = [dead[j] for j in np.argsort(np.asarray(order, dtype=np.int64), kind='stable')]
    if not parts:
        return arrow_batches, dead
    counts_a = np.asarray(counts, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts_a)[:-1]])
    msg_of = np.repeat(np.arange(len(part_ids)), counts_a)   # payload row -> message
    elem_of = np.arange(int(counts_a.sum())) - starts[msg_of]  # -> index in the message
    payload = parts[0]
    ids_of = np.asarray(part_ids, dtype=object)
    found = []
    for item in read_jsonl(io.BytesIO(payload), source, layout):
        if isinstance(item, dict):
            found.append(item)
            continue
        rb = RowBatch(item.table, item.rows, None, item.raw)   # refused rows quoted as sent
        out, bad = _check(rb, layout, source, points, allow_nan, refuse_zero, with_rows)
        found.extend(bad)
        if out is not None and out.num_rows:
            if with_rows:
                g = out.column(SOURCE_COLUMNS[1]).to_numpy(zero_copy_only=False)
                out = _set_rows(out, elem_of[g])
                out = _finish(out, ids_of[msg_of[g]], source_columns, message_id_column)
            batches.append(out)
    for dl in found:   # dead letters only: payload row -> message and object
        g = dl['row']
        if isinstance(dl['record'], str):   # an unparsed element: its text, unpadded
            dl['record'] = dl['record'].strip(' \t')
        dead.append(_with_message(dl, part_ids[msg_of[g]], elem_of[g]))
    return batches + arrow_batches, dead


def _utf8(texts: list, ids: list, at: list, source: str, dead: list, order: list):
    """The messages that are valid UTF-8 (checked at once; one by one only when some
    are not), the others as dead letters."""
    try:
        b'\n'.join(texts).decode('utf-8')   # a newline ends any cut sequence
        return texts, ids, at
    except UnicodeDecodeError:
        pass
    keep = [], [], []
    for data, mid, i in zip(texts, ids, at):
        try:
            data.decode('utf-8')
        except UnicodeDecodeError as e:
            dead.append(_with_message(dead_letter(
                source, None, None, f'invalid message: invalid UTF-8 at byte {e.start}',
                _raw_text(data)), mid, None))
            order.append(i)
            continue
        for lst, v in zip(keep, (data, mid, i)):
            lst.append(v)
    return keep


def _finish(batch: pa.RecordBatch, message_ids: np.ndarray, source_columns: bool,
            message_id_column: str | None) -> pa.RecordBatch:
    """A parsed batch read with its source columns: the message ids appended in
    ``message_id_column`` (when named), the source columns dropped unless asked for."""
    if message_id_column is not None:
        batch = batch.append_column(message_id_column, pa.array(message_ids, pa.string()))
    if not source_columns and SOURCE_COLUMNS[0] in batch.schema.names:
        batch = batch.drop_columns(list(SOURCE_COLUMNS))
    return batch


def _parse_arrow(m, layout, source, points, allow_nan, refuse_zero, source_columns):
    """Batches and dead letters of one Arrow IPC message; damaged bytes are one dead letter."""
    mid = getattr(m, 'message_id', None)
    data = bytes(getattr(m, 'data', None) or b'')

    def whole(reason):
        return [], [_with_message(dead_letter(source, None, None, f'invalid Arrow message: '
                                              f'{reason}', _raw_text(data)), mid, None)]
    try:
        table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
        table.validate(full=True)   # offsets and lengths, before any kernel reads them
        names = table.column_names
        if len(set(names)) != len(names):
            return whole('a column name appears more than once')
        if not table.num_rows:
            return whole('no rows')
        rb_table = table.combine_chunks().to_batches()[0]
        rows = np.arange(table.num_rows, dtype=np.int64)
        out, bad = _check(RowBatch(rb_table, rows, None), layout, source, points, allow_nan,
                          refuse_zero, source_columns)
    except Exception as e:   # whatever the bytes hold: a dead letter, never a crash
        return whole(_first_line(e))
    dead = [_with_message(dl, mid, dl['row']) for dl in bad]
    return ([out] if out is not None and out.num_rows else []), dead
