"""Pub/Sub source and sink: parse_messages against json.loads + numpy, the same rows as a
.jsonl file, hostile messages as dead letters, and one pipeline on the real emulator."""
from __future__ import annotations

import json
import math
import os
import random
import subprocess
import time

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.options.pipeline_options import PipelineOptions

from beamml.transforms.core.errors import BeammlError
from beamml.transforms.io.inspection import inspect_input
from beamml.transforms.io.sinks import to_json_lines
from beamml.transforms.io.sources import read_file_batches
from beamml.transforms.io.rows import to_points
from beamml.transforms.streaming.messages import message_layout, parse_messages
from beamml.transforms.streaming.pubsub import (BatchMessagesFn, ReadPubSubBatches,
                                                WriteDeadLettersToPubSub, WriteJsonToPubSub,
                                                rows_to_json_messages)
from pubsub_emulator import cancel_run, pubsub_emulator, shared_pubsub_emulator

SOURCE = 'projects/beamml-test/subscriptions/points'
DEAD_KEYS = {'file', 'row', 'line', 'reason', 'record', 'message_id'}


def msg(data: bytes, mid, **attrs) -> PubsubMessage:
    return PubsubMessage(data, attrs, message_id=str(mid))


def arrow_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def concat(batches):
    return pa.Table.from_batches(batches) if batches else None


def oracle_points(objects, id_key='id', feature_keys=('features',)):
    """(ids, X) by json.loads and numpy, independent of the readers."""
    ids = [o[id_key] for o in objects]
    if len(feature_keys) == 1:
        X = np.array([o[feature_keys[0]] for o in objects], dtype=np.float64)
    else:
        X = np.array([[o[k] for k in feature_keys] for o in objects], dtype=np.float64)
    return ids, X


def check_counts(messages, batches, dead, expected_records):
    n_ok = sum(b.num_rows for b in batches)
    assert n_ok + len(dead) == expected_records
    for d in dead:
        assert set(d) == DEAD_KEYS, d
        assert d['file'] == SOURCE and d['line'] is None and d['reason']
        assert d['message_id'] in {m.message_id for m in messages}
        json.dumps(d, allow_nan=False)   # a dead letter is JSON as it is


# ----------------------------------------------------------------------------- layout

def test_message_layout_is_the_layout_a_jsonl_file_gives(tmp_path):
    p = tmp_path / 'a.jsonl'
    p.write_text('{"id": 1, "features": [1.0, 2.0, 3.0]}\n')
    assert inspect_input(str(p))[1] == message_layout(dimension=3)
    p.write_text('{"key": "a", "x": 1.5, "y": 2.0, "w": 1.0}\n')
    assert inspect_input(str(p), id_column='key', feature_columns=['x', 'y'],
                         weight_column='w')[1] == message_layout(
        id_column='key', feature_columns=('x', 'y'), dimension=2, id_type='string',
        weight_column='w')
    assert inspect_input(str(p), id_column='key', need_features=False)[1].id_type == \
        message_layout(id_column='key', id_type='string', points=False).id_type


@pytest.mark.parametrize('kwargs', [dict(), dict(dimension=0), dict(dimension=2, id_type='x'),
                                    dict(feature_columns=('a', 'b'), dimension=3),
                                    dict(feature_columns=(), dimension=2),
                                    dict(id_column='id', feature_columns=('id',), dimension=1)])
def test_message_layout_refuses_with_a_one_line_error(kwargs):
    with pytest.raises(BeammlError) as e:
        message_layout(**kwargs)
    assert '\n' not in str(e.value)


# ----------------------------------------------------------------------------- oracle

def test_single_array_and_arrow_messages_match_json_loads_and_numpy():
    rng = np.random.default_rng(0)
    objs = [{'id': int(i), 'features': rng.normal(size=3).round(6).tolist()}
            for i in range(40)]
    messages = [msg(json.dumps(o).encode(), f's{i}') for i, o in enumerate(objs[:10])]
    messages.append(msg(json.dumps(objs[10:30], indent=2).encode(), 'array'))  # pretty, multi-line
    t = pa.table({'id': pa.array([o['id'] for o in objs[30:]], pa.int64()),
                  'features': pa.array([o['features'] for o in objs[30:]],
                                       pa.list_(pa.float64(), 3))})
    messages.append(msg(arrow_bytes(t), 'arrow', format='arrow'))
    batches, dead = parse_messages(messages, message_layout(dimension=3), source=SOURCE)
    assert dead == []
    got = concat(batches)
    assert got.schema == message_layout(dimension=3).points_schema()
    order = np.argsort(got.column('id').to_numpy())
    ids, X = oracle_points(objs)
    assert got.column('id').to_numpy()[order].tolist() == ids
    np.testing.assert_array_equal(
        np.stack(got.column('features').to_numpy(zero_copy_only=False))[order], X)
    check_counts(messages, batches, dead, 40)


