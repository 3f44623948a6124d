"""The cycle's timeline (pipelines/cycle/timeline.py, transforms/timeline.py): the data read
from hand-made day folders (a promotion, a kept candidate, a rollback, a failed day, a day
completed by a rerun, an incomplete day, a day with no file), the failures the steps
record, the SVG marks without a browser, the pages the monitor step and ``status
--report`` write, and the timeline rendered by headless Chromium (its marks in the DOM,
its colours on screen). tests/test_cycle.py checks the timeline of the 30-day simulation.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re

import numpy as np
import pytest
from inprocess import run_beamml
from report_helpers import _chromium, _marks, _Marks, _screenshot, _svg, needs_browser

from beamml.pipelines.cycle import steps
from beamml.pipelines.cycle import timeline as tl
from beamml.pipelines.monitor import report as monitor_report
from beamml.transforms import timeline as chart
from beamml.transforms.core.errors import BeammlError

D = [dt.date(2026, 11, 1) + dt.timedelta(days=i) for i in range(10)]
HOSTILE = '<script>alert("x")</script> & \'q\''


def _write(path, doc) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
        f.write(doc if isinstance(doc, str) else json.dumps(doc))


def write_day(work, date: dt.date, model=None, points=600, alarms=None, fired=(),
              gate=None, retrain=None, failures=(), monitor=True):
    """A day folder as the steps leave it: only the files of the steps given."""
    day = os.path.join(str(work), date.isoformat())
    if model:
        _write(f'{day}/assign/_SUCCESS', {'model': {'version': model},
                                          'counts': {'records_ok': points}})
        _write(f'{day}/assign/part-00000-of-00001.parquet', 'rows')
    if alarms is not None and monitor:
        _write(f'{day}/monitor/_SUCCESS', {'run_id': 'r'})
        _write(f'{day}/monitor/alarms.jsonl', ''.join(
            json.dumps({'metric': m, 'feature': f, 'value': 1.0, 'threshold': 0.2}) + '\n'
            for m, f in alarms))
        _write(f'{day}/monitor/decision.json', {'retrain': bool(fired), 'fired': list(fired)})
    if gate is not None:
        decision, candidate, promoted = gate
        _write(f'{day}/gate.json', {'decision': decision, 'candidate_version': candidate,
                                    'reason': f'because {decision}', 'promoted': promoted,
                                    'latest': candidate if promoted else model})
    if retrain is not None:
        status, candidate = retrain
        _write(f'{day}/retrain.json', {'status': status, 'candidate_version': candidate,
                                       'reason': f'{status} reason', 'fired': list(fired)})
    if failures:
        _write(f'{day}/failures.json', {'failures': [
            {'step': s, 'exit_code': 1, 'error': f'RuntimeError: {s} broke', 'at': 'T'}
            for s in failures]})


def _none(date):   # a complete quiet day
    return dict(alarms=[], gate=('none', None, False), retrain=('skipped', None))


@pytest.fixture
def work(tmp_path):
    """Nine days: quiet; alarms and c2 trained; c2 promoted; c2 used, c4 trained; c4 kept;
    back to m0 (a rollback) after a failed attempt; no file; failed; incomplete (x9, a
    version set outside the cycle)."""
    w = tmp_path / 'work'
    psi = [('psi', 'f0'), ('js', 'f1')]
    write_day(w, D[0], 'm0', **_none(D[0]))
    write_day(w, D[1], 'm0', alarms=psi, fired=['r2'], gate=('none', None, False),
              retrain=('trained', 'c2'))
    write_day(w, D[2], 'm0', alarms=psi[:1], fired=['r2'], gate=('promote', 'c2', True),
              retrain=('skipped', None))
    write_day(w, D[3], 'c2', alarms=psi + [('linf', None)], fired=['r2'],
              gate=('none', None, False), retrain=('trained', 'c4'))
    write_day(w, D[4], 'c2', alarms=[], gate=('keep', 'c4', False), retrain=('skipped', None))
    write_day(w, D[5], 'm0', **_none(D[5]), failures=['assign'])
    # D[6]: no file at all
    write_day(w, D[7], 'm0', gate=('none', None, False), failures=['monitor', 'monitor'])
    write_day(w, D[8], 'x9')
    return str(w)


# ---------------------------------------------------------------- the data
def test_timeline_reads_every_kind_of_day(work):
    data = tl.timeline(work)
    days = data['days']
    assert (data['start'], data['end']) == ('2026-11-01', '2026-11-09')
    assert [e['date'] for e in days] == [d.isoformat() for d in D[:9]]
    assert [e['state'] for e in days] == ['complete'] * 6 + ['missing', 'failed',
                                                             'incomplete']
    assert [e['rerun'] for e in days] == [False] * 5 + [True] + [False] * 3
    assert [e['model'] for e in days] == ['m0', 'm0', 'm0', 'c2', 'c2', 'm0', None, 'm0',
                                          'x9']
    assert [e['change'] for e in days] == [None, None, None, 'promoted', None, 'rollback',
                                           None, None, 'changed']
    assert [None if e['alarms'] is None else len(e['alarms']) for e in days] == [
        0, 2, 1, 3, 0, 0, None, None, None]
    assert days[3]['alarms'][2] == {'metric': 'linf', 'feature': None}
    assert [e['fired'] for e in days] == [[], ['r2'], ['r2'], ['r2'], [], [], None, None,
                                          None]
    assert [e['retrain'] and (e['retrain']['status'], e['retrain']['candidate_version'])
            for e in days] == [('skipped', None), ('trained', 'c2'), ('skipped', None),
                               ('trained', 'c4'), ('skipped', None), ('skipped', None),
                               None, None, None]
    assert [e['gate'] and (e['gate']['decision'], e['gate']['candidate_version'],
                           e['gate']['promoted']) for e in days] == [
        ('none', None, False), ('none', None, False), ('promote', 'c2', True),
        ('none', None, False), ('keep', 'c4', False), ('none', None, False), None,
        ('none', None, False), None]
    assert [len(e['failures']) for e in days] == [0] * 5 + [1, 0, 2, 0]
    assert days[7]['failures'][0] == {'step': 'monitor', 'exit_code': 1, 'at': 'T',
                                      'error': 'RuntimeError: monitor broke'}
    assert days[7]['steps'] == {'assign': True, 'gate': True, 'monitor': False,
                                'retrain': False}
    assert days[8]['steps'] == {'assign': True, 'gate': False, 'monitor': False,
                                'retrain': False}
    assert days[2]['points'] == 600 and days[6]['points'] is None


def test_the_window_is_the_last_n_days_from_the_first_day_the_cycle_has(work):
    def dates(**kw):
        return [e['date'][8:] for e in tl.timeline(work, **kw)['days']]
    assert dates(days=3) == ['07', '08', '09']
    assert dates(end=D[4], days=2) == ['04', '05']
    assert dates(end=D[9], days=30) == [f'{i:02d}' for i in range(1, 11)]   # 10th: missing
    assert tl.timeline(work, end=D[9])['days'][-1]['state'] == 'missing'
    assert dates(end=D[0] - dt.timedelta(days=2), days=2) == ['29', '30']   # before it
    # the change is against the previous day with a model in the window, not before it
    assert [e['change'] for e in tl.timeline(work, end=D[5], days=2)['days']] == [
        None, 'changed']
    with pytest.raises(BeammlError, match='at least 1 day'):
        tl.timeline(work, days=0)


def test_a_retrain_under_way_is_not_done_and_an_empty_work_has_no_day(tmp_path, work):
    write_day(work, D[9], 'm0', alarms=[], gate=('none', None, False),
              retrain=('training', None))
    last = tl.timeline(work)['days'][-1]
    assert (last['state'], last['steps']['retrain']) == ('incomplete', False)
    assert tl.timeline(str(tmp_path / 'nothing'))['days'] == []
    none = tl.timeline(str(tmp_path / 'nothing'), end=D[0], days=2)['days']
    assert [(e['date'], e['state'], e['model'], e['alarms'], e['gate'], e['retrain'],
             any(e['steps'].values())) for e in none] == [
        (d, 'missing', None, None, None, None, False) for d in ('2026-10-31', '2026-11-01')]


def test_the_next_day_reads_only_the_days_whose_files_changed(work, caplog):
    folder = os.path.join(work, D[4].isoformat(), 'monitor') + '/'
    _write(folder + 'report_data.json', {'baseline': {'path': 'b', 'rows': 1, 'source': 's'},
                                         'rows': 1})
    tl.write_day_report(work, D[4], folder, 30)   # leaves WORK/D/timeline.json
    fresh = tl.timeline(work, D[8])
    assert fresh['read'] == 4   # days 6-9: after the cache
    write_day(work, D[2], failures=['gate'])   # an old day changes: read again
    again = tl.timeline(work, D[8])
    assert again['read'] == 5 and again['days'][2]['failures'][0]['step'] == 'gate'
    uncached = {k: v for k, v in again.items() if k != 'read'}
    caplog.clear()
    _write(os.path.join(work, D[4].isoformat(), 'timeline.json'), '{"days": ')   # broken:
    # a cache that cannot be read is no cache: every day is read
    assert tl.timeline(work, D[8]) == dict(uncached, read=9)
    assert 'timeline.json: not used (JSONDecodeError' in caplog.text


# ---------------------------------------------------------------- failures the steps record
@pytest.fixture
def cycle(tmp_path):
    return ['--input', str(tmp_path / 'in' / '{date}' / '*.csv'), '--model',
            str(tmp_path / 'models'), '--work', str(tmp_path / 'work')]


def test_a_failed_step_is_recorded_and_retry_later_is_not(cycle, tmp_path):
    day = tmp_path / 'work' / '2026-11-05'
    assert run_beamml('cycle', 'wait', '--date', '2026-11-05', *cycle).returncode == 4
    assert run_beamml('cycle', 'day', '--date', '2026-11-05', *cycle).returncode == 4
    assert not day.exists()   # no input yet: not a failure of the day
    for _ in range(2):   # the gate before the assign: a refusal (exit 2), each attempt
        out = run_beamml('cycle', 'gate', '--date', '2026-11-05', *cycle)
        assert out.returncode == 2 and 'run the assign step' in out.stderr
    doc = json.loads((day / 'failures.json').read_text())
    assert [(f['step'], f['exit_code']) for f in doc['failures']] == [('gate', 2)] * 2
    assert doc['failures'][0]['error'].startswith('BeammlError: 2026-11-05: ')
    assert re.fullmatch(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00', doc['failures'][0]['at'])
    entry = tl.timeline(str(tmp_path / 'work'))['days'][0]
    assert (entry['state'], len(entry['failures'])) == ('failed', 2)
    status = run_beamml('cycle', 'status', '--work', str(tmp_path / 'work'))
    assert '| 2026-11-05 | ? | ? | ? | ? | ? |' in status.stdout   # the day shows


def test_a_failure_that_cannot_be_recorded_keeps_the_steps_own_error(tmp_path, monkeypatch,
                                                                      caplog):
    c = steps.Cycle(str(tmp_path / '{date}.csv'), str(tmp_path / 'm'), str(tmp_path / 'w'))

    def broken(*a, **k):
        raise OSError('disk on fire')
    monkeypatch.setattr(steps, 'write_json', broken)
    with pytest.raises(BeammlError, match='run the assign step'):
        steps.run_step(c, D[0], 'gate')
    assert 'its failure was not recorded' in caplog.text and 'disk on fire' in caplog.text


# ---------------------------------------------------------------- the chart, no browser
def _by_class(root, *names):
    return [m for m in _marks(root) if set(names) <= set(m.get('class').split())]


def test_the_chart_marks_every_decision(work):
    root = _svg(chart.timeline(tl.timeline(work)['days'], 'the cycle'))
    assert root.get('data-chart') == 'timeline'
    assert int(root.get('data-marks')) == len(_marks(root))
    model = _by_class(root, 'model')
    assert [m.get('data-day')[8:] for m in model] == ['01', '02', '03', '04', '05', '06',
                                                      '08', '09']
    colour = {m.get('data-version'): m.get('fill') for m in model}
    assert len(set(colour.values())) == 3   # m0, c2, x9
    assert all(m.get('fill') == colour[m.get('data-version')] for m in model)
    assert [(m.get('data-day')[8:], m.get('class').split()[-1], m.get('data-version'))
            for m in _by_class(root, 'change')] == [('04', 'promoted', 'c2'),
                                                    ('06', 'rollback', 'm0'),
                                                    ('09', 'changed', 'x9')]
    alarms = _by_class(root, 'alarms')
    assert [(m.get('data-day')[8:], int(m.get('data-count'))) for m in alarms] == [
        ('02', 2), ('03', 1), ('04', 3)]
    heights = np.array([float(m.get('height')) for m in alarms])
    np.testing.assert_allclose(heights / heights.max(), np.array([2, 1, 3]) / 3, atol=0.02)
    assert 'psi (f0)' in alarms[0].find('title').text and 'r2' in alarms[0].find('title').text
    trained = _by_class(root, 'retrain', 'trained')
    assert [(m.get('data-day')[8:], m.get('data-version')) for m in trained] == [
        ('02', 'c2'), ('04', 'c4')]
    assert trained[0].get('fill') == colour['c2']   # the candidate's colour, used from 04
    assert [m.get('data-day')[8:] for m in _by_class(root, 'retrain', 'skipped')] == ['03']
    assert [(m.get('data-day')[8:], m.get('class').split()[-1], m.get('data-version'))
            for m in _by_class(root, 'gate')] == [('03', 'promote', 'c2'), ('05', 'keep', 'c4')]
    assert _by_class(root, 'gate', 'promote')[0].get('fill') == colour['c2']
    assert [(m.get('data-day')[8:], m.get('class').split()[-1])
            for m in _by_class(root, 'day')] == [('06', 'rerun'), ('07', 'missing'),
                                                 ('08', 'failed'), ('09', 'incomplete')]
    assert 'assign: RuntimeError: assign broke' in _by_class(root, 'day')[0].find(
        'title').text
    assert 'retrain not done' in _by_class(root, 'day', 'incomplete')[0].find('title').text
    texts = ' '.join(e.text or '' for e in root.iter())
    for label in ('model', 'alarms', 'retrain', 'gate', 'day', 'c4', 'failed', 'no file',
                  'rerun after a failure', 'promoted', 'rollback'):
        assert label in texts, label


def test_the_chart_escapes_names_and_says_no_data():
    days = [{'date': '2026-11-01', 'state': 'complete', 'rerun': False, 'model': HOSTILE,
             'points': 3, 'change': None, 'alarms': [{'metric': HOSTILE, 'feature': None}],
             'fired': [HOSTILE], 'retrain': {'status': 'trained', 'candidate_version': HOSTILE
                                              + '2', 'reason': HOSTILE},
             'gate': None, 'failures': []}]
    svg = chart.timeline(days, HOSTILE)
    assert '<script>' not in svg
    root = _svg(svg)   # well-formed
    assert len(_marks(root)) == 3 and root.find('title').text == HOSTILE
    empty = _svg(chart.timeline([], 'nothing'))
    assert empty.get('data-marks') == '0'
    assert any(e.get('class') == 'nodata' for e in empty.iter())


def test_many_days_and_versions_stay_inside_the_chart():
    days = [{'date': (D[0] + dt.timedelta(days=i)).isoformat(), 'state': 'complete',
             'rerun': False, 'model': f'v{i // 3}', 'points': 1, 'change': None,
             'alarms': [], 'fired': [], 'retrain': None, 'gate': None, 'failures': []}
            for i in range(90)]
    root = _svg(chart.timeline(days, '90 days'))
    xs = [float(m.get('x')) + float(m.get('width')) for m in _marks(root)]
    assert len(xs) == 90 and max(xs) <= float(root.get('width'))
    assert '30 versions: colours repeat' in ' '.join(e.text or '' for e in root.iter())


# ---------------------------------------------------------------- the pages
def test_status_writes_the_timeline_page(work, tmp_path):
    page = tmp_path / 'timeline.html'
    out = run_beamml('cycle', 'status', '--work', work, '--report', str(page),
                     '--timeline_days', '5')
    assert out.returncode == 0, out.stderr
    assert 'timeline: ' + str(page) + ' (5 day(s), 2026-11-05 to 2026-11-09)' in out.stdout
    text = page.read_text(encoding='utf-8')
    svgs = re.findall(r'<svg.*?</svg>', text, re.S)
    assert len(svgs) == 1 and _svg(svgs[0]).get('data-chart') == 'timeline'
    assert '<td>keep c4: because keep</td>' in text and '<td>failed</td>' in text
    assert '<td>complete (rerun)</td>' in text and 'http' not in text.replace(
        'http-equiv', '')
    for text in ('-1', 'x'):
        bad = run_beamml('cycle', 'status', '--work', work, '--timeline_days', text)
        assert bad.returncode == 2 and (f"argument --timeline_days: '{text}' is not an "
                                        'integer >= 0') in bad.stderr


def test_status_report_replaces_only_its_own_page(work, tmp_path):
    """The --report path is checked before anything is read: inside --work, a folder, or a
    file that is not a page status --report wrote is refused with one line (exit 2), the
    file kept as it was and no table printed; its own page is replaced."""
    theirs = tmp_path / 'notes.html'
    theirs.write_text('<html>a page of the user</html>')
    inside = os.path.join(work, D[3].isoformat(), 'monitor', 'report.html')
    _write(inside, 'monitor committed this page')
    for path, why in [(theirs, 'a file is there that beamml cycle status did not write; it '
                               'is not replaced'),
                      (inside, f'is inside --work {work}, the cycle\'s own files'),
                      (os.path.join(work, 'timeline.html'), 'is inside --work'),
                      (tmp_path, 'is a folder')]:
        bad = run_beamml('cycle', 'status', '--work', work, '--report', str(path))
        assert bad.returncode == 2 and why in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1 and '| day' not in bad.stdout
    assert theirs.read_text() == '<html>a page of the user</html>'
    assert open(inside).read() == 'monitor committed this page'
    assert not os.path.exists(os.path.join(work, 'timeline.html'))
    page = tmp_path / 'timeline.html'
    for days in ('3', '4'):   # the second run replaces the first's page
        out = run_beamml('cycle', 'status', '--work', work, '--report', str(page),
                         '--timeline_days', days)
        assert out.returncode == 0, out.stderr
        assert f'({days} day(s),' in out.stdout
    assert '<meta name="generator" content="beamml cycle status --report">' in \
        page.read_text()


def test_the_monitor_step_report_gets_the_timeline(work, tmp_path, caplog):
    folder = os.path.join(work, D[3].isoformat(), 'monitor') + '/'
    data = {'baseline': {'path': 'b', 'rows': 10, 'source': 's'}, 'rows': 12,
            'alarms': [{'metric': 'psi', 'feature': 'f0', 'value': 0.5, 'threshold': 0.2}],
            'decision': {'retrain': True, 'fired': ['r2']}}
    _write(folder + 'report_data.json', data)
    _write(folder + 'report.html', 'monitor committed this page')
    committed = sorted(os.listdir(folder))
    page = os.path.join(work, D[3].isoformat(), 'report.html')   # the day's page
    assert tl.write_day_report(work, D[3], folder, 3) == page
    # the folder monitor committed is not written: its page and its files are as they were
    assert sorted(os.listdir(folder)) == committed
    assert open(folder + 'report.html').read() == 'monitor committed this page'
    text = open(page, encoding='utf-8').read()
    heads = re.findall(r'<h2>(.*?)</h2>', text)
    assert heads == ['Summary', 'Alarms', 'The cycle, the last 3 day(s)']
    root = _svg(re.findall(r'<svg.*?</svg>', text, re.S)[0])
    assert [m.get('data-day') for m in _by_class(root, 'model')] == [
        '2026-11-02', '2026-11-03', '2026-11-04']
    # monitor's own page, outside the cycle, is unchanged: no timeline
    alone = monitor_report.monitor_report(data).render()
    assert 'The cycle' not in alone and 'data-chart="timeline"' not in alone
    os.remove(folder + 'report_data.json')   # never a failure of the step: a warning
    assert tl.write_day_report(work, D[3], folder, 3) is None
    assert 'no timeline in the monitor report' in caplog.text


# ---------------------------------------------------------------- in headless Chromium
def _near(rgb, colour: str, tol: int = 30) -> int:
    c = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(rgb.astype(int) - c).max(axis=-1) <= tol).sum())


@needs_browser
def test_chromium_draws_the_timeline(work, tmp_path):
    """The page's DOM as Chromium renders it, then the chart's screenshot: each version's
    colour, the alarms' and each day state's in the amounts drawn, and a quiet window's
    screenshot without the failed day's red (the check can fail). Three Chromium runs of
    2-3 s each: the test's ~8 s."""
    page = tmp_path / 'timeline.html'
    tl.write_timeline_page(work, str(page))
    dom = _chromium(tmp_path, '--dump-dom', 'file://' + str(page))
    rendered = _Marks()
    rendered.feed(dom)
    root = _svg(re.findall(r'<svg.*?</svg>', page.read_text(encoding='utf-8'), re.S)[0])
    assert rendered.charts == [['timeline', len(_marks(root)), len(_marks(root))]]
    assert dom.count('class="mark day failed"') == 1 and 'data-version="c4"' in dom
    single = tmp_path / 'chart.html'
    single.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><style>body{margin:0}'
                      f'</style></head><body>{re.findall(r"<svg.*?</svg>", page.read_text(), re.S)[0]}'
                      '</body></html>', encoding='utf-8')
    w, h = int(root.get('width')), int(root.get('height'))
    rgb = _screenshot(tmp_path, single, w, h, 'timeline')
    colours = {m.get('data-version'): m.get('fill') for m in _by_class(root, 'model')}
    col = (w - 70 - 14) / 9   # one column a day
    # the model lane: m0 on 5 days, c2 on 2, x9 on 1 (24 px high); alarms; the day lane
    assert _near(rgb, colours['m0']) > 0.8 * 5 * col * 24
    assert 0.8 * 2 * col * 24 < _near(rgb, colours['c2']) < 4 * col * 24
    assert _near(rgb, chart.ALARM) > 0.8 * 0.7 * col * 28 * (2 + 1 + 3) / 3   # the 3 bars
    for state in (chart.FAILED, chart.RERUN, chart.INCOMPLETE, chart.MISSING):
        assert _near(rgb, state, 3) > 0.9 * (col - 2) * 14, state
    quiet = tmp_path / 'quiet.html'   # the check can fail: no failed day, no red
    quiet_svg = chart.timeline(tl.timeline(work, end=D[4], days=5)['days'], 'quiet')
    quiet.write_text(f'<!DOCTYPE html><html><body style="margin:0">{quiet_svg}</body></html>',
                     encoding='utf-8')
    q = _svg(quiet_svg)
    rgb = _screenshot(tmp_path, quiet, int(q.get('width')), int(q.get('height')), 'quiet')
    assert _near(rgb, chart.FAILED, 12) == 0 and _near(rgb, chart.RERUN, 12) == 0
