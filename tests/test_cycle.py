"""The daily cycle (``beamml cycle``), 30 simulated days on the Cloud Storage emulator.

The story (d=2, three blobs of 200 points a day around (0, 0), (6, 0), (0, 6)):

* day 0 trains ``m0`` (``beamml kmeans``); days 1-10 are stable: no alarm, no retrain;
* from day 11 every point is shifted by +2 in x: alarms from day 11, and the rule
  ``psi_2_days`` (psi above 0.2 two days running) fires on day 12, which trains a candidate
  ``c12``; day 13 shadows it, the gate promotes it; day 13's own rule firing trains
  nothing (LATEST moved that day); days 14-18 use ``c12`` without an alarm;
* days 19 and 20 carry a glitch (400 more points around (20, 20)): the rule fires on day
  20 and trains ``c20`` on the glitch; day 21's traffic is normal again, where ``c20`` is
  worse than ``c12``: the gate keeps it out;
* day 24's assign fails (a worker error, injected as the dated-run tests do): nothing is
  committed but the failure's record (``failures.json``) and the day stops; a rerun of
  the day completes it;
* after day 27 a person rolls back (``beamml cycle rollback``): days 28-30 use ``m0``
  again; its alarms fire the rule on day 29, ``c29`` is promoted on day 30.

Every day's outputs are checked: the assignments against numpy's nearest centre of the
model the day used, the gate's decisions against the inertia numpy computes for both
models, alarms and retrain decisions against the story; then a second run of all 30 days
changes no object in the bucket; the timeline of the last day's monitor report (and of
``cycle status --report``) tells the same story. The cost (a budget of ~60 s of CPU): about 2 pipelines
a day (assign, monitor), 4 trainings, and no pipeline at all in the second run.
"""
from __future__ import annotations

import datetime as dt
import io
import json
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cycle_story import GATE_YAML, parquet   # the Airflow and Workflows days' too
from inprocess import run_beamml

#: `make e2e`, not `make test` (docs/cycle.md: what the 30 days cost)
pytestmark = pytest.mark.e2e

START = dt.date(2026, 11, 1)
DAYS = [START + dt.timedelta(days=i) for i in range(30)]
BLOBS = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
PER_BLOB = 200
DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'docs',
                   'cycle.md')
DRIFT_FROM, GLITCH, FAILED_DAY, ROLLBACK_AFTER = 11, (19, 20), 24, 27

MONITOR_YAML = """\
thresholds: {far_share_ratio: 4.0}
rules:
  - {name: psi_2_days, metric: psi, threshold: 0.2, consecutive: 2}
retrain: {input: 'BUCKET/incoming/{date}/*.parquet', max_iter: 50}
"""


def n(day: dt.date) -> int:
    return (day - START).days + 1   # day 1 is 2026-11-01


def points(number: int) -> np.ndarray:
    """The day's points (day 0: the training data)."""
    rng = np.random.default_rng(1000 + number)
    X = np.concatenate([rng.normal(c, 0.7, size=(PER_BLOB, 2)) for c in BLOBS])
    if number >= DRIFT_FROM:
        X = X + [2.0, 0.0]
    if number in GLITCH:
        X = np.concatenate([X, rng.normal([20.0, 20.0], 0.7, size=(400, 2))])
    return X


class Bucket:
    def __init__(self, url: str):
        from google.cloud import storage
        self.url, self.name = url, url[len('gs://'):]
        self.bucket = storage.Client.create_anonymous_client().bucket(self.name)

    def put(self, name: str, data: bytes | str) -> None:
        self.bucket.blob(name).upload_from_string(data)

    def get(self, name: str) -> bytes:
        return self.bucket.blob(name).download_as_bytes()

    def json(self, name: str) -> dict:
        return json.loads(self.get(name))

    def objects(self, prefix: str = '') -> dict:
        return {b.name: b.generation for b in self.bucket.list_blobs(prefix=prefix)}


def beamml(*argv):
    out = run_beamml(*argv)
    assert out.returncode == 0, (argv, out.stdout[-2000:], out.stderr[-3000:])
    return out


def land(b: Bucket, day: dt.date) -> np.ndarray:
    X = points(n(day))
    b.put(f'incoming/{day}/p0.parquet', parquet(X, n(day)))
    return X


