"""The local Pub/Sub read (transforms/streaming/local_pubsub.py) on the real emulator: pulls
of up to --max_batch_size, a cancel in seconds, a bad event-time attribute as one dead
letter, a backlog older than its window not late, and no id lost to a SIGKILL."""
from __future__ import annotations

import collections
import json
import signal
import subprocess
import sys
import threading
import time

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils.timestamp import Timestamp

from beamml.transforms.streaming.messages import message_layout
from beamml.transforms.streaming.pubsub import (ReadPubSubBatches, WriteDeadLettersToPubSub,
                                                WriteJsonToPubSub)
from pubsub_emulator import shared_pubsub_emulator


@pytest.fixture(scope='module')
def emulator():
    with shared_pubsub_emulator() as emu:
        yield emu


def point(i: int) -> bytes:
    return json.dumps({'id': i, 'features': [float(i % 7), 1.0]}).encode()


def local_pipeline() -> beam.Pipeline:
    return beam.Pipeline(options=PipelineOptions([], runner='BundleBasedDirectRunner',
                                                 streaming=True))


def cancel_seconds(result, limit: float) -> float | None:
    """Seconds ``result.cancel()`` took, or None when it did not return within ``limit``."""
    t0 = time.monotonic()
    t = threading.Thread(target=result.cancel, daemon=True)
    t.start()
    t.join(limit)
    return None if t.is_alive() else time.monotonic() - t0


# ----------------------------------------------------------------------------- no Beam

class _Received:
    def __init__(self, attributes):
        self.attributes = attributes
        self.publish_time = Timestamp(1_700_000_000).to_utc_datetime(has_tz=True)


def test_event_time_reads_milliseconds_and_rfc3339_and_refuses_the_rest():
    from beamml.transforms.streaming.local_pubsub import event_time
    publish = Timestamp(1_700_000_000)
    assert event_time(_Received({}), 'ts') == (publish, None)
    assert event_time(_Received({'ts': '1700000001500'}), 'ts') == (Timestamp(1_700_000_001.5),
                                                                     None)
    assert event_time(_Received({'ts': '2023-11-14T22:13:21.25Z'}), 'ts')[0] == \
        Timestamp(1_700_000_001.25)
    assert event_time(_Received({'ts': '1700000001500'}), None) == (publish, None)
    ts, refusal = event_time(_Received({'ts': 'yesterday\n'}), 'ts')
    assert ts == publish
    assert refusal == ("invalid event time: attribute 'ts' is 'yesterday\\\\n', not RFC 3339 "
                       "or milliseconds since the epoch")


# ----------------------------------------------------------------------------- the read

def test_pulls_hold_up_to_max_batch_size_messages(emulator):
    """Beam's local read emits 10 messages per bundle; this one up to max_batch_size
    (200 here: two of the emulator's 100-message pulls), every message once."""
    emu = emulator
    t_in, t_out = emu.topic(), emu.topic()
    sub, s_out = emu.subscription(t_in), emu.subscription(t_out)
    emu.publish(t_in, [point(i) for i in range(450)])
    p = local_pipeline()
    read = p | 'Read' >> ReadPubSubBatches(sub, layout=message_layout(dimension=2),
                                           max_batch_size=200)
    (read.batches
     | beam.Map(lambda b: json.dumps(b.column('id').to_pylist()).encode())
     | beam.io.WriteToPubSub(t_out))
    result = p.run()
    try:
        got, deadline = [], time.monotonic() + 40
        while sum(map(len, got)) < 450 and time.monotonic() < deadline:
            got += [json.loads(m.data) for m in emu.pull(s_out, 1, timeout=2)]
    finally:
        took = cancel_seconds(result, 10)
    sizes = sorted(map(len, got), reverse=True)
    assert sorted(i for batch in got for i in batch) == list(range(450)), sizes
    assert sizes[0] > 100 and all(n <= 200 for n in sizes), sizes
    assert took is not None