def test_string_ids_and_scalar_feature_columns():
    objs = [{'key': f'p{i}', 'x': i * 0.5, 'y': -i, 'z': 1e-3 * i} for i in range(12)]
    layout = message_layout(id_column='key', feature_columns=('x', 'y', 'z'), dimension=3,
                            id_type='string')
    messages = [msg(json.dumps(objs[:5]).encode(), 1), msg(json.dumps(objs[5]).encode(), 2),
                msg(arrow_bytes(pa.Table.from_pylist(objs[6:])), 3, format='arrow')]
    batches, dead = parse_messages(messages, layout, source=SOURCE)
    assert dead == []
    got = concat(batches)
    assert got.schema.field('id').type == pa.string()
    ids, X = oracle_points(objs, 'key', ('x', 'y', 'z'))
    assert got.column('id').to_pylist() == ids   # JSON messages in order, then the Arrow one
    np.testing.assert_array_equal(np.stack(got.column('features').to_numpy(
        zero_copy_only=False)), X)


def test_rows_keep_the_order_of_the_json_messages_and_source_columns_name_the_object():
    messages = [msg(json.dumps([{'id': 3 * k + j, 'features': [j, k]} for j in range(3)]).encode(),
                    k) for k in range(4)]
    batches, dead = parse_messages(messages, message_layout(dimension=2), source=SOURCE,
                                   source_columns=True)
    got = concat(batches)
    assert got.column('id').to_pylist() == list(range(12))
    assert got.column('_row').to_pylist() == [0, 1, 2] * 4
    assert set(got.column('_file').to_pylist()) == {SOURCE}
    assert got.column('_line').null_count == 12


def test_prediction_logs_keep_their_columns():
    rows = [{'id': i, 'cluster': i % 3, 'distance': 0.5 * i, 'tag': 'a'} for i in range(6)]
    messages = [msg(json.dumps(rows[:4]).encode(), 1),
                msg(arrow_bytes(pa.Table.from_pylist(rows[4:])), 2, format='arrow'),
                msg(b'{"cluster": 1}', 3)]
    batches, dead = parse_messages(messages, message_layout(points=False), source=SOURCE,
                                   points=False)
    assert [b.to_pylist() for b in batches] == [rows[:4], rows[4:]]
    assert [(d['message_id'], d['row'], d['reason']) for d in dead] == [('3', 0, 'missing id')]


# ----------------------------------------------------------------------------- hostile

