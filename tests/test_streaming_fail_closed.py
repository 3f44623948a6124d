"""Streams fail closed and count exactly (issue 20, parts 1 and 2).

Exact counts on a TestStream (every row and dead letter written, late rows and bad
messages in the mix) and on the Pub/Sub emulator (everything published is counted);
`kmeans --streaming` prints the records line; a stream with --output_topic alone is
refused; a missing subscription or topic and missing credentials are one line before the
pipeline starts; a subscription deleted and the emulator killed mid-run end the run
with one line within seconds; SIGTERM keeps 143.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream as _TestStream
from apache_beam.transforms.window import TimestampedValue

from beamml.pipelines import assign
from beamml.pipelines._platform import streams
from beamml.pipelines.kmeans.streaming import STREAM_ERRORS
from beamml.pipelines.__main__ import main
from beamml.transforms.core.errors import ERRORS, BeammlError
from beamml.transforms.io.rows import points_batch
from beamml.transforms.model import CentroidModel
from beamml.transforms.streaming.messages import message_layout
from beamml.transforms.streaming.pubsub import BatchMessagesFn, ParseMessagesFn
from pubsub_emulator import pubsub_emulator, shared_pubsub_emulator

SUB = 'projects/beamml-test/subscriptions/points'
COUNTS = re.compile(r'records_read=(\d+) records_ok=(\d+) records_refused=(\d+)')


def counts_of(text: str) -> tuple[int, int, int]:
    (found,) = COUNTS.findall(text)
    return tuple(int(x) for x in found)


def read_jsonl(pattern):
    return [json.loads(line) for path in sorted(glob.glob(pattern)) for line in open(path)]


@pytest.fixture
def model(tmp_path):
    d = str(tmp_path / 'models')
    CentroidModel(np.array([[0.0, 0.0], [10.0, 10.0]])).save(d)
    return d


def one(i, x=1.0):
    return json.dumps({'id': i, 'features': [x, x + 0.5]}).encode()


# ----------------------------------------------------------------------------- TestStream

def test_counts_equal_what_is_written_on_a_teststream_with_late_rows_and_bad_messages(
        tmp_path, model, capsys):
    """Messages through the very parse, gate and assignment of a stream: records_read is
    every row and every message that cannot be parsed; records_ok the rows written;
    records_refused the dead letters written (bad messages, bad rows, rows too late)."""
    def message(data, mid):
        return PubsubMessage(data, {}, message_id=str(mid))
    arr = json.dumps([{'id': 10 + j, 'features': [j, j]} for j in range(4)]
                     + [{'id': 14, 'features': [1.0]}]).encode()   # 4 rows + 1 bad row
    events = (_TestStream()
              .advance_watermark_to(0)
              .add_elements([TimestampedValue(message(one(i), i), 1 + i) for i in range(5)]
                            + [TimestampedValue(message(arr, 'arr'), 2),
                               TimestampedValue(message(b'not json', 'bad'), 3)])
              .advance_watermark_to(12)
              .add_elements([TimestampedValue(message(one(20), 'l1'), 7)])   # late, kept
              .advance_watermark_to(30)
              .add_elements([TimestampedValue(message(json.dumps(
                  [{'id': 30, 'features': [1, 1]}, {'id': 31, 'features': [2, 2]}]).encode(),
                  'tl'), 8),                                                  # too late: 2 rows
                  TimestampedValue(message(one(40), 'on'), 33)])
              .advance_processing_time(3600).advance_watermark_to_infinity())
    out = str(tmp_path / 'out' / 'a')
    ap = argparse.ArgumentParser()
    assign.AssignOptions._add_argparse_args(ap)
    args = ap.parse_args(['--model', model, '--output', out, '--output_format', 'jsonl',
                          '--input_subscription', SUB, '--window_size', '10',
                          '--allowed_lateness', '5'])
    options = PipelineOptions(runner='BundleBasedDirectRunner')
    options.view_as(StandardOptions).streaming = True
    p = beam.Pipeline(options=options)
    windowed = p | events | 'Windows' >> streams.window_into(10, None, 5)
    parsed = (windowed
              | 'Batch' >> beam.ParDo(BatchMessagesFn(100))
              | 'Parse' >> beam.ParDo(ParseMessagesFn(message_layout(dimension=2), SUB))
              .with_outputs(ERRORS, main='batches'))
    gated = streams.gate(parsed.batches, args, accumulating=False)
    in_global = beam.window.GlobalWindows()
    source = {'batches': gated['batches'], 'errors': (
        parsed[ERRORS] | 'ParseErrorsGlobal' >> beam.WindowInto(in_global),
        gated['errors'] | 'LateErrorsGlobal' >> beam.WindowInto(in_global)) | beam.Flatten()}
    assign.build_streaming(p, args, CentroidModel.load(model), source=source,
                           id_type=pa.int64())
    args.input_subscription = None   # a TestStream: no Pub/Sub to look at before the start
    lines, log = _Lines(), logging.getLogger('beamml')
    level = log.level
    log.addHandler(lines)
    log.setLevel(logging.INFO)
    try:
        streams.run_and_count(p, args)
    finally:
        log.removeHandler(lines)
        log.setLevel(level)
    read, ok, refused = counts_of(capsys.readouterr().out)
    rows = read_jsonl(out + '-1970*.jsonl')
    letters = read_jsonl(out + '-errors-*.jsonl')
    assert sorted(r['id'] for r in rows) == [0, 1, 2, 3, 4, 10, 11, 12, 13, 20, 40]
    assert sorted(d['reason'].split(':')[0] for d in letters) == [
        'dimension 1, expected 2', 'invalid message', 'late', 'late']
    assert (read, ok, refused) == (5 + 5 + 1 + 1 + 2 + 1, len(rows), len(letters))
    # each pane's log line says what it holds (per window: rows; dead letters, late ones)
    assert sum(int(m) for m in re.findall(r': (\d+) rows -> ', '\n'.join(lines.got))) == ok
    dead = [tuple(map(int, m)) for m in re.findall(
        rf': (\d+) dead letters \(late: (\d+)\) -> {re.escape(out)}-errors-', '\n'.join(lines.got))]
    assert (sum(n for n, _ in dead), sum(late for _, late in dead)) == (refused, 2), lines.got


class _CountRows(beam.DoFn):
    """Counts each batch's rows as a source does (read, and ok or refused)."""

    def setup(self):
        from beamml.transforms.core.errors import RecordCounters
        self.counters = RecordCounters()

    def process(self, n):
        self.counters.read.inc(n)
        self.counters.ok.inc(n - 1)
        self.counters.refused.inc(1)
        yield n


