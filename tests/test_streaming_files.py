"""transforms/streaming/files: a watched pattern read file by file, as the batch readers read.

The runs are on the FnApiRunner (the polls as a splittable DoFn, as Dataflow runs them)
and, where marked, on the BundleBasedDirectRunner (the local streaming runner: the polls
as local_files.py's step); each polls every fraction of a second and stops by itself
after a few seconds. The oracles are the batch reader (ReadPoints on the same files, or the
batch reader's own error for a file it refuses) and numpy on the generated values.
"""
from __future__ import annotations

import collections
import json
import os
import threading
import time
import uuid

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Timestamp

from beamml.pipelines._platform.main import record_counts
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.io import ReadPoints, ReadTable, plan_reads, read_file_batches
from beamml.transforms.streaming.files import (ReadWatchedPoints, ReadWatchedTable, _PollFn,
                                               layout_from_parameters)

FN_API = 'apache_beam.runners.portability.fn_api_runner.FnApiRunner'
BUNDLE_BASED = 'BundleBasedDirectRunner'
INTERVAL = 0.25
STOP = 3.0

# What the collecting DoFns saw, by run (the FnApiRunner runs them in this process).
_SEEN: dict[str, list] = collections.defaultdict(list)


class _Collect(beam.DoFn):
    def __init__(self, key: str, kind: str):
        self.key, self.kind = key, kind

    def process(self, x, ts=beam.DoFn.TimestampParam):
        _SEEN[self.key].append((self.kind, ts, time.time(), x))


class _CountBundles(beam.DoFn):
    def __init__(self, key: str):
        self.key = key

    def start_bundle(self):
        _SEEN[self.key].append(('bundle', None, time.time(), None))

    def process(self, x, ts=beam.DoFn.TimestampParam):
        _SEEN[self.key].append(('poll', ts, time.time(), x))


def _options(streaming=False, runner=FN_API):
    return PipelineOptions([], runner=runner, streaming=streaming)


def _run(make_read, writes=(), runner=FN_API):
    """Run a watched read; ``writes``: (seconds after the start, function) run from a
    thread. Returns (batches, errors, counts, start, seconds the run took), each
    output item as (event time, wall time, element)."""
    key = uuid.uuid4().hex
    p = beam.Pipeline(options=_options(streaming=True, runner=runner))   # as --streaming
    res = p | 'Watch' >> make_read()
    res.batches | 'CollectBatches' >> beam.ParDo(_Collect(key, 'batch'))
    res.errors | 'CollectErrors' >> beam.ParDo(_Collect(key, 'error'))
    start = time.time()

    def writer():
        for at, fn in writes:
            time.sleep(max(0.0, start + at - time.time()))
            fn()
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    result = p.run()
    result.wait_until_finish()
    took = time.time() - start
    thread.join(5)
    seen = _SEEN.pop(key, [])
    batches = [(ts, wall, x) for kind, ts, wall, x in seen if kind == 'batch']
    errors = [(ts, wall, x) for kind, ts, wall, x in seen if kind == 'error']
    return batches, errors, record_counts(result), start, took


def _batch_read(pattern, **kw):
    """The oracle: batch ReadPoints on the same files -> (rows, dead letters, counts)."""
    key = uuid.uuid4().hex
    p = beam.Pipeline(options=_options())
    res = p | 'Read' >> ReadPoints(pattern, **kw)
    res.batches | 'CollectBatches' >> beam.ParDo(_Collect(key, 'batch'))
    res.errors | 'CollectErrors' >> beam.ParDo(_Collect(key, 'error'))
    result = p.run()
    result.wait_until_finish()
    seen = _SEEN.pop(key, [])
    return (_rows([x for kind, _, _, x in seen if kind == 'batch']),
            _sorted_dead([x for kind, _, _, x in seen if kind == 'error']),
            record_counts(result))


def _rows(batches):
    out = []
    for b in batches:
        d = b.to_pydict()
        out += [tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in
                      zip(d, vals)) for vals in zip(*d.values())]
    return sorted(out, key=repr)


