"""Streaming assign and evaluate on a TestStream: windows, panes, late data, hot swap."""
from __future__ import annotations

import argparse
import glob
import io
import json
import os
import time

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream as _TestStream
from apache_beam.transforms.window import TimestampedValue

from beamml.pipelines import assign, evaluate
from beamml.pipelines._platform import streams
from beamml.pipelines.__main__ import main
from beamml.transforms.assignment import _LatestModel
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.io.rows import points_batch
from beamml.transforms.model import CentroidModel, set_latest
from streaming_helpers import land_later

W = 10.0   # window size (s)
L = 5.0    # allowed lateness (s)


def stream_options():
    options = PipelineOptions(runner='BundleBasedDirectRunner')
    options.view_as(StandardOptions).streaming = True
    return options


def make_stream(events):
    """events: ('at', watermark) or ('add', [(timestamp, element), ...])."""
    ts = _TestStream()
    for kind, value in events:
        if kind == 'at':
            ts = ts.advance_watermark_to(value)
        else:
            ts = ts.add_elements([TimestampedValue(e, t) for t, e in value])
    # processing time moves on (the dead letters' trigger), then the stream ends
    return ts.advance_processing_time(3600).advance_watermark_to_infinity()


def parse(parser_cls, argv):
    ap = argparse.ArgumentParser()
    parser_cls._add_argparse_args(ap)
    return ap.parse_args(argv)


def read_jsonl(pattern):
    out = {}
    for path in sorted(glob.glob(pattern)):
        with open(path) as f:
            out[os.path.basename(path)] = [json.loads(line) for line in f]
    return out


# ----------------------------------------------------------------------------- assign

@pytest.fixture
def models(tmp_path):
    d = str(tmp_path / 'models')
    v1 = CentroidModel(np.array([[0.0, 0.0], [10.0, 10.0]]), version='20260101T000000000001Z')
    v1.save(d)
    return d


def point(i, x):
    return points_batch(pa.array([i]), np.array([[x, x + 0.5]]))


def test_assign_streaming_windows_panes_and_late_points(tmp_path, models):
    """On-time points, a late one within the lateness (a late pane of its own), one too late
    (a dead letter, reason late); each row's cluster and distance equal numpy's."""
    events = [('at', 0), ('add', [(1, point(1, 1.0)), (5, point(2, 9.0))]),
              ('at', 12), ('add', [(7, point(3, 2.0))]),            # late, within lateness
              ('at', 30), ('add', [(8, point(4, 3.0)),              # too late: [0, 10) closed
                                   (33, point(5, 8.0))])]
    out = str(tmp_path / 'out' / 'assigned')
    args = parse(assign.AssignOptions, [
        '--model', models, '--output', out, '--output_format', 'jsonl',
        '--input_subscription', 'projects/p/subscriptions/s', '--window_size', str(W),
        '--allowed_lateness', str(L)])
    with beam.Pipeline(options=stream_options()) as p:
        source = streams.window_and_gate(p | make_stream(events), args, accumulating=False)
        assign.build_streaming(p, args, CentroidModel.load(models), source=source,
                               id_type=pa.int64())
    files = read_jsonl(out + '-1970*.jsonl')
    assert sorted(files) == [
        'assigned-1970-01-01T00:00:00.000Z-1970-01-01T00:00:10.000Z-pane-0-on_time.jsonl',
        'assigned-1970-01-01T00:00:00.000Z-1970-01-01T00:00:10.000Z-pane-1-late.jsonl',
        'assigned-1970-01-01T00:00:30.000Z-1970-01-01T00:00:40.000Z-pane-0-on_time.jsonl']
    rows = {r['id']: r for rs in files.values() for r in rs}
    assert sorted(rows) == [1, 2, 3, 5]
    centres = np.array([[0.0, 0.0], [10.0, 10.0]])
    for i, x in ((1, 1.0), (2, 9.0), (3, 2.0), (5, 8.0)):
        d = np.sqrt(((centres - [x, x + 0.5]) ** 2).sum(axis=1))
        assert rows[i]['cluster'] == int(d.argmin())
        assert rows[i]['distance'] == pytest.approx(d.min(), rel=1e-12)
        assert rows[i]['model_version'] == '20260101T000000000001Z'
    assert [rows[i]['timing'] for i in (1, 2, 3, 5)] == ['on_time', 'on_time', 'late', 'on_time']
    assert rows[5]['window_start'] == '1970-01-01T00:00:30.000Z'   # as in the file's name
    (errors,) = read_jsonl(out + '-errors-*.jsonl').values()
    assert len(errors) == 1 and errors[0]['record']['id'] == 4
    assert errors[0]['reason'].startswith('late: its window [1970-01-01T00:00:00.000Z')
    assert errors[0]['file'] == 'projects/p/subscriptions/s'