def test_a_local_stream_counts_every_bundle_not_the_first_only(monkeypatch):
    """The options of every local stream (``streaming_options``) make Beam's committed
    counters count every bundle: the local streaming runner, as Beam ships it, reports a
    step's first bundle only. Beam's own executor is put back for the test, as a fresh
    process has it."""
    from apache_beam.runners.direct import executor
    from beamml.pipelines._platform.main import record_counts
    beams_own = executor.TransformExecutor.call
    beams_own = getattr(beams_own, '__wrapped__', beams_own)
    monkeypatch.setattr(executor.TransformExecutor, 'call', beams_own)
    events = _TestStream().advance_watermark_to(0)
    for i in range(6):   # a bundle each
        events = events.add_elements([TimestampedValue(i + 2, i)]).advance_watermark_to(i + 1)
    p = beam.Pipeline(options=streams.streaming_options(PipelineOptions(streaming=True)))
    _ = (p | events.advance_watermark_to_infinity() | 'Count' >> beam.ParDo(_CountRows()))
    result = p.run()
    result.wait_until_finish()
    counts = record_counts(result)
    n = sum(range(2, 8))
    assert counts == {'records_read': n, 'records_ok': n - 6, 'records_refused': 6}


def test_a_step_that_fails_ends_the_stream_at_once_with_one_line(tmp_path, model):
    """A pane that cannot be written (its folder is a file): the first failed bundle ends
    the run with one BeammlError (exit 2: storage), not after Beam's 4 retries and their
    4 logged tracebacks."""
    (tmp_path / 'out').write_text('a file where the output folder should be')
    ap = argparse.ArgumentParser()
    assign.AssignOptions._add_argparse_args(ap)
    args = ap.parse_args(['--model', model, '--output', str(tmp_path / 'out' / 'a'),
                          '--output_format', 'jsonl', '--window_size', '10',
                          '--input_subscription', SUB])
    options = PipelineOptions(runner='BundleBasedDirectRunner')
    options.view_as(StandardOptions).streaming = True
    p = beam.Pipeline(options=options)
    events = (_TestStream().advance_watermark_to(0)
              .add_elements([TimestampedValue(points_batch(pa.array([1]), np.array([[1.0, 1.0]])),
                                              1)])
              .advance_watermark_to_infinity())
    source = streams.window_and_gate(p | events, args, accumulating=False)
    assign.build_streaming(p, args, CentroidModel.load(model), source=source,
                           id_type=pa.int64())
    args.input_subscription = None
    started = time.monotonic()
    with pytest.raises(BeammlError) as e:
        streams.run_and_count(p, args)
    assert time.monotonic() - started < 10
    assert str(e.value).startswith('the stream failed: FileExistsError: ')
    assert str(e.value).endswith("[while running 'WriteAssignmentsFiles/WriteFile']")
    assert '\n' not in str(e.value) and e.value.exit_code == 2


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.got = []

    def emit(self, record):
        self.got.append(record.getMessage())