def _sorted_dead(dead):
    return sorted(dead, key=lambda d: (d['file'], -1 if d['row'] is None else d['row'],
                                       d['reason']))


def _replace_into(tmp_path, name, write):
    """Write a file outside the watched folder, then rename it in (how a local writer
    should deliver a file)."""
    def deliver():
        staging = tmp_path / 'staging'
        staging.mkdir(exist_ok=True)
        write(str(staging / name))
        os.replace(staging / name, tmp_path / 'in' / name)
    return deliver


# ----------------------------------------------------------------------------- data

def _values(seed, n=20, d=3):
    X = np.random.default_rng(seed).normal(size=(n, d)) * 10
    X[3, 1] = np.nan   # refused: NaN feature value
    return X


def _write(path, fmt, ids, X):
    """A file of ``fmt`` with ids and features X, and (text formats) two bad rows."""
    if fmt == 'npy':
        np.save(path, X)   # (path ends in .npy)
        return
    if fmt == 'parquet':
        cols = {'id': pa.array(ids, pa.int64())}
        cols.update({f'x{j}': X[:, j] for j in range(X.shape[1])})
        pq.write_table(pa.table(cols), path)
    elif fmt == 'csv':
        cols = {'id': pa.array(ids, pa.int64())}
        cols.update({f'x{j}': X[:, j] for j in range(X.shape[1])})
        sink = pa.BufferOutputStream()
        pcsv.write_csv(pa.table(cols), sink)
        body = sink.getvalue().to_pybytes()
        body += b'9999,1.0,abc,2.0\n9998,1.0\n'   # a word, and a row of 2 fields
        with open(path, 'wb') as f:
            f.write(body)
    elif fmt == 'jsonl':
        with open(path, 'w') as f:
            for i, row in zip(ids, X.tolist()):
                f.write(json.dumps({'id': i, 'features': row}) + '\n')
            f.write('not json\n')
            f.write(json.dumps({'id': 9997, 'features': [1.0, 2.0]}) + '\n')   # dimension 2


def _features(rows):
    """(ids, features) of _rows() output, ordered by id."""
    rows = sorted(rows, key=lambda r: dict(r)['id'])
    return [dict(r)['id'] for r in rows], np.array([dict(r)['features'] for r in rows])


# ----------------------------------------------------------------------------- tests

@pytest.mark.parametrize('fmt,runner', [('parquet', FN_API), ('csv', FN_API), ('jsonl', FN_API),
                                        ('npy', FN_API), ('csv', BUNDLE_BASED),
                                        ('npy', BUNDLE_BASED)])
