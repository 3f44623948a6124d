"""A watched folder is a real stream locally: each window's pane is written soon after
the window closes (the watermark passes its end), not when ``--stop_after`` ends the run.

The commands run in this process (``beamml.pipelines.__main__.main``) while a thread
drops a file into the watched folder and another notes the wall time each output file
first appears. The oracle for "soon" is the window's own end, read from the pane's
file name (assign) or the model version's config (kmeans): the pane must be there
within ``--watch_interval`` + 5 s of it, and seconds before the run ends.
"""
from __future__ import annotations

import glob
import json
import os
import threading
import time

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils.timestamp import Timestamp

from beamml.pipelines.__main__ import main
from beamml.transforms.model import CentroidModel, list_versions
from streaming_helpers import land_later

INTERVAL = 0.5
WINDOW = 1.0
STOP = 7.0
SLACK = 5.0   # the target: a pane within --watch_interval + 5 s of its window's end


class _Watcher:
    """Notes the wall time each path matching ``pattern`` first exists (every 20 ms)."""

    def __init__(self, pattern: str):
        self.pattern, self.first_seen = pattern, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _scan(self):
        now = time.time()
        for path in glob.glob(self.pattern):
            self.first_seen.setdefault(path, now)

    def _run(self):
        while not self._stop.wait(0.02):
            self._scan()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(2)
        self._scan()   # what appeared in the last moments


def _epoch(rfc3339: str) -> float:
    return Timestamp.from_rfc3339(rfc3339).micros / 1e6


def _window_end(path: str) -> float:
    """The end of the window a pane file ``...-<start>-<end>-pane-<i>-<timing>.jsonl``
    holds (a time is spelled ``2026-12-06T02:59:35.000Z``)."""
    head = os.path.basename(path).rsplit('-pane-', 1)[0]
    start, end = head[-49:-25], head[-24:]
    assert _epoch(end) - _epoch(start) == WINDOW, path
    return _epoch(end)


def _assert_soon(appeared: float, end: float, ended: float, what: str) -> None:
    """Written within --watch_interval + 5 s of its window's end, and while the stream
    still ran (not when --stop_after ended it)."""
    assert appeared <= end + INTERVAL + SLACK, (
        f'{what} appeared {appeared - end:.1f} s after its window closed, '
        f'{ended - appeared:.1f} s before the run ended')
    assert appeared <= ended - 2.0, f'{what} appeared {ended - appeared:.1f} s before the end'


@pytest.fixture
def models(tmp_path):
    d = str(tmp_path / 'models')
    CentroidModel(np.array([[0.0, 0.0], [10.0, 10.0]])).save(d)
    return d