# ----------------------------------------------------------------------------- flags

def test_a_stream_with_only_an_output_topic_must_name_a_dead_letter_destination(model, capsys):
    assert main(['assign', '--streaming', '--model', model, '--input_subscription',
                 'projects/my-project/subscriptions/points', '--output_topic',
                 'projects/my-project/topics/out', '--stop_after', '1']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and '--dead_letter_topic' in err[0] and 'dead letters' in err[0], err


def test_kmeans_streaming_prints_the_records_line(tmp_path):
    incoming = tmp_path / 'in'
    incoming.mkdir()
    (incoming / 'a.csv').write_text('id,a,b\n1,0.5,0.2\n2,9,9.5\n3,x,1\n4,1,1\n')
    out = subprocess.run(
        [sys.executable, '-m', 'beamml', 'kmeans', '--streaming', '--input',
         f'{incoming}/*.csv', '--watch_interval', '0.5', '--stop_after', '2', '--k', '2',
         '--random_state', '0', '--model', str(tmp_path / 'live'), '--window_size', '1'],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert counts_of(out.stdout) == (4, 3, 1)
    assert re.search(rf'records_refused=1 errors={tmp_path}/live/{STREAM_ERRORS}/\S+-\*\.jsonl',
                     out.stdout), out.stdout


# ----------------------------------------------------------------------------- emulator

@pytest.fixture(scope='module')
def emulator():
    with shared_pubsub_emulator() as emu:
        yield emu


def _assign(model, sub, t_out, t_dlq, *extra):
    return ['assign', '--streaming', '--model', model, '--input_subscription', sub,
            '--output_topic', t_out, '--dead_letter_topic', t_dlq, *extra]


@pytest.mark.parametrize('missing', ['input_subscription', 'output_topic', 'dead_letter_topic'])
def test_a_missing_subscription_or_topic_is_one_line_before_the_start(
        emulator, model, capsys, missing):
    emu = emulator
    t_in, t_out, t_dlq = emu.topic(), emu.topic(), emu.topic()
    sub = emu.subscription(t_in)
    argv = _assign(model, sub, t_out, t_dlq, '--stop_after', '20')
    gone = argv[argv.index('--' + missing) + 1]
    argv[argv.index(gone)] = gone + '-gone'
    started = time.monotonic()
    assert main(argv) == 2
    assert time.monotonic() - started < 10
    err = [ln for ln in capsys.readouterr().err.splitlines() if ' beamml: ' not in ln]
    assert err == [f'beamml assign: error: --{missing} {gone}-gone: the '
                   f'{"subscription" if missing == "input_subscription" else "topic"} does '
                   'not exist (create it first, or check the project)'], err


class _Cancelling(logging.Handler):
    def __init__(self):
        super().__init__()
        self.seen = threading.Event()

    def emit(self, record):
        if 'cancelling' in record.getMessage():
            self.seen.set()


def _wake_after_cancel(emu, topic, done):
    """Once the run logs that it cancels, publish to the input until ``done`` is set:
    Beam's local read is cancelled only when its pull (up to 30 s) returns; what that
    pull brings after the cancel is not processed (nor counted)."""
    seen = _Cancelling()
    logging.getLogger('beamml').addHandler(seen)

    def wake():
        while not seen.seen.wait(0.2):
            if done.is_set():
                return
        time.sleep(0.5)
        while not done.is_set():
            emu.publish(topic, [b'wake'])
            done.wait(0.5)
        logging.getLogger('beamml').removeHandler(seen)
    t = threading.Thread(target=wake, daemon=True)
    t.start()
    return t


def test_counts_equal_what_was_published_on_the_emulator(emulator, model, capsys):
    """Good singles, an array with a bad row, bad messages, and messages late for their
    window (an event time an hour old, after a window has closed): records_read is every
    row and bad message published, records_refused every dead letter on the topic."""
    emu = emulator
    t_in, t_out, t_dlq = emu.topic(), emu.topic(), emu.topic()
    sub, s_out, s_dlq = emu.subscription(t_in), emu.subscription(t_out), emu.subscription(t_dlq)
    published = {'rows': 0, 'bad_messages': 0, 'bad_rows': 0, 'late': 0}
    done = threading.Event()

    def feed():
        emu.publish(t_in, [one(i) for i in range(30)])
        emu.publish(t_in, [json.dumps([{'id': 100 + j, 'features': [j, j]} for j in range(9)]
                                      + [{'id': 109}]).encode()])
        emu.publish(t_in, [b'not json', b'[]', (b'junk', {'format': 'arrow'})])
        published['rows'] += 30 + 10   # a row of the array is bad
        published['bad_messages'] += 3
        published['bad_rows'] += 1
        i, until = 200, time.monotonic() + 3.0
        while time.monotonic() < until:   # ticks move the local watermark (the wall
            emu.publish(t_in, [one(i)])     # clock at each pull) past a window's end
            published['rows'] += 1
            i += 1
            time.sleep(0.25)
        old = str(int((time.time() - 3600) * 1000))   # a window closed long ago
        emu.publish(t_in, [(one(500 + j), {'ts': old}) for j in range(5)])
        published['rows'] += 5
        published['late'] += 5
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    _wake_after_cancel(emu, t_in, done)
    try:
        rc = main(_assign(model, sub, t_out, t_dlq, '--window_size', '2', '--stop_after', '16',
                          '--timestamp_attribute', 'ts'))
    finally:
        done.set()
    feeder.join(5)
    assert rc == 0 and not feeder.is_alive()
    read, ok, refused = counts_of(capsys.readouterr().out)
    letters = [json.loads(m.data) for m in emu.pull(s_dlq, refused, timeout=20, settle=1.0)]
    rows = [json.loads(m.data) for m in emu.pull(s_out, ok, timeout=10, settle=0.5)]
    assert read == published['rows'] + published['bad_messages'], (read, published)
    assert refused == len(letters)
    late = sum(d['reason'].startswith('late') for d in letters)
    # the old ones, and any of the backlog that Beam's wall-clock watermark made late
    assert late >= published['late']
    assert refused - late == published['bad_messages'] + published['bad_rows']
    assert ok == read - refused >= len(rows) == len({r['id'] for r in rows})
    assert not {r['id'] for r in rows} & {d['record']['id'] for d in letters
                                          if isinstance(d['record'], dict) and 'id' in d['record']}


def test_a_subscription_deleted_mid_run_ends_it_in_seconds_with_one_line(
        emulator, model, capsys):
    emu = emulator
    t_in, t_out, t_dlq = emu.topic(), emu.topic(), emu.topic()
    sub = emu.subscription(t_in)
    emu.publish(t_in, [one(i) for i in range(5)])
    when = {}

    def delete():
        time.sleep(5)
        when['t'] = time.monotonic()
        emu.subscriber.delete_subscription(subscription=sub)
    threading.Thread(target=delete, daemon=True).start()
    rc = main(_assign(model, sub, t_out, t_dlq, '--stop_after', '90'))
    took = time.monotonic() - when['t']
    assert rc == 2 and took < 15, (rc, took)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ' beamml: ' not in ln]
    # found by the watch of the resources (every 2 s) or by the read's next pull, first
    assert err in ([f'beamml assign: error: --input_subscription {sub}: the subscription '
                    'does not exist any more (deleted while the stream ran)'],
                   [f'beamml assign: error: {sub}: the subscription does not exist any more '
                    '(deleted while the stream ran)']), err


def test_the_emulator_killed_mid_run_ends_it_in_seconds_with_one_line(model, capsys):
    with pubsub_emulator() as emu:   # its own: this test kills it
        t_in, t_out, t_dlq = emu.topic(), emu.topic(), emu.topic()
        sub = emu.subscription(t_in)
        emu.publish(t_in, [one(i) for i in range(5)])
        when = {}

        def kill():
            time.sleep(5)
            when['t'] = time.monotonic()
            os.killpg(emu.proc.pid, signal.SIGKILL)
        threading.Thread(target=kill, daemon=True).start()
        rc = main(_assign(model, sub, t_out, t_dlq, '--stop_after', '90'))
        took = time.monotonic() - when['t']
    assert rc == 2 and took < 20, (rc, took)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ' beamml: ' not in ln]
    assert len(err) == 1 and err[0].startswith(
        f'beamml assign: error: the Pub/Sub emulator at {emu.host} stopped answering while '
        'the stream ran'), err