def test_new_files_read_once_as_the_batch_reader_reads_them(tmp_path, fmt, runner):
    (tmp_path / 'in').mkdir()
    Xa, Xb = _values(1), _values(2)
    ids_a, ids_b = list(range(0, 20)), list(range(100, 120))
    _write(str(tmp_path / 'in' / f'a.{fmt}'), fmt, ids_a, Xa)   # there at the start
    pattern = str(tmp_path / 'in' / f'*.{fmt}')
    late = _replace_into(tmp_path, f'b.{fmt}', lambda p: _write(p, fmt, ids_b, Xb))

    batches, errors, counts, start, took = _run(
        lambda: ReadWatchedPoints(pattern, interval=INTERVAL, stop_after=STOP),
        writes=[(1.2, late)], runner=runner)

    # it ends by itself at stop_after (plus the start of the runner and the last read)
    assert STOP - INTERVAL <= took < STOP + 6
    got_rows = _rows([b for _, _, b in batches])
    want_rows, want_dead, want_counts = _batch_read(pattern)
    assert got_rows == want_rows                       # each file once, as ReadPoints reads
    assert _sorted_dead([e for _, _, e in errors]) == want_dead
    assert counts == want_counts
    assert counts['records_read'] == counts['records_ok'] + counts['records_refused']

    # numpy on the generated values: every finite row of both files, exactly
    ids, feats = _features(got_rows)
    if fmt == 'npy':
        ok = [f'a.npy:{i}' for i in range(20) if i != 3] + [f'b.npy:{i}' for i in range(20)
                                                            if i != 3]
        assert sorted(ids) == sorted(ok)
        by_id = dict(zip(ids, feats))
        for name, X in (('a', Xa), ('b', Xb)):
            np.testing.assert_array_equal(
                np.array([by_id[f'{name}.npy:{i}'] for i in range(20) if i != 3]),
                np.delete(X, 3, axis=0))
    else:
        assert ids == [ids_a[i] for i in range(20) if i != 3] + [ids_b[i] for i in range(20)
                                                                 if i != 3]
        np.testing.assert_array_equal(
            feats, np.vstack([np.delete(Xa, 3, axis=0), np.delete(Xb, 3, axis=0)]))
    assert {e['reason'] for e in want_dead} >= {'NaN feature value'}

    # event times: the poll that took each file, within the run, b's after a's
    first_ids = [(ts, b.column('id')[0].as_py()) for ts, _, b in batches]
    ts_a = {ts for ts, i in first_ids if i in ids_a or str(i).startswith('a.')}
    ts_b = {ts for ts, _, b in batches} - ts_a
    assert len(ts_a) == 1 and len(ts_b) == 1
    (ta,), (tb,) = ts_a, ts_b
    assert Timestamp.of(start) <= ta < tb < Timestamp.of(start + STOP + 2)
    wall_b = min(w for ts, w, _ in batches if ts == tb)
    assert wall_b >= start + 1.2      # read after it landed, not at the end of the run
    assert wall_b < start + STOP + 1  # ... and while the watch was running


@pytest.mark.parametrize('runner', [FN_API, BUNDLE_BASED])
def test_malformed_files_mid_stream_are_dead_letters_and_the_stream_goes_on(tmp_path, runner):
    (tmp_path / 'in').mkdir()
    X = _values(3)
    good = str(tmp_path / 'in' / 'a.csv')
    _write(good, 'csv', list(range(20)), X)
    pattern = str(tmp_path / 'in' / '*.csv')
    want_a, dead_a, _ = _batch_read(good)

    def binary(p):
        with open(p, 'wb') as f:
            f.write(b'\x00\x01garbage\x00\n1,2\n')

    def missing_column(p):
        pcsv.write_csv(pa.table({'id': [1, 2], 'x0': [1.0, 2.0], 'x1': [3.0, 4.0]}), p)

    def empty(p):
        open(p, 'wb').close()

    def rewrite_a():   # the same path again: not read again
        _write(good, 'csv', list(range(500, 520)), _values(4))

    Xc = _values(5)
    writes = [(0.8, _replace_into(tmp_path, 'm1.csv', binary)),
              (0.8, _replace_into(tmp_path, 'm2.csv', missing_column)),
              (0.8, _replace_into(tmp_path, 'm3.csv', empty)),
              (1.8, rewrite_a),
              (1.3, _replace_into(tmp_path, 'z.csv',
                                  lambda p: _write(p, 'csv', list(range(200, 220)), Xc)))]
    batches, errors, counts, _, _ = _run(
        lambda: ReadWatchedPoints(pattern, interval=INTERVAL, stop_after=STOP), writes,
        runner=runner)

    want_z, dead_z, _ = _batch_read(str(tmp_path / 'in' / 'z.csv'))
    assert _rows([b for _, _, b in batches]) == sorted(want_a + want_z, key=repr)
    dead = _sorted_dead([e for _, _, e in errors])
    per_row = [d for d in dead if d['row'] is not None]
    assert per_row == _sorted_dead(dead_a + dead_z)
    # a file the batch reader refuses: one dead letter with the batch reader's error
    layout = ReadPoints(str(tmp_path / 'in' / 'z.csv')).layout
    whole = {d['file']: d for d in dead if d['row'] is None}
    assert sorted(whole) == sorted(str(tmp_path / 'in' / f'm{i}.csv') for i in (1, 2, 3))
    for i in (1, 2):
        path = str(tmp_path / 'in' / f'm{i}.csv')
        with pytest.raises(BeammlError) as e:
            for work in plan_reads(path, layout):
                list(read_file_batches(path, layout, part=work[1]))
        assert whole[path] == {'file': path, 'row': None, 'line': None,
                               'reason': str(e.value), 'record': None}
    assert 'is not a text CSV file' in whole[str(tmp_path / 'in' / 'm1.csv')]['reason']
    assert "has no column 'x2'" in whole[str(tmp_path / 'in' / 'm2.csv')]['reason']
    assert whole[str(tmp_path / 'in' / 'm3.csv')]['reason'] == (
        f'input file {tmp_path / "in" / "m3.csv"} is empty (0 bytes)')
    # counted: each refused file as one record read and refused
    assert counts['records_refused'] == len(dead)
    assert counts['records_ok'] == len(want_a + want_z)
    assert counts['records_read'] == counts['records_ok'] + counts['records_refused']