def _hostile():
    good = arrow_bytes(pa.table({'id': [1, 2], 'features': [[1.0, 2.0], [3.0, 4.0]]}))
    return [
        (b'\xff\xfe{"id": 1}', 'invalid UTF-8'),
        (b'not json', 'not a JSON object or array of objects'),
        (b'', 'empty message'),
        (b'   \n ', 'empty message'),
        (b'42', 'not a JSON object or array of objects'),
        (b'null', 'not a JSON object or array of objects'),
        (b'"text"', 'not a JSON object or array of objects'),
        (b'[]', 'empty JSON array'),
        (b' [ \n ] ', 'empty JSON array'),
        (b'{"id": 1, "features": [1, 2]', 'unbalanced brackets'),
        (b'[{"id": 1, "features": [1, 2]}', 'unbalanced brackets'),
        (b'{"id": 1}]', 'unbalanced brackets'),
        (b'{"id": "a}', 'unterminated string'),
        (b'{"id": 1}{"id": 2}', 'more than one JSON value'),
        (b'{"id": 1}\n{"id": 2}', 'more than one JSON value'),
        (b'[{"id": 1},,{"id": 2}]', 'empty element'),
        (b'[{"id": 1},]', 'empty element'),
        (b'{"id": "a\nb", "features": [1, 2]}', 'line break in a string'),
        (b'garbage', 'invalid Arrow message', {'format': 'arrow'}),
        (good[:len(good) // 2], 'invalid Arrow message', {'format': 'arrow'}),
        (good[:8], 'invalid Arrow message', {'format': 'arrow'}),
        (b'', 'invalid Arrow message', {'format': 'arrow'}),
        (arrow_bytes(pa.table({'id': pa.array([], pa.int64())})), 'no rows',
         {'format': 'arrow'}),
    ]


def test_every_malformed_message_is_one_dead_letter_with_its_id_and_reason():
    cases = _hostile()
    messages = [msg(c[0], f'h{i}', **(c[2] if len(c) > 2 else {})) for i, c in enumerate(cases)]
    batches, dead = parse_messages(messages, message_layout(dimension=2), source=SOURCE)
    assert batches == []
    check_counts(messages, batches, dead, len(cases))
    by_id = {d['message_id']: d for d in dead}
    for i, c in enumerate(cases):
        d = by_id[f'h{i}']
        assert c[1] in d['reason'], (c, d)
        assert d['row'] is None
        assert d['record'] == c[0].decode('utf-8', 'backslashreplace')


def test_bad_rows_are_dead_letters_of_their_object_and_the_rest_is_kept():
    messages = [
        msg(b'[{"id": 1, "features": [1, 2]}, {"id": 2, "features": [1]},'
            b' {"features": [1, 2]}, 7, [1, 2], {"id": 3, "features": [1, "x"]},'
            b' {"id": 4, "features": ["NaN", 1]}, {"id": 5, "features": [1, 2],}]', 'm'),
        msg(b'{"id": 6, "features": [5, 6, 7]}', 'single'),
        msg(arrow_bytes(pa.table({'id': [7, None], 'features': [[1.0, 2.0], [1.0, 2.0]]})),
            'arrow', format='arrow'),
        msg(arrow_bytes(pa.table({'id': ['a'], 'features': [[1.0, 2.0]]})), 'arrow-str',
            format='arrow'),
    ]
    batches, dead = parse_messages(messages, message_layout(dimension=2), source=SOURCE)
    assert concat(batches).column('id').to_pylist() == [1, 7]
    check_counts(messages, batches, dead, 8 + 1 + 2 + 1)
    got = {(d['message_id'], d['row']): d['reason'] for d in dead}
    assert got == {
        ('m', 1): 'dimension 1, expected 2', ('m', 2): 'missing id',
        ('m', 3): 'invalid JSON line: line is not a JSON object',
        ('m', 4): 'invalid JSON line: line is not a JSON object',
        ('m', 5): got[('m', 5)], ('m', 6): 'NaN feature value',
        ('m', 7): got[('m', 7)], ('single', 0): 'dimension 3, expected 2',
        ('arrow', 1): 'missing id', ('arrow-str', 0): 'id is not an integer'}
    assert got[('m', 5)].startswith('invalid JSON line')   # pyarrow's, as in a file
    assert got[('m', 7)].startswith('invalid JSON line')
    records = {(d['message_id'], d['row']): d['record'] for d in dead}
    assert records[('m', 1)] == {'id': 2, 'features': [1.0]}
    assert records[('m', 3)] == '7'


def test_mutated_messages_never_raise_and_every_record_is_counted():
    rnd = random.Random(7)
    layout = message_layout(dimension=2)
    seeds = [b'[{"id": 1, "features": [1.5, 2]}, {"id": "q\\"x", "features": [3, 4]}]',
             b'{"id": 9, "features": [1e300, -2]}',
             arrow_bytes(pa.table({'id': [1, 2], 'features': [[1.0, 2.0], [3.0, 4.0]]}))]
    messages = []
    for i in range(300):
        k = i % 3
        data = bytearray(seeds[k])
        for _ in range(rnd.randint(1, 4)):
            op = rnd.random()
            pos = rnd.randrange(len(data))
            if op < 0.4:
                data[pos] = rnd.randrange(256)
            elif op < 0.7:
                del data[pos:pos + rnd.randint(1, 5)]
            else:
                data[pos:pos] = rnd.choice([b'[', b']', b'{', b'}', b',', b'"', b'\\', b'\n',
                                            b'\xc3', b'NaN', b'null'])
        messages.append(msg(bytes(data), i, **({'format': 'arrow'} if k == 2 else {})))
    batches, dead = parse_messages(messages, layout, source=SOURCE)
    for m in messages:   # each message alone: its records, counted once
        b, d = parse_messages([m], layout, source=SOURCE)
        n = sum(x.num_rows for x in b) + len(d)
        assert n >= 1
    n_all = sum(len(parse_messages([m], layout, source=SOURCE)[1]) +
                sum(x.num_rows for x in parse_messages([m], layout, source=SOURCE)[0])
                for m in messages)
    check_counts(messages, batches, dead, n_all)
    for b in batches:
        assert b.schema == layout.points_schema()
        assert np.isfinite(np.stack(b.column('features').to_numpy(zero_copy_only=False))).all()


# ----------------------------------------------------------------------------- same as a file

def test_the_same_rows_in_a_jsonl_file_and_in_a_message_give_the_same_batch_and_reasons(
        tmp_path):
    lines = ['{"id": 1, "features": [1, 2]}', '{"id": 2, "features": [1]}',
             '{"features": [3, 4]}', '{"id": "7", "features": [5, 6]}',
             '{"id": 3, "features": [1, "x"]}', '{"id": 4, "features": ["Infinity", 1]}',
             '{"id": 5, "features": [1, 2], "w": 1}', '{"id": 6.5, "features": [0, 0]}',
             '{"id": 7, "features": [null, 1]}', '{"id": 8, "features": {"a": 1}}',
             '{"id": 9, "features": [0.25, -1e-7]}', '{"id": 10, "features": [1, 2],}']
    path = tmp_path / 'points.jsonl'
    path.write_text('\n'.join(lines) + '\n')
    layout = message_layout(dimension=2)
    file_batches, file_dead = [], []
    for item in read_file_batches(str(path), layout):
        if isinstance(item, dict):
            file_dead.append(item)
            continue
        out, d = to_points(item, layout, str(path))
        file_dead += d
        if out is not None:
            file_batches.append(out)
    for messages in ([msg(('[' + ', '.join(lines) + ']').encode(), 'all')],
                     [msg(ln.encode(), f'm{i}') for i, ln in enumerate(lines)]):
        batches, dead = parse_messages(messages, layout, source=SOURCE)
        assert concat(batches).equals(concat(file_batches))
        if len(messages) == 1:
            rows = {d['row']: (d['reason'], d['record']) for d in dead}
        else:
            rows = {int(d['message_id'][1:]): (d['reason'], d['record']) for d in dead}
        assert rows == {d['row']: (d['reason'], d['record']) for d in file_dead}
        assert len(rows) >= 8


def test_the_json_split_of_many_messages_is_each_messages_own():
    """_json_lines_many over a list: each message's lines and refusal as if it were alone
    (a bad message never shifts its neighbours' strings or brackets), and against
    json.loads: a message it parses to an object or a non-empty array is accepted with
    one line per object."""
    from beamml.transforms.streaming.messages import _json_lines_many
    rng = random.Random(7)
    pieces = ['{"id": 1, "features": [1, 2]}', '[{"id": 2}, {"id": 3}]', '[]', '[ ]', '{',
              '}', '"', '\\"', '\\', '[{"a": "x,y]"}, {"b": "\\"}"}]', '\n', ' ', ',',
              '{"s": "a\nb"}', '[{},]', '{"a": 1}{"b": 2}', '[1, 2]', '', 'null', '\r\n',
              '{"k": "\\\\"}', '[{"id": 4},\n {"id": 5}]', '{"\u00e9": "é"}']
    datas = [''.join(rng.choice(pieces) for _ in range(rng.randint(0, 4))).encode()
             for _ in range(400)] + [b'', b'{"id": 9}']
    payload, counts, reasons = _json_lines_many(datas)
    alone = [_json_lines_many([d]) for d in datas]
    assert reasons == [r[2][0] for r in alone]
    assert counts.tolist() == [int(r[1][0]) for r in alone]
    assert payload == b''.join(r[0] for r in alone)
    assert payload.count(b'\n') == counts.sum()
    accepted = 0
    for d, n, reason in zip(datas, counts.tolist(), reasons):
        try:
            value = json.loads(d)
        except ValueError:
            continue
        if isinstance(value, dict) or (isinstance(value, list) and value):
            assert reason is None and n == (1 if isinstance(value, dict) else len(value)), d
            accepted += 1
        else:
            assert reason is not None, d
    assert accepted > 20 and sum(r is not None for r in reasons) > 100


# ----------------------------------------------------------------------------- sinks

def test_rows_to_json_messages_are_the_jsonl_sinks_lines():
    t = pa.table({'id': pa.array([1, 2, 3], pa.int64()),
                  'features': pa.array([[1.0, math.nan], [math.inf, 2.0], [0.5, -0.0]],
                                       pa.list_(pa.float64(), 2)),
                  'name': ['a"b', 'NaN', None]})
    out = rows_to_json_messages(t.to_batches()[0])
    assert b'\n'.join(out) + b'\n' == to_json_lines(t)
    assert [json.loads(m) for m in out] == [
        {'id': 1, 'features': [1.0, 'NaN'], 'name': 'a"b'},
        {'id': 2, 'features': ['Infinity', 2.0], 'name': 'NaN'},
        {'id': 3, 'features': [0.5, -0.0], 'name': None}]
    assert rows_to_json_messages(t.slice(0, 0)) == []
    # and they read back as the same points
    b, d = parse_messages([msg(m, i) for i, m in enumerate(out)],
                          message_layout(dimension=2), source=SOURCE, allow_nan=True)
    assert d == []
    back = concat(b)
    assert back.column('id').to_pylist() == [1, 2, 3]
    np.testing.assert_array_equal(np.stack(back.column('features').to_numpy(zero_copy_only=False)),
                                  [[1.0, math.nan], [math.inf, 2.0], [0.5, -0.0]])


def _assign_rows(n: int, per_message: int = 1) -> pa.RecordBatch:
    """Rows as ``assign --streaming`` writes them (a window, a model version, message ids)."""
    start = pa.array([1_796_000_000_000_000] * n, pa.timestamp('us', tz='UTC'))
    return pa.record_batch({
        'id': pa.array(range(n), pa.int64()), 'cluster': pa.array(np.arange(n) % 3),
        'distance': pa.array(np.r_[np.linspace(0, 1, n - 1), math.nan]),
        'model_version': pa.array(['v1'] * (n - 1) + [None]),
        'window_start': start, 'window_end': pa.array(np.arange(n) * 1000, pa.timestamp(
            'us', tz='UTC')), 'timing': pa.array(['on_time'] * (n - 1) + ['NaN']),
        'message_id': pa.array([f'm{i // per_message}' for i in range(n)])})


def test_output_message_formats_carry_every_row_once_in_order():
    """json: the JSON-lines sink's lines; json_array: arrays of those very objects, cut at
    max_rows rows and about max_bytes bytes; arrow: Arrow IPC tables with format=arrow.
    Every row once, in order, its message_id kept (how a reader drops duplicates)."""
    from beamml.transforms.streaming.publish import MESSAGE_FORMATS, encode_rows
    from beamml.transforms.streaming.windows import iso_times
    batch = _assign_rows(2500, per_message=1000)
    lines = to_json_lines(iso_times(batch)).split(b'\n')[:-1]
    assert MESSAGE_FORMATS[0] == 'json'   # the default: one object per row, as before
    assert [d for d, a in encode_rows(batch, 'json')] == lines
    assert encode_rows(batch) == encode_rows(batch, 'json')
    objects = [json.loads(line) for line in lines]
    for max_rows, max_bytes, sizes in ((1000, 1 << 20, [1000, 1000, 500]),
                                       (700, 1 << 20, [700, 700, 700, 400]),
                                       (1000, 10_000, None)):
        out = encode_rows(batch, 'json_array', max_rows=max_rows, max_bytes=max_bytes)
        arrays = [json.loads(d) for d, a in out]
        assert all(a == {} for _, a in out) and all(isinstance(x, list) for x in arrays)
        assert [o for x in arrays for o in x] == objects
        if sizes is not None:
            assert [len(x) for x in arrays] == sizes
        else:   # cut by bytes: every message about 10 kB at most (one row more at most)
            row = max(len(line) for line in lines) + 1
            assert len(arrays) > 2500 * 100 // 10_000
            assert all(len(d) <= 10_000 + row for d, _ in out)
    out = encode_rows(batch, 'arrow', max_rows=1000)
    assert [a for _, a in out] == [{'format': 'arrow'}] * 3
    back = pa.concat_tables([pa.ipc.open_stream(d).read_all() for d, _ in out])
    whole = pa.Table.from_batches([batch])
    assert back.drop_columns(['distance']).equals(whole.drop_columns(['distance']))
    np.testing.assert_array_equal(back.column('distance').to_numpy(),   # NaN too
                                  whole.column('distance').to_numpy())
    assert encode_rows(batch.slice(0, 0), 'json_array') == []
    with pytest.raises(BeammlError):
        encode_rows(batch, 'csv')
    with pytest.raises(BeammlError):
        WriteJsonToPubSub('projects/beamml-test/topics/abc', 'csv')


@pytest.mark.parametrize('kwargs', [
    dict(), dict(subscription=SOURCE, topic='projects/beamml-test/topics/abc'),
    dict(subscription='projects/p/subscriptions/abc'),
    dict(subscription='projects/beamml-test/topics/abc'),
    dict(topic='projects/beamml-test/topics/ab'),
    dict(subscription='beamml-test/subscriptions/abc'),
    dict(subscription=SOURCE, max_batch_size=0),
    dict(subscription=SOURCE, max_batch_duration_secs=1.0)])
def test_read_pubsub_batches_refuses_bad_parameters_in_one_line(kwargs):
    with pytest.raises(BeammlError) as e:
        ReadPubSubBatches(layout=message_layout(dimension=2), **kwargs)
    assert '\n' not in str(e.value)


def test_sinks_refuse_a_bad_topic_name():
    for cls in (WriteJsonToPubSub, WriteDeadLettersToPubSub):
        with pytest.raises(BeammlError):
            cls('projects/beamml-test/subscriptions/abc')


def test_batches_keep_the_earliest_event_time_and_the_window():
    from apache_beam.testing.util import assert_that, equal_to
    from apache_beam.transforms.window import FixedWindows, TimestampedValue
    with beam.Pipeline('FnApiRunner') as p:
        got = (p | beam.Create([(i, t) for i, t in enumerate([3, 1, 12, 15, 5])])
               | beam.Map(lambda e: TimestampedValue(e[0], e[1]))
               | beam.WindowInto(FixedWindows(10))
               | beam.ParDo(BatchMessagesFn(2))
               | beam.Map(lambda b, ts=beam.DoFn.TimestampParam,
                          w=beam.DoFn.WindowParam: (sorted(b), float(ts), float(w.start))))
        # within one bundle: [0, 1] full at 2 (earliest 1), [4] alone; [2, 3] in [10, 20)
        assert_that(got, equal_to([([0, 1], 1.0, 0.0), ([4], 5.0, 0.0),
                                   ([2, 3], 12.0, 10.0)]))


# ----------------------------------------------------------------------------- emulator

@pytest.fixture(scope='module')
def emulator():
    with shared_pubsub_emulator() as emu:
        yield emu


def test_end_to_end_on_the_emulator(emulator):
    emu = emulator
    t_in, t_out, t_dlq = emu.topic(), emu.topic(), emu.topic()
    sub = emu.subscription(t_in)
    s_out, s_dlq = emu.subscription(t_out), emu.subscription(t_dlq)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(60, 3)).round(5)
    objs = [{'id': i, 'features': X[i].tolist()} for i in range(60)]
    good = ([json.dumps(o).encode() for o in objs[:20]]                         # singles
            + [json.dumps(objs[20:40]).encode()]                              # an array
            + [(arrow_bytes(pa.Table.from_pylist(objs[40:], schema=pa.schema(
                [('id', pa.int64()), ('features', pa.list_(pa.float64(), 3))]))),
                {'format': 'arrow'})])                                          # Arrow
    bad = [b'\xff not utf-8', b'[]', b'{"id": 1, "features": [1, 2, 3]',
           (b'junk', {'format': 'arrow'}),
           b'[{"id": 100, "features": [1, 2]}, {"features": [1, 2, 3]}]']
    ids = emu.publish(t_in, good + bad)
    bad_ids = set(ids[len(good):])

    p = beam.Pipeline(options=PipelineOptions([], runner='BundleBasedDirectRunner',
                                              streaming=True))
    read = p | 'ReadPoints' >> ReadPubSubBatches(sub, layout=message_layout(dimension=3),
                                                 max_batch_size=50)
    (read.batches
     | 'AddNorm' >> beam.Map(lambda b: b.append_column('norm', pa.array(np.linalg.norm(
         np.stack(b.column('features').to_numpy(zero_copy_only=False)), axis=1))))
     | 'WriteRows' >> WriteJsonToPubSub(t_out))
    read.errors | 'WriteErrors' >> WriteDeadLettersToPubSub(t_dlq)
    result = p.run()
    try:
        out = emu.pull(s_out, 60, timeout=40, settle=1.0)
        dlq = emu.pull(s_dlq, 6, timeout=20, settle=0.5)
    finally:
        cancel_run(result, emu, t_in)
    rows = [json.loads(m.data) for m in out]
    assert sorted(r['id'] for r in rows) == list(range(60))   # each good point once
    for r in rows:
        assert r['features'] == objs[r['id']]['features']
        assert r['norm'] == pytest.approx(float(np.linalg.norm(X[r['id']])), rel=1e-12)
    letters = [json.loads(m.data) for m in dlq]
    assert len(letters) == 6
    assert {d['message_id'] for d in letters} == bad_ids
    assert all(d['file'] == sub and d['reason'] for d in letters)
    assert sorted((d['row'], d['reason']) for d in letters if d['row'] is not None) == [
        (0, 'dimension 2, expected 3'), (1, 'missing id')]


def test_batch_output_messages_on_the_emulator(emulator):
    """The same rows as JSON arrays and as Arrow tables, published by the local sink:
    every id once in each, each row naming the message it came from (singles, an
    array, an Arrow table), a batch message holding many rows."""
    emu = emulator
    t_in, t_arr, t_arrow = emu.topic(), emu.topic(), emu.topic()
    sub, s_arr, s_arrow = (emu.subscription(t_in), emu.subscription(t_arr),
                           emu.subscription(t_arrow))
    objs = [{'id': i, 'features': [float(i), 1.0]} for i in range(300)]
    ids = emu.publish(t_in, [json.dumps(o).encode() for o in objs[:100]]
                      + [json.dumps(objs[100:200]).encode(),
                         (arrow_bytes(pa.Table.from_pylist(objs[200:], schema=pa.schema(
                             [('id', pa.int64()), ('features', pa.list_(pa.float64(), 2))]))),
                          {'format': 'arrow'})])
    message_of = {i: ids[min(i, 100 + (i - 100) // 100)] for i in range(300)}
    p = beam.Pipeline(options=PipelineOptions([], runner='BundleBasedDirectRunner',
                                              streaming=True))
    read = p | 'Read' >> ReadPubSubBatches(sub, layout=message_layout(dimension=2),
                                           message_id_column='message_id')
    read.batches | 'Arrays' >> WriteJsonToPubSub(t_arr, 'json_array')
    read.batches | 'Arrow' >> WriteJsonToPubSub(t_arrow, 'arrow')
    result = p.run()
    try:
        arrays, tables = [], []
        deadline = time.monotonic() + 40
        while (sum(map(len, arrays)) < 300 or sum(t.num_rows for t in tables) < 300) \
                and time.monotonic() < deadline:
            arrays += [json.loads(m.data) for m in emu.pull(s_arr, 1, timeout=0.5)]
            tables += [pa.ipc.open_stream(m.data).read_all()
                       for m in emu.pull(s_arrow, 1, timeout=0.5)
                       if m.attributes['format'] == 'arrow']
    finally:
        cancel_run(result, emu, t_in)
    rows = [r for a in arrays for r in a]
    assert sorted(r['id'] for r in rows) == list(range(300))
    assert all(r['message_id'] == message_of[r['id']] and r['features'] == [r['id'], 1.0]
               for r in rows)
    assert max(map(len, arrays)) > 1 and len(arrays) < 300
    table = pa.concat_tables(tables)
    assert sorted(table.column('id').to_pylist()) == list(range(300))
    assert all(message_of[i] == m for i, m in zip(table.column('id').to_pylist(),
                                                  table.column('message_id').to_pylist()))


def test_the_emulator_helper_restores_the_environment_and_leaves_no_process():
    before = os.environ.get('PUBSUB_EMULATOR_HOST')
    with pubsub_emulator() as emu:
        pid = emu.proc.pid
        assert os.environ['PUBSUB_EMULATOR_HOST'] == emu.host
        topic = emu.topic('abc-topic')
        sub = emu.subscription(topic)
        emu.publish(topic, [b'one', (b'two', {'k': 'v'})])
        got = emu.pull(sub, 2, timeout=20)
        assert sorted((m.data, dict(m.attributes)) for m in got) == [
            (b'one', {}), (b'two', {'k': 'v'})]
    assert os.environ.get('PUBSUB_EMULATOR_HOST') == before
    ps = subprocess.run(['ps', '-o', 'pid=', '-g', str(pid)], capture_output=True, text=True)
    assert ps.stdout.strip() == ''   # nothing left in the emulator's process group
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_an_array_split_respects_strings_escapes_and_nesting():
    rows = [{'id': 1, 's': 'a,b]}', 'n': {'x': [1, 5], 'y': '}'}},
            {'id': 2, 's': 'q"uote\\', 'n': {'x': [], 'z': None}},
            {'id': 3, 's': '\\\\",{[', 'n': {'x': [2], 'z': 'é\u2028'}},
            {'id': 4, 's': '', 'n': {'x': [3]}}]
    data = json.dumps(rows, indent=1, ensure_ascii=False).encode()
    batches, dead = parse_messages([msg(data, 1)], message_layout(points=False), source=SOURCE,
                                   points=False)
    assert dead == []
    assert concat(batches).column('s').to_pylist() == [r['s'] for r in rows]
    assert concat(batches).column('id').to_pylist() == [1, 2, 3, 4]
    assert [n['x'] for n in concat(batches).column('n').to_pylist()] == [[1, 5], [], [2], [3]]


@pytest.mark.parametrize('flag, value, kind', [
    ('--input_subscription', 'projects/my-project/subs/points', 'subscription'),
    ('--input_topic', 'projects/my-project/topicz/points', 'topic'),
    ('--output_topic', 'topics/out', 'topic'),
    ('--dead_letter_topic', 'projects/my-project/topics/x', 'topic'),   # id too short
])
def test_a_bad_pubsub_name_on_the_command_line_names_its_flag(flag, value, kind, tmp_path,
                                                              capsys):
    """The one line names the flag the user gave (--input_subscription, not the
    transform's own parameter) and says which kind of name it must be."""
    from beamml.pipelines.__main__ import main
    from beamml.transforms.model import CentroidModel
    CentroidModel(np.array([[0.0, 0.0], [1.0, 1.0]])).save(str(tmp_path / 'm'))
    argv = ['assign', '--streaming', '--model', str(tmp_path / 'm'), '--dimension', '2',
            '--input_subscription', 'projects/my-project/subscriptions/points',
            '--output_topic', 'projects/my-project/topics/out']
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    elif flag == '--input_topic':
        argv[argv.index('--input_subscription'):argv.index('--input_subscription') + 2] = \
            [flag, value]
    else:
        argv += [flag, value]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f'beamml assign: error: {flag} {value!r} is not a Pub/Sub {kind} name: '
                   f'write projects/<project>/{kind}s/<id> (project: 6-30 lowercase letters, '
                   'digits, dashes; id: 3-255 characters, a letter first)'], err


def test_message_ids_name_the_message_of_every_row_and_a_refused_message_is_a_dead_letter():
    """message_id_column: each row's message id (JSON singles, arrays, Arrow), with or
    without source columns; a message the read refused (bad event time) is one dead letter."""
    from beamml.transforms.streaming.local_pubsub import RefusedMessage
    messages = [msg(b'[{"id": 1, "features": [1, 2]}, {"id": 2, "features": [1]},'
                    b' {"id": 3, "features": [3, 4]}]', 'arr'),
                msg(b'{"id": 4, "features": [5, 6]}', 'one'),
                msg(arrow_bytes(pa.table({'id': [5, 6], 'features': [[1.0, 2.0], [3.0, 4.0]]})),
                    'arrow', format='arrow'),
                RefusedMessage(msg(b'{"id": 7, "features": [7, 8]}', 'late'), 'invalid event '
                               "time: attribute 'ts' is 'x', not RFC 3339 or milliseconds "
                               'since the epoch')]
    layout = message_layout(dimension=2)
    for source_columns in (False, True):
        batches, dead = parse_messages(messages, layout, source=SOURCE,
                                       source_columns=source_columns,
                                       message_id_column='message_id')
        got = concat(batches)
        assert got.column('id').to_pylist() == [1, 3, 4, 5, 6]
        assert got.column('message_id').to_pylist() == ['arr', 'arr', 'one', 'arrow', 'arrow']
        assert got.schema.names[-1] == 'message_id'
        assert ('_row' in got.schema.names) == source_columns
        if source_columns:
            assert got.column('_row').to_pylist() == [0, 2, 0, 0, 1]
        assert sorted((d['message_id'], d['row']) for d in dead) == [('arr', 1), ('late', None)]
        refused = [d for d in dead if d['message_id'] == 'late'][0]
        assert refused['reason'].startswith("invalid event time: attribute 'ts' is 'x'")
        assert refused['record'] == '{"id": 7, "features": [7, 8]}'
    plain, _ = parse_messages(messages, layout, source=SOURCE)
    assert concat(plain).schema == layout.points_schema()   # no message_id unless asked
    with pytest.raises(BeammlError):
        ReadPubSubBatches(SOURCE, layout=message_layout(id_column='message_id', dimension=2),
                          message_id_column='message_id')