def test_the_model_is_swapped_when_latest_moves_and_rolled_back(tmp_path, models):
    now = [0.0]
    latest = _LatestModel(models, refresh_seconds=60, clock=lambda: now[0])
    assert latest.get().version == '20260101T000000000001Z'
    v2 = CentroidModel(np.array([[1.0, 1.0], [5.0, 5.0]]), version='20260101T000000000002Z')
    v2.save(models)
    now[0] = 30.0   # not yet looked again
    assert latest.get().version == '20260101T000000000001Z'
    now[0] = 61.0
    assert latest.get().version == '20260101T000000000002Z'
    np.testing.assert_array_equal(latest.get().centers, v2.centers)
    set_latest(models, '20260101T000000000001Z')   # roll back
    now[0] = 200.0
    assert latest.get().version == '20260101T000000000001Z'
    os.remove(os.path.join(models, 'LATEST'))       # a look that fails keeps the model
    now[0] = 300.0
    assert latest.get().version == '20260101T000000000001Z'


# ----------------------------------------------------------------------------- evaluate

def log_batch(rows):
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    n = len(rows)
    return pa.RecordBatch.from_pydict({**cols, '_file': ['f'] * n, '_row': list(range(n)),
                                       '_line': list(range(2, n + 2))})


@pytest.mark.parametrize('task', ['classification', 'ranking'])
def test_evaluate_streaming_equals_the_batch_pipeline_on_each_window(tmp_path, task):
    rng = np.random.default_rng(3 if task == 'ranking' else 4)
    if task == 'classification':
        rows = [{'id': i, 'truth': int(rng.integers(0, 2)), 'prediction': int(rng.integers(0, 2)),
                 'model': 'ab'[i % 2]} for i in range(60)]
    else:   # queries of 4 rows; a query's rows share its window
        rows = [{'id': i, 'q_id': i // 4, 'predicted_rank': i % 4,
                 'truth_relevance': int(rng.integers(0, 3)), 'model': 'ab'[(i // 4) % 2]}
                for i in range(60)]
    times = [1 + (i // 4) * 4 // 3 for i in range(60)] if task == 'ranking' else \
        [0.4 * i for i in range(60)]   # 0 .. 24 s: windows [0,10), [10,20), [20,30)
    events = [('at', 0)]
    for lo in range(0, 60, 4):   # batches of 4 rows, watermark following
        events.append(('add', [(times[lo], log_batch(rows[lo:lo + 4]))]))
    flags = ['--task', task, '--slice_by', 'model', '--window_size', str(W)]
    out = str(tmp_path / 'stream')
    args = parse(evaluate.EvaluateOptions, flags + [
        '--output', out, '--input_subscription', 'projects/p/subscriptions/s'])
    with beam.Pipeline(options=stream_options()) as p:
        source = streams.window_and_gate(p | make_stream(events), args)
        evaluate.build_streaming(p, args, source=source)
    records = [r for rs in read_jsonl(os.path.join(out, 'metrics-*.jsonl')).values() for r in rs]
    assert {r['timing'] for r in records} == {'on_time'}
    assert len(records) == len({r['window_start'] for r in records}) >= 2
    for record in records:
        start = int(record['window_start'][17:19]) + 60 * int(record['window_start'][14:16])
        subset = [r for i, r in enumerate(rows) if start <= times[i - i % 4] < start + W]
        path = tmp_path / f'w{start}.parquet'
        pq.write_table(pa.Table.from_pylist(subset), path)
        assert main(['evaluate', '--input', str(path), '--output', str(tmp_path / f'b{start}')]
                    + flags[:4]) == 0
        batch = json.load(open(tmp_path / f'b{start}' / 'metrics.json'))
        assert record['overall'] == batch['overall'], start
        assert record['slices'] == batch['slices'], start


# ----------------------------------------------------------------------------- flags

@pytest.mark.parametrize('argv, message', [
    (['assign', '--model', 'M', '--streaming', '--output', 'o'],
     '--streaming needs exactly one source'),
    (['assign', '--model', 'M', '--input_subscription', 'projects/p/subscriptions/s',
      '--output', 'o'], '--input_subscription needs --streaming'),
    (['evaluate', '--task', 'classification', '--output', 'o', '--streaming',
      '--input_subscription', 'projects/p/subscriptions/s', '--window_size', '10',
      '--window_period', '20'], '--window_period must be > 0 and <= window_size'),
    (['evaluate', '--task', 'classification', '--output', 'o', '--streaming',
      '--input_subscription', 'projects/p/subscriptions/s', '--allowed_lateness', '-1'],
     "--allowed_lateness: '-1' is not a number of seconds >= 0"),
    (['assign', '--model', 'M', '--streaming', '--input', 'x/*.csv', '--output', 'o'],
     '--streaming reads --input_subscription, --input_topic, or --input PATTERN with '
     '--watch_interval'),
    (['norms', '--input', 'x.csv', '--output', 'o', '--streaming'],
     'runs in batch only: --streaming is not supported'),
    (['assign', '--model', 'M', '--streaming', '--input_subscription',
      'projects/p/subscriptions/s', '--output', 'o', '--overwrite'],
     '--overwrite is for a batch run (a dated run committed once with _SUCCESS)'),
    (['evaluate', '--task', 'classification', '--output', 'o', '--streaming',
      '--input_subscription', 'projects/p/subscriptions/s', '--wait_for_input', '5'],
     '--wait_for_input is for a batch run'),
    (['kmeans', '--streaming', '--k', '2', '--model', 'm', '--input_subscription',
      'projects/my-project/subscriptions/abc'],
     'needs --dimension D, or --init with centres'),
])
def test_streaming_flags_are_checked_in_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_window_and_gate_refuse_bad_windows():
    from beamml.transforms.streaming.windows import check_windows
    with pytest.raises(BeammlError, match='window_size must be > 0'):
        check_windows(0.0)
    with pytest.raises(BeammlError, match='window_period needs a window_size'):
        check_windows(None, 5.0)


# ----------------------------------------------------------------------------- Pub/Sub

def test_assign_streaming_on_the_emulator_hot_swaps_the_model(tmp_path, models):
    """Pub/Sub in (singles, an array, malformed messages), Pub/Sub out: the points published
    before a new version is saved are assigned by v1, those after by v2, without a restart;
    a malformed message is a dead letter on the dead-letter topic."""
    from pubsub_emulator import cancel_run, shared_pubsub_emulator
    with shared_pubsub_emulator() as emu:
        t_in, t_out, t_dlq = emu.topic(), emu.topic(), emu.topic()
        sub = emu.subscription(t_in)
        s_out, s_dlq = emu.subscription(t_out), emu.subscription(t_dlq)
        args = parse(assign.AssignOptions, [
            '--model', models, '--input_subscription', sub, '--output_topic', t_out,
            '--dead_letter_topic', t_dlq, '--window_size', '2', '--model_refresh_seconds',
            '0.2'])
        p = beam.Pipeline(options=stream_options())
        assign.build_streaming(p, args, CentroidModel.load(models))
        result = p.run()
        try:
            first = [json.dumps({'id': i, 'features': [float(i), 0.0]}).encode()
                     for i in range(5)]
            emu.publish(t_in, first + [b'{"id": 99, "features": [1.0]}', b'not json'])
            out1 = emu.pull(s_out, 5, timeout=40)
            CentroidModel(np.array([[100.0, 0.0], [0.0, 100.0]]),
                          version='20260101T000000000002Z').save(models)
            time.sleep(1.0)   # > --model_refresh_seconds
            emu.publish(t_in, [json.dumps([{'id': i, 'features': [float(i), 0.0]}
                                           for i in range(5, 10)]).encode()])
            out2 = emu.pull(s_out, 5, timeout=40)
            dlq = emu.pull(s_dlq, 2, timeout=20, settle=0.5)
        finally:
            cancel_run(result, emu, t_in)
    rows1 = [json.loads(m.data) for m in out1]
    rows2 = [json.loads(m.data) for m in out2]
    assert sorted(r['id'] for r in rows1) == list(range(5))
    assert {r['model_version'] for r in rows1} == {'20260101T000000000001Z'}
    assert sorted(r['id'] for r in rows2) == list(range(5, 10))
    assert {r['model_version'] for r in rows2} == {'20260101T000000000002Z'}
    for r in rows2:   # v2's centres: (100, 0) is nearest to every (i, 0)
        assert r['cluster'] == 0
        assert r['distance'] == pytest.approx(100.0 - r['id'], rel=1e-12)
        assert r['timing'] == 'on_time' and r['window_start'].endswith('Z')
    letters = sorted((json.loads(m.data) for m in dlq), key=lambda d: d['reason'])
    assert len(letters) == 2 and all(d['file'] == sub for d in letters)
    assert any('dimension' in d['reason'] for d in letters), letters


# ----------------------------------------------------------------------------- watched files

def test_cli_assign_and_kmeans_stream_from_a_watched_folder(tmp_path, models):
    """A file present at the start and one landing later are each read once; a bad row is a
    dead letter; the run ends at --stop_after. Streaming K-means on the same folder writes
    model versions that load."""
    incoming = tmp_path / 'in'
    incoming.mkdir()
    (incoming / 'a.csv').write_text('id,a,b\n1,0.5,0.2\n2,9,9.5\n3,x,1\n')
    writer = land_later(incoming / 'b.csv', 'id,a,b\n4,1,1\n5,8,8\n', 2.0)
    out = tmp_path / 'out' / 'assigned'
    rc = main(['assign', '--streaming', '--input', f'{incoming}/*.csv', '--watch_interval',
               '0.5', '--stop_after', '6', '--model', models, '--output', str(out),
               '--output_format', 'jsonl', '--window_size', '1'])
    writer.join()
    assert rc == 0
    rows = [r for rs in read_jsonl(f'{out}-20*.jsonl').values() for r in rs]
    assert sorted(r['id'] for r in rows) == [1, 2, 4, 5]   # each once
    errors = [r for rs in read_jsonl(f'{out}-errors-*.jsonl').values() for r in rs]
    assert [(e['file'], e['row'], e['line']) for e in errors] == [
        (str(incoming / 'a.csv'), 2, 4)]
    models_live = tmp_path / 'live'
    rc = main(['kmeans', '--streaming', '--input', f'{incoming}/*.csv', '--watch_interval',
               '0.5', '--stop_after', '3', '--k', '2', '--random_state', '0',
               '--model', str(models_live), '--window_size', '1'])
    assert rc == 0
    model = CentroidModel.load(str(models_live))
    assert model.k == 2 and model.config['algorithm'] == 'spark-mllib-streaming-kmeans'


def test_evaluate_streaming_duplicate_from_a_watched_file_holds_the_row_as_read(tmp_path):
    """A duplicate (q_id, predicted_rank) in a watched file: its dead letter names its file,
    row and line (a watched table used to lose them: file None, "the row kept is row
    -1"), and its record is the row as read (every column), as in batch."""
    incoming = tmp_path / 'in'
    incoming.mkdir()
    (incoming / 'a.csv').write_text('q_id,predicted_rank,truth_relevance,doc\n'
                                    '1,0,1,d1\n1,1,0,d2\n1,0,0.5,d9\n')
    out = tmp_path / 'out'
    rc = main(['evaluate', '--streaming', '--task', 'ranking', '--input',
               f'{incoming}/*.csv', '--watch_interval', '0.5', '--stop_after', '2',
               '--window_size', '60', '--output', str(out)])
    assert rc == 0
    errors = [r for rs in read_jsonl(f'{out}/evaluate-errors-*.jsonl').values() for r in rs]
    assert [(e['file'], e['row'], e['line'], e['reason'], e['record']) for e in errors] == [
        (str(incoming / 'a.csv'), 2, 4, 'duplicate (q_id, predicted_rank) pair; the row kept '
         'is a.csv:0', {'q_id': 1, 'predicted_rank': 0, 'truth_relevance': 0.5, 'doc': 'd9'})]


def test_kmeans_streaming_on_the_emulator_writes_versions_assign_can_load(tmp_path):
    """Pub/Sub points into `kmeans --streaming`: a model version appears in the model
    directory (LATEST), with centres near the blobs the points came from."""
    from beamml.pipelines import kmeans
    from beamml.transforms.model import list_versions
    from pubsub_emulator import cancel_run, shared_pubsub_emulator
    rng = np.random.default_rng(0)
    truth = np.array([[0.0, 0.0], [20.0, 20.0]])
    X = np.concatenate([rng.normal(c, 0.5, (100, 2)) for c in truth])
    model_dir = str(tmp_path / 'live')
    with shared_pubsub_emulator() as emu:
        t_in = emu.topic()
        sub = emu.subscription(t_in)
        argv = ['--streaming', '--input_subscription', sub, '--k', '2', '--dimension', '2',
                '--random_state', '0', '--model', model_dir, '--window_size', '1']
        ap = argparse.ArgumentParser()
        kmeans.KMeansOptions._add_argparse_args(ap)
        args, _ = ap.parse_known_args(argv)
        p = beam.Pipeline(options=stream_options())
        source = streams.read_stream(p, args, kmeans.kmeans_streaming.stream_layout(args))
        kmeans.kmeans_streaming.build_streaming(p, args, source['batches'], dimension=2,
                                                allowed_lateness=0.0)
        result = p.run()
        try:
            emu.publish(t_in, [json.dumps([{'id': i, 'features': X[i].tolist()}
                                           for i in range(lo, lo + 50)]).encode()
                               for lo in range(0, 200, 50)])
            deadline = time.monotonic() + 40
            while not list_versions(model_dir) and time.monotonic() < deadline:
                emu.publish(t_in, [b'{"id": -1, "features": [1.0]}'])   # moves bundles on
                time.sleep(0.5)
        finally:
            cancel_run(result, emu, t_in)
    assert list_versions(model_dir), 'no model version was written'
    model = CentroidModel.load(model_dir)
    got = model.centers[np.argsort(model.centers[:, 0])]
    np.testing.assert_allclose(got, truth, atol=0.5)


def test_evaluate_streaming_late_data_updates_its_pane_and_too_late_is_a_dead_letter(tmp_path):
    def row(i, t, p):
        return log_batch([{'id': i, 'truth': t, 'prediction': p}])
    events = [('at', 0), ('add', [(1, row(1, 1, 1)), (5, row(2, 0, 1))]),
              ('at', 12), ('add', [(7, row(3, 1, 0))]),      # late, within the lateness
              ('at', 30), ('add', [(8, row(4, 1, 1))])]      # too late
    out = str(tmp_path / 'e')
    args = parse(evaluate.EvaluateOptions, [
        '--task', 'classification', '--output', out, '--window_size', str(W),
        '--allowed_lateness', str(L), '--input_subscription', 'projects/p/subscriptions/s'])
    with beam.Pipeline(options=stream_options()) as p:
        source = streams.window_and_gate(p | make_stream(events), args)
        evaluate.build_streaming(p, args, source=source)
    files = read_jsonl(os.path.join(out, 'metrics-*.jsonl'))
    (on_time,), (late,) = (files[n] for n in sorted(files))
    assert (on_time['timing'], on_time['pane'], late['timing'], late['pane']) == (
        'on_time', 0, 'late', 1)
    assert on_time['overall']['confusion'] == {'tp': 1, 'fp': 1, 'tn': 0, 'fn': 0}
    assert late['overall']['confusion'] == {'tp': 1, 'fp': 1, 'tn': 0, 'fn': 1}  # all 3 rows
    (errors,) = read_jsonl(os.path.join(out, 'evaluate-errors-*.jsonl')).values()
    assert [e['record']['id'] for e in errors] == [4] and errors[0]['reason'].startswith('late')


def test_a_window_bound_has_one_spelling_everywhere(tmp_path):
    """File names, file rows (JSON lines, CSV), Pub/Sub rows and a streaming model's config
    spell a window bound alike: ``2026-12-06T02:59:35.000Z``."""
    from apache_beam.transforms.window import IntervalWindow
    from apache_beam.utils.timestamp import Timestamp
    from apache_beam.utils.windowed_value import PaneInfo, PaneInfoTiming
    from beamml.pipelines.kmeans.streaming import model_for_update
    from beamml.transforms.kmeans.streaming import ModelUpdate
    from beamml.transforms.streaming.pubsub import rows_to_json_messages
    start, end = Timestamp(1796525975), Timestamp(1796525980)
    want = ('2026-12-06T02:59:35.000Z', '2026-12-06T02:59:40.000Z')
    pane = PaneInfo(True, True, PaneInfoTiming.ON_TIME, 0, 0)
    name = streams.pane_file_name('out/a', IntervalWindow(start, end), pane, '.jsonl')
    assert name == f'out/a-{want[0]}-{want[1]}-pane-0-on_time.jsonl'
    ts = pa.timestamp('us', tz='UTC')
    batch = pa.RecordBatch.from_pydict({
        'id': [1], 'window_start': pa.array([start.micros], pa.int64()).cast(ts),
        'window_end': pa.array([end.micros], pa.int64()).cast(ts), 'timing': ['on_time']})
    (message,) = rows_to_json_messages(batch)
    assert (json.loads(message)['window_start'], json.loads(message)['window_end']) == want
    for fmt in ('jsonl', 'csv'):
        fh = io.BytesIO()
        streams.write_tables(fmt, batch.schema)(fh, [batch])
        text = fh.getvalue().decode()
        assert want[0] in text and want[1] in text and '.000000' not in text, text
    update = ModelUpdate(start, end, np.zeros((1, 2)), np.ones(1), 0, 0, 1, np.zeros(1, int),
                         0.0, 0, None, False)
    config = model_for_update(update, version='v', config={}).config
    assert (config['window_start'], config['window_end']) == want


def test_cli_watched_pattern_with_no_file_yet(tmp_path, capsys):
    """A watched pattern that matches no file when the run starts: the layout comes from
    the flags (ids in ``id``, a ``features`` list, the model's d), and the files that land
    later are read."""
    models = str(tmp_path / 'models')
    CentroidModel(np.array([[0.0, 0.0], [5.0, 5.0]])).save(models)
    (tmp_path / 'in').mkdir()
    out = str(tmp_path / 'out' / 'a')

    writer = land_later(tmp_path / 'in' / 'a.jsonl',
                        '{"id": 7, "features": [0.1, 0.2]}\n{"id": 8, "features": [5, 5]}\n', 1.0)
    assert main(['assign', '--streaming', '--model', models, '--input',
                 str(tmp_path / 'in' / '*.jsonl'), '--watch_interval', '0.5', '--window_size',
                 '5', '--output', out, '--output_format', 'jsonl', '--stop_after', '4']) == 0
    writer.join()
    assert 'records_read=2 records_ok=2 records_refused=0' in capsys.readouterr().out
    rows = [json.loads(x) for f in glob.glob(out + '-2*.jsonl') for x in open(f)]
    assert sorted((r['id'], r['cluster']) for r in rows) == [(7, 0), (8, 1)]