def test_no_file_yet_layout_from_parameters(tmp_path):
    (tmp_path / 'in').mkdir()
    pattern = str(tmp_path / 'in' / '*.csv')
    with pytest.raises(BeammlError) as e:
        ReadWatchedPoints(pattern, interval=INTERVAL, stop_after=STOP)
    assert str(e.value) == (f'no file matches {pattern} yet, so its layout must come from '
                            'the parameters: pass feature_columns and id_column')
    with pytest.raises(BeammlError) as e:
        ReadWatchedPoints(str(tmp_path / 'in' / '*'), interval=INTERVAL)
    assert e.value.for_cli().endswith(
        'pass --input_format, --feature_columns or --dimension, and --id_column')
    with pytest.raises(BeammlError, match='pass dimension$'):
        ReadWatchedPoints(str(tmp_path / 'in' / '*.npy'), interval=INTERVAL)
    with pytest.raises(BeammlError, match='pass id_column$'):
        ReadWatchedTable(str(tmp_path / 'nothing-here' / '*.jsonl'), interval=INTERVAL)
    with pytest.raises(BeammlError, match='but dimension is 4'):
        ReadWatchedPoints(pattern, id_column='id', feature_columns=['x0', 'x1'], dimension=4,
                          interval=INTERVAL)
    with pytest.raises(BeammlError, match='interval must be > 0'):
        ReadWatchedPoints(pattern, id_column='id', feature_columns=['x0'], interval=0)

    # the flags' layout reads the files that land as the inspected one would
    X = _values(6)
    late = _replace_into(tmp_path, 'a.csv', lambda p: _write(p, 'csv', list(range(20)), X))
    batches, errors, counts, _, _ = _run(
        lambda: ReadWatchedPoints(pattern, id_column='id', feature_columns=['x0', 'x1', 'x2'],
                                  id_type='int64', interval=INTERVAL, stop_after=2.0),
        writes=[(0.6, late)])
    want_rows, want_dead, want_counts = _batch_read(pattern)
    assert _rows([b for _, _, b in batches]) == want_rows
    assert _sorted_dead([e for _, _, e in errors]) == want_dead
    assert counts == want_counts


def test_layout_from_parameters_shapes():
    lay = layout_from_parameters('gs://b/in/*.parquet', id_column='id', dimension=8)
    assert (lay.input_format, lay.feature_columns, lay.list_features, lay.dimension,
            lay.id_type) == ('parquet', ('features',), True, 8, 'string')
    lay = layout_from_parameters('gs://b/in/*.jsonl', id_column='k', feature_columns=['v'],
                                 dimension=2, id_type='int64', weight_column='w')
    assert (lay.feature_columns, lay.list_features, lay.dimension, lay.weight_column,
            lay.id_arrow_type) == (('v',), True, 2, 'w', pa.int64())
    lay = layout_from_parameters('in/*', input_format='npy', dimension=5)
    assert (lay.input_format, lay.id_column, lay.dimension) == ('npy', None, 5)
    with pytest.raises(BeammlError, match='drop id_column'):
        layout_from_parameters('in/*.npy', dimension=5, id_column='id')
    with pytest.raises(BeammlError, match="id_type must be 'int64' or 'string'"):
        layout_from_parameters('in/*.csv', id_column='id', feature_columns=['a'], id_type='x')