def test_an_idle_stream_cancels_within_seconds(emulator):
    """Beam's local read blocks up to 30 s in a pull; this one pulls briefly."""
    emu = emulator
    sub = emu.subscription(emu.topic())
    p = local_pipeline()
    read = p | 'Read' >> ReadPubSubBatches(sub, layout=message_layout(dimension=2))
    read.batches | beam.Map(lambda b: None)
    result = p.run()
    time.sleep(2.0)
    took = cancel_seconds(result, 5.0)
    assert took is not None and took < 3.0, took


def test_a_bad_event_time_attribute_is_one_dead_letter_and_the_stream_goes_on(emulator):
    emu = emulator
    t_in, t_out, t_dl = emu.topic(), emu.topic(), emu.topic()
    sub, s_out, s_dl = (emu.subscription(t_in), emu.subscription(t_out),
                        emu.subscription(t_dl))
    now_ms = int(time.time() * 1000)
    ids = emu.publish(t_in, [(point(i), {'ts': str(now_ms + i)}) for i in range(3)]
                      + [(point(3), {'ts': 'yesterday'})]
                      + [(point(i), {'ts': str(now_ms + i)}) for i in range(4, 6)])
    p = local_pipeline()
    read = p | 'Read' >> ReadPubSubBatches(sub, layout=message_layout(dimension=2),
                                           timestamp_attribute='ts')
    read.batches | 'Rows' >> WriteJsonToPubSub(t_out)
    read.errors | 'Dead' >> WriteDeadLettersToPubSub(t_dl)
    result = p.run()
    try:
        rows = [json.loads(m.data) for m in emu.pull(s_out, 5, timeout=30, settle=0.5)]
        dead = [json.loads(m.data) for m in emu.pull(s_dl, 1, timeout=10, settle=0.5)]
    finally:
        cancel_seconds(result, 10)
    assert sorted(r['id'] for r in rows) == [0, 1, 2, 4, 5]
    assert len(dead) == 1, dead
    assert dead[0]['message_id'] == ids[3] and dead[0]['row'] is None
    assert dead[0]['reason'] == ("invalid event time: attribute 'ts' is 'yesterday', not "
                                 "RFC 3339 or milliseconds since the epoch")
    assert json.loads(dead[0]['record']) == {'id': 3, 'features': [3.0, 1.0]}


def test_a_publish_that_fails_fails_the_stream_and_acknowledges_nothing(emulator,
                                                                        monkeypatch):
    """The local sink waits for every publish of a bundle: a topic that refuses (here it
    does not exist) fails the bundle and the pipeline with one line naming the topic,
    and the messages whose rows were not published are not acknowledged: they come
    again on the subscription (within the read's hold, 2 s here)."""
    import beamml.transforms.streaming.local_pubsub as local
    import beamml.transforms.streaming.local_pubsub_state as state
    from beamml.transforms.core.errors import BeammlError
    monkeypatch.setattr(local, 'HOLD_SECONDS', 2)
    monkeypatch.setattr(state, 'HOLD_SECONDS', 2)
    emu = emulator
    t_in = emu.topic()
    sub = emu.subscription(t_in, ack_deadline=10)
    missing = emu.publisher.topic_path('beamml-test', 'no-such-topic')
    ids = emu.publish(t_in, [point(i) for i in range(20)])
    p = local_pipeline()
    read = p | 'Read' >> ReadPubSubBatches(sub, layout=message_layout(dimension=2),
                                           message_id_column='message_id')
    read.batches | 'Rows' >> WriteJsonToPubSub(missing, 'json_array')
    result = p.run()
    failed = None
    t0 = time.monotonic()
    try:
        result.wait_until_finish()
    except Exception as e:   # the DirectRunner re-raises the step's exception
        failed = e
    finally:
        cancel_seconds(result, 10)
    assert time.monotonic() - t0 < 20
    assert isinstance(failed, BeammlError), repr(failed)
    line = str(failed)
    assert '\n' not in line and line.startswith(f'publishing to {missing} failed: NotFound'), line
    again = emu.pull(sub, 20, timeout=20)
    assert sorted(m.message_id for m in again) == sorted(ids)