def cycle_flags(b: Bucket) -> list[str]:
    return ['--input', f'{b.url}/incoming/{{date}}/*.parquet', '--model', f'{b.url}/models',
            '--work', f'{b.url}/cycle', '--monitor_config', f'{b.url}/monitor.yaml',
            '--gate', f'{b.url}/gate.yaml']


def run_day(b: Bucket, day: dt.date):
    return beamml('cycle', 'day', '--date', str(day), *cycle_flags(b))


def oracle_labels(centers: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d2 = ((X[:, None, :] - centers[None, :, :]) ** 2).sum(-1)
    return d2.argmin(1), d2.min(1)


def day_rows(b: Bucket, day: dt.date) -> pa.Table:
    names = sorted(k for k in b.objects(f'cycle/{day}/assign/')
                   if re.search(r'/part-\d{5}-of-\d{5}\.parquet$', k))
    return pa.concat_tables([pq.read_table(io.BytesIO(b.get(k))) for k in names])


def simulate(b: Bucket) -> tuple[dict, dict]:
    """The 30 days, in order: {day: its points}, {day or event: what ``beamml`` printed}."""
    b.put('monitor.yaml', MONITOR_YAML.replace('BUCKET', b.url))
    b.put('gate.yaml', GATE_YAML)
    b.put('incoming/2026-10-31/p0.parquet', parquet(points(0), 0))
    beamml('kmeans', '--input', f'{b.url}/incoming/2026-10-31/*.parquet', '--k', '3',
           '--random_state', '0', '--model', f'{b.url}/models')
    log, data = {}, {}
    for day in DAYS:
        if n(day) == 1:   # the wait step: no input for the day yet is exit 4
            waited = run_beamml('cycle', 'wait', '--date', str(day), *cycle_flags(b))
            assert waited.returncode == 4, waited.stderr[-2000:]
        data[day] = land(b, day)
        if n(day) == FAILED_DAY:
            log['failed'] = _failed_day(b, day)
        log[day] = run_day(b, day).stdout
        if n(day) == ROLLBACK_AFTER:
            log['rollback'] = beamml('cycle', 'rollback', '--model', f'{b.url}/models').stdout
    return data, log


def _failed_day(b: Bucket, day: dt.date) -> dict:
    """Day 24: a worker error in the assign step (the kernel raises on its first batch),
    injected as tests/test_dated_runs_gcs.py does; returns the day's objects after it."""
    from beamml.transforms import assignment
    real = assignment.add_assignment

    def failing(*a, **kw):
        raise RuntimeError('injected failure in the assign step')
    assignment.add_assignment = failing
    try:
        with pytest.raises(Exception, match='injected failure in the assign step'):
            run_beamml('cycle', 'day', '--date', str(day), *cycle_flags(b))
    finally:
        assignment.add_assignment = real
    return b.objects(f'cycle/{day}/')


def versions(b: Bucket) -> dict[str, str]:
    """{version: its name in the story}: m0, then c<day it was trained>."""
    out = {b.json('cycle/2026-11-01/assign/_SUCCESS')['model']['version']: 'm0'}
    for day in DAYS:
        doc = b.json(f'cycle/{day}/retrain.json')
        if doc['status'] == 'trained':
            out[doc['candidate_version']] = f'c{n(day)}'
    return out


def named(b: Bucket, text: str) -> str:
    """``text`` with the bucket as ``gs://B`` and the versions as their names."""
    for version, name in versions(b).items():
        text = text.replace(version, name)
    return text.replace(b.url, 'gs://B')


def test_thirty_days(gcs_emulator, tmp_path):
    """The whole story on one bucket, then every check (one test: the 30 days are run
    once, whatever the test distribution)."""
    from google.cloud import storage
    name = 'beamml-cycle-30-days'
    storage.Client.create_anonymous_client().create_bucket(name)
    b = Bucket(f'gs://{name}')
    data, log = simulate(b)
    check_the_model_each_day_used_and_latest(b)
    check_every_days_assignments_are_numpys_nearest_centre(b, data)
    check_alarms_and_retraining_decisions_follow_the_story(b)
    check_the_gate_promotes_the_good_candidates_and_keeps_the_bad_one(b, data)
    check_the_failed_day_left_nothing_and_its_rerun_completed_it(b, data, log)
    check_the_rollback_was_honoured_the_next_day(b, log)
    check_the_days_printed_what_their_files_say(b, log)
    check_the_timeline_tells_the_story(b, tmp_path)
    check_the_committed_folders_hold_what_their_success_lists(b)
    check_a_second_run_of_the_30_days_changes_nothing(b)
    check_the_documented_run_is_this_one(b, log)


def check_the_model_each_day_used_and_latest(b: Bucket):
    names = versions(b)
    used = [names[b.json(f'cycle/{d}/assign/_SUCCESS')['model']['version']] for d in DAYS]
    assert used == ['m0'] * 13 + ['c12'] * 14 + ['m0'] * 3
    assert names[b.get('models/LATEST').decode().strip()] == 'c29'
    assert sorted(names.values()) == ['c12', 'c20', 'c29', 'm0']
    for day in DAYS:   # every row names the model that assigned it
        rows = day_rows(b, day)
        assert set(rows['model_version'].to_pylist()) == {
            b.json(f'cycle/{day}/assign/_SUCCESS')['model']['version']}


def check_every_days_assignments_are_numpys_nearest_centre(b: Bucket, data: dict):
    from beamml.transforms.model import CentroidModel
    for day in DAYS:
        done = b.json(f'cycle/{day}/assign/_SUCCESS')
        assert done['counts'] == {'records_read': len(data[day]),
                                  'records_ok': len(data[day]), 'records_refused': 0}
        model = CentroidModel.load(f'{b.url}/models/{done["model"]["version"]}')
        rows = day_rows(b, day).sort_by('id')
        labels, d2 = oracle_labels(model.centers, data[day])
        assert rows['id'].to_numpy().tolist() == (np.arange(len(data[day]))
                                                  + 100_000 * n(day)).tolist()
        np.testing.assert_array_equal(rows['cluster'].to_numpy(), labels, err_msg=str(day))
        # squared distances: the kernel's ||x||^2 - 2 x.c + ||c||^2 against numpy's
        # direct differences (|x| <= ~25 here, so an absolute 1e-11 is a few ulps)
        np.testing.assert_allclose(rows['distance'].to_numpy() ** 2, d2, rtol=1e-12,
                                   atol=1e-11, err_msg=str(day))


def check_alarms_and_retraining_decisions_follow_the_story(b: Bucket):
    alarmed = [n(d) for d in DAYS if b.json(f'cycle/{d}/monitor/drift.json')['alarms']]
    assert alarmed == [11, 12, 13, 19, 20, 28, 29, 30]
    fired = [n(d) for d in DAYS if b.json(f'cycle/{d}/monitor/decision.json')['retrain']]
    assert fired == [12, 13, 20, 29, 30]
    retrain = {n(d): b.json(f'cycle/{d}/retrain.json') for d in DAYS}
    assert [k for k, v in retrain.items() if v['status'] == 'trained'] == [12, 20, 29]
    for k in (13, 30):   # the rule fired on a day LATEST moved: nothing trained
        assert retrain[k]['status'] == 'skipped' and 'LATEST moved' in retrain[k]['reason']
    for k, doc in retrain.items():
        if doc['status'] == 'trained':
            assert doc['window'] == f'{b.url}/incoming/{DAYS[k - 1]}/*.parquet'
            assert doc['fired'] == ['psi_2_days']
        elif k not in (13, 30):
            assert doc == {'date': str(DAYS[k - 1]), 'status': 'skipped',
                           'reason': 'no retraining rule fired', 'fired': [],
                           'production_version': doc['production_version'],
                           'decision_file': f'{b.url}/cycle/{DAYS[k - 1]}/monitor/'
                                            'decision.json'}


def check_the_gate_promotes_the_good_candidates_and_keeps_the_bad_one(b: Bucket, data: dict):
    from beamml.transforms.model import CentroidModel
    names = versions(b)
    gates = {n(d): b.json(f'cycle/{d}/gate.json') for d in DAYS}
    judged = {k: (g['decision'], names[g['candidate_version']], g['promoted'])
              for k, g in gates.items() if g['decision'] != 'none'}
    assert judged == {13: ('promote', 'c12', True), 21: ('keep', 'c20', False),
                      30: ('promote', 'c29', True)}
    for k, g in gates.items():
        assert names[g['production_version']] == names[b.json(
            f'cycle/{DAYS[k - 1]}/assign/_SUCCESS')['model']['version']]
        assert names[g['latest']] == ('c12' if 13 <= k <= 27 else 'c29' if k == 30 else 'm0')
    for k in judged:   # the oracle: both models' inertia on the day's traffic
        g = gates[k]
        inertia = [oracle_labels(CentroidModel.load(
            f'{b.url}/models/{g[v]}').centers, data[DAYS[k - 1]])[1].mean()
            for v in ('production_version', 'candidate_version')]
        assert bool(inertia[1] <= inertia[0]) is (g['decision'] == 'promote'), (k, inertia)
    assert 'failed' in gates[21]['reason'] and 'inertia_per_point' in gates[21]['reason']
    note = b.json('models/ROLLBACK')
    assert names[note['promoted_version']] == 'c29' and names[note['previous_version']] == 'm0'


def check_the_failed_day_left_nothing_and_its_rerun_completed_it(b: Bucket, data: dict,
                                                                 log: dict):
    day = DAYS[FAILED_DAY - 1]
    assert all('/.beamml-' in k for k in log['failed']
               if k != f'cycle/{day}/failures.json'), log['failed']
    failures = b.json(f'cycle/{day}/failures.json')['failures']
    assert [(f['step'], f['exit_code']) for f in failures] == [('assign', 1)]
    assert 'injected failure in the assign step' in failures[0]['error']
    assert b.json(f'cycle/{day}/assign/_SUCCESS')['counts']['records_ok'] == len(data[day])
    assert not [k for k in b.objects('cycle/') if '.beamml-' in k]   # no lock, no tmp left


def check_the_rollback_was_honoured_the_next_day(b: Bucket, log: dict):
    names = versions(b)
    line = log['rollback'].strip().splitlines()[-1]
    m = re.fullmatch(r'LATEST of \S+: (\S+) -> (\S+) \(rolled back; the next assign uses '
                     r'(\S+)\)', line)
    assert m and names[m.group(1)] == 'c12' and names[m.group(2)] == 'm0' == names[m.group(3)]
    assert names[b.json(f'cycle/{DAYS[ROLLBACK_AFTER]}/assign/_SUCCESS')['model'][
        'version']] == 'm0'
    note = b.json('models/ROLLBACK')   # the later promotion wrote its own note
    assert 'rolled_back_to' not in note
    again = beamml('cycle', 'rollback', '--model', f'{b.url}/models', '--to',
                   b.get('models/LATEST').decode().strip())
    assert 'nothing to do' in again.stdout


def check_the_timeline_tells_the_story(b: Bucket, tmp_path):
    """Day 30's page (written by its monitor step, before its retrain step) and ``cycle status
    --report`` after it: the versions per day, the alarms, the candidates trained, the
    gate's decisions and the failed-then-rerun day 24."""
    from beamml.pipelines.cycle.timeline import timeline
    names = versions(b)
    page = b.get(f'cycle/{DAYS[-1]}/report.html').decode()   # the day's page
    assert '<h2>The cycle, the last 30 day(s)</h2>' in page
    marks = timeline_marks(page)

    def on(kind: str, *, named: bool = True) -> list:
        return [(n(dt.date.fromisoformat(m['data-day'])),) + ((names[m['data-version']],)
                                                               if named else ())
                for m in marks if kind in m['class']]
    assert [v for _, v in on('model')] == ['m0'] * 13 + ['c12'] * 14 + ['m0'] * 3
    assert [(d, v, m['class'].split()[-1]) for (d, v), m in zip(
        on('change'), [m for m in marks if 'change' in m['class']])] == [
        (14, 'c12', 'promoted'), (28, 'm0', 'rollback')]
    alarms = {n(dt.date.fromisoformat(m['data-day'])): int(m['data-count'])
              for m in marks if 'alarms' in m['class']}
    assert alarms == {n(d): len(b.json(f'cycle/{d}/monitor/drift.json')['alarms'])
                      for d in DAYS if n(d) in (11, 12, 13, 19, 20, 28, 29, 30)}
    assert on('trained') == [(12, 'c12'), (20, 'c20'), (29, 'c29')]
    assert on('skipped', named=False) == [(13,)]   # day 30's retrain had not run yet
    assert [(d, v, m['class'].split()[-1]) for (d, v), m in zip(
        on('gate'), [m for m in marks if 'gate' in m['class']])] == [
        (13, 'c12', 'promote'), (21, 'c20', 'keep'), (30, 'c29', 'promote')]
    assert [(n(dt.date.fromisoformat(m['data-day'])), m['class'].split()[-1])
            for m in marks if 'day' in m['class'].split()] == [(24, 'rerun'), (30, 'incomplete')]
    out = beamml('cycle', 'status', '--work', f'{b.url}/cycle', '--report',
                 str(tmp_path / 'timeline.html'))
    assert '(30 day(s), 2026-11-01 to 2026-11-30)' in out.stdout
    after = timeline_marks((tmp_path / 'timeline.html').read_text(encoding='utf-8'))
    assert [(n(dt.date.fromisoformat(m['data-day'])), m['class'].split()[-1])
            for m in after if 'day' in m['class'].split()] == [(24, 'rerun')]
    assert [m['data-day'][8:] for m in after if 'skipped' in m['class']] == ['13', '30']
    data = timeline(f'{b.url}/cycle')   # the data: LATEST after day 30's gate is c29
    assert names[data['days'][-1]['gate']['latest']] == 'c29'
    assert [e['state'] for e in data['days']] == ['complete'] * 30


def timeline_marks(page: str) -> list[dict]:
    """The attributes of the marks of the page's timeline chart."""
    import xml.etree.ElementTree as ET
    svg = re.search(r'<svg[^>]*data-chart="timeline".*?</svg>', page, re.S).group(0)
    return [dict(e.attrib) for e in ET.fromstring(svg).iter()
            if 'mark' in (e.get('class') or '').split()]


def cycle_lines(stdout: str) -> list[str]:
    """The cycle's own lines of a day (the pipelines' lines left out)."""
    return [line for line in stdout.splitlines() if re.match(r'2026-1\d-\d\d \w+: ', line)]


def check_the_committed_folders_hold_what_their_success_lists(b: Bucket):
    """Nothing of the cycle writes into a folder a pipeline committed: each day's
    ``assign/`` and ``monitor/`` hold exactly the outputs their ``_SUCCESS`` lists (the
    day's page and the timeline's data are beside them), so a later ``--overwrite`` of
    such a folder finds no file that no beamml run recorded."""
    names = set(b.objects())
    for day in DAYS:
        for step in ('assign', 'monitor'):
            folder = f'cycle/{day}/{step}/'
            listed = {f[len(b.url) + 1:] for f in b.json(folder + '_SUCCESS')['outputs']}
            assert {n for n in names if n.startswith(folder)} == listed | {
                folder + '_SUCCESS'}, folder
        assert {f'cycle/{day}/report.html', f'cycle/{day}/timeline.json'} <= names, day


def check_the_days_printed_what_their_files_say(b: Bucket, log: dict):
    for day in DAYS:
        lines = cycle_lines(log[day])
        assert [line.split()[1] for line in lines] == [
            'wait:', 'assign:', 'gate:', 'monitor:', 'retrain:'], log[day]
        done = b.json(f'cycle/{day}/assign/_SUCCESS')
        assert f'model {done["model"]["version"]}, {len(day_rows(b, day))} point(s)' in lines[1]
        assert b.json(f'cycle/{day}/gate.json')['decision'] in lines[2]


def documented_block(after: str) -> list[str]:
    """The lines of docs/cycle.md's first code block after the line starting ``after``."""
    page = open(DOC, encoding='utf-8').read().splitlines()
    i = next(i for i, line in enumerate(page) if line.startswith(after))
    start = next(j for j in range(i, len(page)) if page[j].startswith('```')) + 1
    end = next(j for j in range(start, len(page)) if page[j].startswith('```'))
    return page[start:end]


def check_the_documented_run_is_this_one(b: Bucket, log: dict):
    """docs/cycle.md's day 13 and its 30-day table are this run's (``beamml cycle status``),
    the bucket shown as ``gs://B``, the versions by their names in the story."""
    day13 = cycle_lines(named(b, log[DAYS[12]]))
    out = named(b, beamml('cycle', 'status', '--work', f'{b.url}/cycle').stdout)
    table = [line for line in out.splitlines() if line.startswith('|')]
    assert len(table) == 32
    documented = [line for line in open(DOC, encoding='utf-8').read().splitlines()
                  if line.startswith('| 2026-11-')]
    assert (documented_block('The day of the simulation below'), documented) == (
        day13, table[2:]), '\n'.join(day13 + table)


def check_a_second_run_of_the_30_days_changes_nothing(b: Bucket):
    before = b.objects()
    for day in DAYS:
        out = run_day(b, day).stdout
        assert out.count('is complete') == 2, out   # assign/ and monitor/
        assert out.count('done already') == 2, out   # gate.json and retrain.json
    assert b.objects() == before