def test_polls_wait_between_polls_one_bundle_each():
    """The poll source sleeps to its next poll instead of returning at once, so the
    FnApiRunner runs about one bundle per poll (PeriodicImpulse there runs one every
    few milliseconds, and result.metrics() then fails after about a thousand)."""
    key = uuid.uuid4().hex
    interval, stop = 0.2, 1.6
    p = beam.Pipeline(options=_options())
    (p | beam.Impulse()
       | beam.Map(lambda _, now: (now, now + stop, interval), Timestamp.now())
       | beam.ParDo(_PollFn())
       | beam.ParDo(_CountBundles(key)))
    p.run().wait_until_finish()
    seen = _SEEN.pop(key)
    polls = [(ts, wall) for kind, ts, wall, _ in seen if kind == 'poll']
    bundles = sum(kind == 'bundle' for kind, _, _, _ in seen)
    assert len(polls) == 8
    times = np.array([float(ts.micros) / 1e6 for ts, _ in polls])
    np.testing.assert_allclose(np.diff(times), interval, atol=3e-6)   # (micros)
    assert all(wall >= float(ts.micros) / 1e6 for ts, wall in polls)   # never early
    assert bundles <= len(polls) + 3


def test_stop_after_none_watches_forever(tmp_path):
    pattern = str(tmp_path / 'in' / '*.parquet')   # a folder that does not exist yet
    read = ReadWatchedPoints(pattern, id_column='id', dimension=2, interval=5)
    assert read.stop_after is None and read.wait_stable is True
    assert read.paths == [] and read.schema == pa.schema(
        [('id', pa.string()), ('features', pa.list_(pa.float64(), 2))])
    p = beam.Pipeline(options=_options())
    p | read   # builds; the schedule ends at the end of time
    with pytest.raises(BeammlError, match='stop_after must be > 0'):
        ReadWatchedPoints(pattern, id_column='id', dimension=2, stop_after=0)
    assert MAX_TIMESTAMP > Timestamp.now()


def test_gcs_pattern(gcs_bucket, tmp_path):
    Xa, Xb = _values(7), _values(8)
    local_a, local_b = str(tmp_path / 'a.parquet'), str(tmp_path / 'b.parquet')
    _write(local_a, 'parquet', list(range(20)), Xa)
    _write(local_b, 'parquet', list(range(100, 120)), Xb)

    def upload(local, name):
        def go():
            with open(local, 'rb') as src, FileSystems.create(
                    f'{gcs_bucket}/incoming/{name}') as dst:
                dst.write(src.read())
        return go
    upload(local_a, 'a.parquet')()
    pattern = f'{gcs_bucket}/incoming/*.parquet'
    batches, errors, counts, start, _ = _run(
        lambda: ReadWatchedPoints(pattern, interval=INTERVAL, stop_after=STOP),
        writes=[(1.2, upload(local_b, 'b.parquet'))])
    want_rows, want_dead, want_counts = _batch_read(pattern)
    assert _rows([b for _, _, b in batches]) == want_rows
    assert _sorted_dead([e for _, _, e in errors]) == want_dead
    assert counts == want_counts
    ids, feats = _features(want_rows)
    assert ids == [i for i in range(20) if i != 3] + [i for i in range(100, 120) if i != 103]
    assert len({ts for ts, _, _ in batches}) == 2   # two polls took the two files