def _env_without_cloud(tmp_path):
    return {'PATH': os.environ.get('PATH', '/usr/bin:/bin'), 'HOME': str(tmp_path),
            'TMPDIR': str(tmp_path)}


def test_no_credentials_is_one_line_before_the_start_and_touches_no_network(tmp_path, model):
    """An empty environment (no PUBSUB_EMULATOR_HOST, no credentials), and no network
    at all where a namespace can be made: exit 2 and one line, no traceback."""
    cmd = [sys.executable, '-m', 'beamml', 'assign', '--streaming', '--model', model,
           '--input_subscription', 'projects/my-project/subscriptions/points',
           '--output', str(tmp_path / 'out' / 'a'), '--stop_after', '30']
    if shutil.which('unshare') and subprocess.run(['unshare', '-n', 'true'],
                                                  capture_output=True).returncode == 0:
        cmd = ['unshare', '-n'] + cmd
    started = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                         env=_env_without_cloud(tmp_path))
    assert out.returncode == 2, out.stderr[-2000:]
    assert time.monotonic() - started < 25
    err = [ln for ln in out.stderr.splitlines() if ' beamml: ' not in ln]
    assert len(err) == 1 and err[0].startswith(
        'beamml assign: error: no Google Cloud credentials for Pub/Sub'), out.stderr[-2000:]