# ----------------------------------------------------------------------------- the CLI

@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    from beamml.transforms.model import CentroidModel
    path = str(tmp_path_factory.mktemp('model') / 'm')
    CentroidModel(np.array([[0.0, 0.0], [5.0, 5.0]])).save(path)
    return path


def assign(model, sub, t_out, t_dl, lateness: int = 0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, '-m', 'beamml', 'assign', '--streaming', '--model', model,
         '--input_subscription', sub, '--output_topic', t_out, '--dead_letter_topic', t_dl,
         '--window_size', '1', '--allowed_lateness', str(lateness), '--stop_after', '60'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def interrupt(proc: subprocess.Popen) -> None:
    """Ctrl-C: the run cleans up and exits 130 (0 if it had ended)."""
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode in (0, 130), err[-3000:]


def collect(emu, s_out, s_dl, rows: list, dead: list, done, timeout: float) -> None:
    """Pull output rows and dead letters into ``rows`` and ``dead`` until ``done()``."""
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        rows += [json.loads(m.data) for m in emu.pull(s_out, 1, timeout=0.5)]
        dead += [json.loads(m.data) for m in emu.pull(s_dl, 1, timeout=0.1)]


def test_a_backlog_older_than_its_window_is_not_late(emulator, model_dir):
    """Published before the run, 2 s older than its 1 s windows, --allowed_lateness 0:
    every id once, on time, no dead letter (Beam's read made most of them late). A
    point published once the first rows are out moves the watermark past the last
    backlog window (an idle run's watermark waits 11 s at start)."""
    emu = emulator
    t_in, t_out, t_dl = emu.topic(), emu.topic(), emu.topic()
    sub, s_out, s_dl = (emu.subscription(t_in), emu.subscription(t_out),
                        emu.subscription(t_dl))
    emu.publish(t_in, [point(i) for i in range(400)])
    time.sleep(2.0)
    proc = assign(model_dir, sub, t_out, t_dl)
    rows, dead = [], []
    try:
        collect(emu, s_out, s_dl, rows, dead, lambda: rows, 40)
        emu.publish(t_in, [point(400)])
        collect(emu, s_out, s_dl, rows, dead,
                lambda: {r['id'] for r in rows} >= set(range(400)), 20)
        time.sleep(0.5)
        collect(emu, s_out, s_dl, rows, dead, lambda: False, 0.5)   # anything more
    finally:
        interrupt(proc)
    backlog = [r for r in rows if r['id'] < 400]
    assert dead == []
    assert collections.Counter(r['id'] for r in backlog) == {i: 1 for i in range(400)}
    assert {r['timing'] for r in backlog} == {'on_time'}
    assert len({r['message_id'] for r in backlog}) == 400


def test_sigkill_mid_stream_and_a_restart_lose_no_id(emulator, model_dir):
    """Kill -9 the stream while messages are in flight, restart it on the same
    subscription: every id is out (rows or dead letters) at least once; a duplicate
    (written, not yet acknowledged when killed) has the same message_id twice. What
    the first run held comes back within its 10 s hold; the restart runs with
    --allowed_lateness 30 (as docs/streaming.md advises), because a restarted run that
    reads newer messages first (the second half, when the first run had not pulled it
    yet: a loaded machine) moves its watermark past the held ones' windows: they are
    then late panes, rows all the same. Seen in `make test`: with --allowed_lateness 0
    they were late dead letters (kept, not lost)."""
    emu = emulator
    t_in, t_out, t_dl = emu.topic(), emu.topic(), emu.topic()
    sub = emu.subscription(t_in, ack_deadline=10)
    s_out, s_dl = emu.subscription(t_out), emu.subscription(t_dl)
    n = 300
    payloads = [point(i) for i in range(n)]
    payloads[17] = b'{"id": 17, "features": [1.0]}'   # a dead letter (dimension 1)
    ids = emu.publish(t_in, payloads[:150])
    first = assign(model_dir, sub, t_out, t_dl)
    rows, dead = [], []
    try:
        collect(emu, s_out, s_dl, rows, dead, lambda: rows, 40)   # the stream is writing
        assert rows, 'the first run wrote nothing'
        time.sleep(1.0)
        ids += emu.publish(t_in, payloads[150:])
        time.sleep(0.3)   # the second half in flight
    finally:
        first.kill()
        first.communicate(timeout=30)

    def everything():
        return ({r['id'] for r in rows}
                | {d['record']['id'] for d in dead if isinstance(d['record'], dict)}
                ) == set(range(n))
    second = assign(model_dir, sub, t_out, t_dl, lateness=30)
    try:
        collect(emu, s_out, s_dl, rows, dead, everything, 40)
    finally:
        interrupt(second)
    got = {r['id'] for r in rows} | {d['record']['id'] for d in dead
                                     if isinstance(d['record'], dict)}
    assert got == set(range(n)), sorted(set(range(n)) - got)

    def message_of(d):   # a parse dead letter names it; a refused row's record carries it
        return d.get('message_id') or d['record']['message_id']
    seen = collections.Counter([r['message_id'] for r in rows] + [message_of(d) for d in dead])
    assert set(seen) == set(ids)
    # what the first run held came back within its 10 s hold: a row (on time, or in a
    # late pane), never a dead letter
    assert {(message_of(d), d['reason']) for d in dead} == {(ids[17], 'dimension 1, expected 2')}
    assert {r['timing'] for r in rows} <= {'on_time', 'late'}
    duplicated = sum(c - 1 for c in seen.values())
    print(f'{n} ids, {len(rows)} rows, {len(dead)} dead letters, {duplicated} duplicated')
    assert duplicated < n - 1   # what the first run acknowledged is not read again
    for r in rows:   # a duplicate is the same row again, known by its message id
        assert r['id'] == int(json.loads(payloads[ids.index(r['message_id'])])['id'])


def test_a_stream_whose_output_topic_fails_exits_2_in_one_line_and_keeps_its_messages(
        emulator, model_dir):
    """assign --streaming, rows as JSON arrays: the output topic deleted while the stream
    runs. The stream ends with exit 2 and one line naming the topic (the sink's failed
    publish, or the watch on the topic, whichever comes first), and the points it could
    not publish are not acknowledged: they come again on the subscription."""
    emu = emulator
    t_in, t_out, t_dl = emu.topic(), emu.topic(), emu.topic()
    sub = emu.subscription(t_in, ack_deadline=10)
    s_out = emu.subscription(t_out)
    proc = subprocess.Popen(
        [sys.executable, '-m', 'beamml', 'assign', '--streaming', '--model', model_dir,
         '--input_subscription', sub, '--output_topic', t_out, '--dead_letter_topic', t_dl,
         '--output_topic_format', 'json_array', '--window_size', '1', '--stop_after', '60'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        emu.publish(t_in, [point(0)])
        first = emu.pull(s_out, 1, timeout=40)
        assert [r['id'] for m in first for r in json.loads(m.data)] == [0]
        emu.publisher.delete_topic(topic=t_out)
        ids = emu.publish(t_in, [point(i) for i in range(1, 51)])
        _, err = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    lines = err.strip().splitlines()
    assert proc.returncode == 2, err[-3000:]
    assert lines[-1].startswith('beamml assign: error: ') and t_out in lines[-1], lines[-1]
    assert 'Traceback' not in err
    again = emu.pull(sub, 50, timeout=30)
    assert set(ids) <= {m.message_id for m in again}