def test_a_local_file_still_growing_is_read_once_it_stops_changing(tmp_path):
    """Written in place, in pieces less than a poll apart: read whole, once."""
    (tmp_path / 'in').mkdir()
    path = str(tmp_path / 'in' / 'grow.csv')
    X = np.random.default_rng(9).normal(size=(40, 2))
    lines = [b'id,x0,x1\n'] + [f'{i},{float(a)!r},{float(b)!r}\n'.encode()
                               for i, (a, b) in enumerate(X)]
    pieces = [b''.join(lines[k:k + 5]) for k in range(0, len(lines), 5)]

    def append(piece):
        def go():
            with open(path, 'ab') as f:
                f.write(piece)
        return go
    writes = [(0.5 + 0.08 * k, append(piece)) for k, piece in enumerate(pieces)]
    batches, errors, counts, _, _ = _run(
        lambda: ReadWatchedPoints(str(tmp_path / 'in' / '*.csv'), id_column='id',
                                  feature_columns=['x0', 'x1'], id_type='int64',
                                  interval=INTERVAL, stop_after=2.5), writes)
    assert errors == []
    ids, feats = _features(_rows([b for _, _, b in batches]))
    assert ids == list(range(40))
    np.testing.assert_array_equal(feats, X)
    assert counts['records_read'] == counts['records_ok'] == 40


@pytest.mark.parametrize('runner', [FN_API, BUNDLE_BASED])
def test_a_writer_that_pauses_longer_than_the_polls_is_named_not_silently_half_read(
        tmp_path, runner):
    """A local file written in place by a writer that pauses for several polls: the polls
    see it settled and it is read half way (nothing can tell a pause from the end). The
    rest is never read, so the run says so: one WARNING naming the file and both sizes,
    and a counter. (A writer must write elsewhere and rename: the test above.)"""
    import logging
    (tmp_path / 'in').mkdir()
    path = str(tmp_path / 'in' / 'slow.csv')
    head = b'id,x0,x1\n' + b''.join(f'{i},{i}.5,{i}.25\n'.encode() for i in range(10))
    tail = b''.join(f'{i},{i}.5,{i}.25\n'.encode() for i in range(10, 20))

    def append(piece):
        def go():
            with open(path, 'ab') as f:
                f.write(piece)
        return go
    warnings = []

    class Keep(logging.Handler):   # on beamml's logger itself (the CLI stops propagation)
        def emit(self, record):
            warnings.append(record.getMessage())
    keep, log = Keep(logging.WARNING), logging.getLogger('beamml')
    log.addHandler(keep)
    try:
        batches, errors, counts, _, _ = _run(
            lambda: ReadWatchedPoints(str(tmp_path / 'in' / '*.csv'), id_column='id',
                                      feature_columns=['x0', 'x1'], id_type='int64',
                                      interval=INTERVAL, stop_after=3.4),
            writes=[(0.2, append(head)), (2.4, append(tail))], runner=runner)
    finally:
        log.removeHandler(keep)
    ids, _ = _features(_rows([b for _, _, b in batches]))
    assert ids == list(range(10)) and errors == []   # the half read before the pause
    assert counts['records_read'] == counts['records_ok'] == 10
    assert counts['files_changed_after_read'] == 1
    warned = [w for w in warnings if path in w]
    assert len(warned) == 1, warnings
    assert (f'{len(head)} bytes' in warned[0] and f'now {len(head) + len(tail)} bytes'
            in warned[0] and 'rename' in warned[0]), warned[0]


class _Cell:
    """A ReadModifyWriteState stand-in for calling _NewFilesFn.process directly."""

    def __init__(self, value=None):
        self.value = value

    def read(self):
        return self.value

    def write(self, value):
        self.value = value