def test_sigterm_still_exits_143_with_one_line(emulator, tmp_path, model):
    emu = emulator
    t_in, t_out, t_dlq = emu.topic(), emu.topic(), emu.topic()
    sub = emu.subscription(t_in)
    env = {**os.environ, 'PUBSUB_EMULATOR_HOST': emu.host}
    proc = subprocess.Popen([sys.executable, '-m', 'beamml'] + _assign(
        model, sub, t_out, t_dlq, '--stop_after', '90'), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        line = ''
        while 'assign --streaming: model' not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
        time.sleep(2.0)   # the pipeline runs
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143 and time.monotonic() - sent < 15, err[-2000:]
    assert [ln for ln in err.splitlines() if ' beamml: ' not in ln] == [
        'beamml assign: terminated'], err[-2000:]


def test_a_failed_bundle_of_another_stream_in_this_process_is_not_this_runs():
    """A stream an earlier run in this process left running fails while this run's
    stream runs (seen in make test: its Pub/Sub emulator was gone): its failed bundle is
    logged by the same local-runner logger, from a thread that was there before this
    run; this run must not take it for its own. A failure on a thread of this run's
    executor (started after) is this run's."""
    from beamml.pipelines._platform import supervise
    log = logging.getLogger(supervise.BundleFailures.LOGGER)
    go, logged = threading.Event(), threading.Event()
    message = 'Exception at bundle %r, due to an exception.\n %s'

    def earlier_stream():
        go.wait(10)
        log.error(message, 'bundle', 'Traceback (most recent call last):\n'
                  'RuntimeError: the earlier stream failed')
        logged.set()
    earlier = threading.Thread(target=earlier_stream)
    earlier.start()
    with supervise.BundleFailures() as failures:
        go.set()
        assert logged.wait(10)
        assert failures.first is None
        ours = threading.Thread(target=log.error, args=(
            message, 'bundle', 'Traceback (most recent call last):\nRuntimeError: this run'))
        ours.start()
        ours.join()
    earlier.join()
    assert 'this run' in str(failures.first), failures.first