class _Note(beam.DoFn):
    """Notes (kind, element, its timestamp, the wall time) in ``_NOTES[key]``."""

    def __init__(self, key: str, kind: str):
        self.key, self.kind = key, kind

    def process(self, x, ts=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        _NOTES.setdefault(self.key, []).append((self.kind, x, ts, window, time.time()))
        yield x


_NOTES: dict = {}


def test_polls_on_the_local_streaming_runner_move_the_watermark():
    """The polls alone on the BundleBasedDirectRunner (local_files.py's evaluator): as many
    as PeriodicImpulse's schedule has, one interval apart, none before its time; and a
    window downstream fires while the polls go on, one interval after its end at most
    (plus the runner's own time), not when they stop."""
    from beamml.transforms.streaming.local_files import _PollFn, poll_schedule, \
        register_direct_runner
    register_direct_runner()
    key, interval, stop = str(time.time()), 0.2, 3.0
    p = beam.Pipeline(options=PipelineOptions([], runner='BundleBasedDirectRunner',
                                              streaming=True))
    polls = (p | beam.Impulse() | beam.Map(poll_schedule, interval, stop)
               | beam.ParDo(_PollFn()) | 'NotePolls' >> beam.ParDo(_Note(key, 'poll')))
    (polls
     | beam.WindowInto(beam.window.FixedWindows(1))
     | beam.Map(lambda t: (0, t)) | beam.GroupByKey()
     | 'NotePanes' >> beam.ParDo(_Note(key, 'pane')))
    started = time.time()
    p.run().wait_until_finish()
    ended = time.time()
    notes = _NOTES.pop(key)
    times = np.array([ts.micros / 1e6 for kind, _, ts, _, _ in notes if kind == 'poll'])
    assert len(times) == 15   # ceil(3.0 / 0.2), as PeriodicImpulse counts them
    np.testing.assert_allclose(np.diff(times), interval, atol=2e-6)
    assert started - 1 < times[0] < started + 1
    assert all(wall >= ts.micros / 1e6 for kind, _, ts, _, wall in notes if kind == 'poll')
    panes = [(w.end.micros / 1e6, wall, sorted(x[1])) for kind, x, _, w, wall in notes
             if kind == 'pane']
    assert sum(len(polls) for _, _, polls in panes) == 15
    early = [(end, wall, ts) for end, wall, ts in panes if end < times[-1]]
    assert early, panes   # windows that closed while the polls went on
    for end, wall, ts in early:   # (a window closes once the next poll is past its end)
        assert ts[-1].micros / 1e6 <= wall <= end + interval + 1.0, (end, wall, ended)


def test_the_local_polls_skip_missed_polls_and_count_as_periodic_impulse():
    from beamml.transforms.streaming.local_files import _schedule_micros, due_poll
    start = Timestamp(1796525975)
    # 1.6 s of polls every 0.2 s: 8 (0.0 ... 1.4), as PeriodicImpulse's restriction has
    assert _schedule_micros((start, start + 1.6, 0.2)) == (start.micros, 200_000, 8, 0)
    assert _schedule_micros((start, start + 1.7, 0.2))[2] == 9
    s, iv = start.micros, 200_000
    assert due_poll(s, iv, 0, s, 8) == 0                 # on time: the next one
    assert due_poll(s, iv, 2, s + 1_050_000, 8) == 5     # busy for a while: 2-4 skipped
    assert due_poll(s, iv, 6, s + 1_050_000, 8) == 6     # never back
    assert due_poll(s, iv, 2, s + 9_000_000, 8) == 7     # never past the last


def test_assign_writes_each_pane_soon_after_its_window_closes(tmp_path, models, capsys):
    incoming = tmp_path / 'in'
    incoming.mkdir()
    out = str(tmp_path / 'out' / 'assigned')
    writer = land_later(incoming / 'a.csv', 'id,a,b\n1,0.5,0.2\n2,9,9.5\n3,x,1\n', 1.0)
    with _Watcher(out + '-*.jsonl') as seen:
        rc = main(['assign', '--streaming', '--input', f'{incoming}/*.csv',
                   '--watch_interval', str(INTERVAL), '--stop_after', str(STOP),
                   '--model', models, '--output', out, '--output_format', 'jsonl',
                   '--window_size', str(WINDOW), '--feature_columns', 'a,b'])
        ended = time.time()
    writer.join()
    assert rc == 0
    panes = {p: t for p, t in seen.first_seen.items() if '-errors-' not in p}
    assert len(panes) == 1, panes
    (path, appeared), = panes.items()
    rows = [json.loads(line) for line in open(path)]
    assert sorted((r['id'], r['cluster']) for r in rows) == [(1, 0), (2, 1)]
    assert path.endswith('-pane-0-on_time.jsonl')
    _assert_soon(appeared, _window_end(path), ended, 'the pane')
    dead = {p: t for p, t in seen.first_seen.items() if '-errors-' in p}
    assert len(dead) == 1, dead
    for p, t in dead.items():   # (windows of the time the dead letters were written)
        _assert_soon(t, _window_end(p), ended, 'the dead letters')
    errors = [json.loads(line) for p in dead for line in open(p)]
    assert [(e['file'], e['row'], e['line']) for e in errors] == [
        (str(incoming / 'a.csv'), 2, 4)]
    assert 'records_read=3 records_ok=2 records_refused=1' in capsys.readouterr().out


def test_kmeans_writes_each_version_soon_after_its_window_closes(tmp_path):
    incoming = tmp_path / 'in'
    incoming.mkdir()
    model_dir = str(tmp_path / 'live')
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 0.1, (10, 2)), rng.normal(20, 0.1, (10, 2))])
    text = 'id,a,b\n' + ''.join(f'{i},{a!r},{b!r}\n' for i, (a, b) in enumerate(X.tolist()))
    writer = land_later(incoming / 'a.csv', text + '99,x,1\n', 1.0)
    with _Watcher(os.path.join(model_dir, '*', 'model.json')) as seen, \
            _Watcher(os.path.join(model_dir, '_streaming', '*.jsonl')) as dead:
        rc = main(['kmeans', '--streaming', '--input', f'{incoming}/*.csv',
                   '--watch_interval', str(INTERVAL), '--stop_after', str(STOP), '--k', '2',
                   '--dimension', '2', '--random_state', '0', '--model', model_dir,
                   '--window_size', str(WINDOW), '--feature_columns', 'a,b'])
        ended = time.time()
    writer.join()
    assert rc == 0
    versions = list_versions(model_dir)
    assert len(versions) == 1 and len(seen.first_seen) == 1, (versions, seen.first_seen)
    appeared = min(seen.first_seen.values())
    model = CentroidModel.load(os.path.join(model_dir, versions[0]))
    end = _epoch(model.config['window_end'])
    _assert_soon(appeared, end, ended, 'the model version')
    assert len(dead.first_seen) == 1, dead.first_seen
    (path, appeared), = dead.first_seen.items()
    _assert_soon(appeared, _window_end(path), ended, 'the dead letters')
    (letter,) = [json.loads(line) for line in open(path)]
    assert (letter['file'], letter['row'], letter['line']) == (str(incoming / 'a.csv'), 20, 22)
    got = model.centers[np.argsort(model.centers[:, 0])]
    np.testing.assert_allclose(got, [X[:10].mean(axis=0), X[10:].mean(axis=0)], atol=1e-12)