def test_two_polls_close_together_do_not_take_a_file_written_a_moment_ago():
    """After the runner was busy, two polls can run a moment apart (the FnApiRunner claims
    every poll due at once): the same size and time on both must not be enough when
    the file was modified less than an interval ago (a writer between two pieces);
    once that time is an interval old, the file is taken, once."""
    from beamml.transforms.streaming.files import _NewFilesFn
    fn, cell, now = _NewFilesFn(wait_stable=True, quiet=0.25), _Cell(), time.time()
    fresh = ('in/a.csv', (100, now - 0.05))
    assert list(fn.process(fresh, seen=cell)) == []   # first seen
    assert list(fn.process(fresh, seen=cell)) == []   # unchanged, but written 0.05 s ago
    settled = ('in/a.csv', (100, now - 0.3))
    assert list(fn.process(settled, seen=cell)) == []   # (its time changed: look again)
    assert list(fn.process(settled, seen=cell)) == [('in/a.csv', 100)]
    assert list(fn.process(settled, seen=cell)) == []   # once
    # a file whose time is ahead of this clock is not held back for ever
    ahead = ('in/b.csv', (7, now + 60))
    cell = _Cell()
    assert list(fn.process(ahead, seen=cell)) == []
    assert list(fn.process(ahead, seen=cell)) == [('in/b.csv', 7)]
    # a path an earlier version of the step took, (-1, -1.0), stays taken, silently
    assert list(fn.process(settled, seen=_Cell((-1, -1.0)))) == []
    # objects (wait_stable=False): taken at the first poll that sees them
    assert list(_NewFilesFn(wait_stable=False).process(fresh, seen=_Cell())) == [
        ('in/a.csv', 100)]


def test_watched_table_reads_prediction_logs_as_read_table(tmp_path):
    (tmp_path / 'in').mkdir()

    def log(path, base):
        with open(path, 'w') as f:
            for i in range(base, base + 10):
                f.write(json.dumps({'id': i, 'label': i % 3, 'score': i / 10}) + '\n')
            f.write(json.dumps({'label': 1, 'score': 0.5}) + '\n')   # no id: refused
    log(str(tmp_path / 'in' / 'a.jsonl'), 0)
    pattern = str(tmp_path / 'in' / '*.jsonl')
    late = _replace_into(tmp_path, 'b.jsonl', lambda p: log(p, 100))
    batches, errors, counts, _, _ = _run(
        lambda: ReadWatchedTable(pattern, id_column='id', source_columns=True,
                                 interval=INTERVAL, stop_after=2.0), writes=[(0.6, late)])
    key = uuid.uuid4().hex
    p = beam.Pipeline(options=_options())
    res = p | 'Read' >> ReadTable(pattern, id_column='id', source_columns=True)
    res.batches | 'CollectBatches' >> beam.ParDo(_Collect(key, 'batch'))
    res.errors | 'CollectErrors' >> beam.ParDo(_Collect(key, 'error'))
    want_counts = record_counts(p.run())
    seen = _SEEN.pop(key)
    assert _rows([b for _, _, b in batches]) == _rows(
        [x for kind, _, _, x in seen if kind == 'batch'])
    assert _sorted_dead([e for _, _, e in errors]) == _sorted_dead(
        [x for kind, _, _, x in seen if kind == 'error'])
    assert [e['reason'] for _, _, e in errors] == ['missing id', 'missing id']
    assert counts == want_counts == {'records_read': 22, 'records_ok': 20, 'records_refused': 2}


def test_a_file_of_another_format_is_one_dead_letter(tmp_path):
    """A pattern with no extension (``in/*``) that matched Parquet at the start: a CSV
    file landing later is refused whole, and its work item says so."""
    from beamml.transforms.streaming.files import _PlanFn
    (tmp_path / 'in').mkdir()
    _write(str(tmp_path / 'in' / 'a.parquet'), 'parquet', list(range(20)), _values(10))
    read = ReadWatchedPoints(str(tmp_path / 'in' / '*'), interval=INTERVAL)
    assert read.layout.input_format == 'parquet'
    csv = str(tmp_path / 'in' / 'b.csv')
    _write(csv, 'csv', list(range(5)), _values(11, n=5))
    out = list(_PlanFn(read.layout, format_given=False).process((csv, os.path.getsize(csv))))
    assert out == [{'file': csv, 'row': None, 'line': None, 'record': None,
                    'reason': f'{csv} is csv, the watched input is parquet; read them '
                              'separately'}]
    parquet = str(tmp_path / 'in' / 'a.parquet')
    assert list(_PlanFn(read.layout, format_given=False).process(
        (parquet, os.path.getsize(parquet)))) == [(parquet, None)]
