"""The cycle's timeline: what the decision files of the last N days say, day by day.

:func:`timeline` reads the day folders ``WORK/D/`` of the days ``end - N + 1 .. end``
(from the first day the cycle has, when that is later) and returns one entry per
calendar day:

``date``
    ``YYYY-MM-DD``.
``state``
    ``complete`` (assign/ and monitor/ committed, ``gate.json`` and a final
    ``retrain.json``), ``failed`` (a step's failure is recorded in ``failures.json`` and
    the day is not complete), ``incomplete`` (some of its files, no failure recorded: a
    day under way, or one killed before it could say so) or ``missing`` (no object at
    all under ``WORK/D/``).
``rerun``
    the day is complete and ``failures.json`` records earlier failed attempts.
``steps``
    ``{assign, gate, monitor, retrain: done?}``.
``model``, ``points``
    the version the day's assign used and the points it assigned (None before it ran).
``change``
    None, or how ``model`` differs from the previous day's that has one: ``promoted``
    (that day's gate promoted it), ``rollback`` (a version used earlier in the
    timeline) or ``changed`` (``LATEST`` moved outside the cycle).
``alarms``
    None before the monitor committed, else ``[{metric, feature}]`` (``alarms.jsonl``).
``fired``
    the retraining rules that fired (``monitor/decision.json``), or None.
``retrain``
    None, or ``{status, candidate_version, reason}`` (``retrain.json``).
``gate``
    None, or ``{decision, candidate_version, reason, promoted, latest}`` (``gate.json``).
``failures``
    ``[{step, exit_code, error, at}]`` (``failures.json``, written by
    :func:`beamml.pipelines.cycle.steps.run_step`).

One listing of ``WORK`` finds the files (with their size and time: a day's
fingerprint). :func:`write_day_report` writes the day's page, ``WORK/D/report.html``
(monitor's report and the timeline), and leaves the data beside it
(``WORK/D/timeline.json``); a later timeline takes the days whose fingerprint did not
change from the latest such file and reads the others (a few small objects a day, by a
small pool of threads). :func:`timeline_page` and :func:`write_day_report` draw it
(:func:`beamml.transforms.timeline.timeline`). Neither writes into the folder monitor
committed: ``monitor/`` stays as its ``_SUCCESS`` lists it.

``beamml cycle status --report PATH`` (:func:`write_timeline_page`) writes a page whose
head names it (``<meta name="generator" content="beamml cycle status --report">``); it
replaces a file at PATH only when that file is such a page, and refuses a PATH inside
WORK (the files it reads), before it reads anything (:func:`check_report_path`).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor

from apache_beam.io.filesystems import FileSystems

from beamml.pipelines._platform.overlap import Namespace
from beamml.pipelines.cycle.files import (ASSIGN, DAY_REPORT, FAILURES_FILE, GATE_FILE,
                                          MONITOR, RETRAIN_FILE, SUCCESS, TIMELINE_DAYS,
                                          TIMELINE_FILE)
from beamml.transforms.core.documents import (exists, is_remote, join, read_json,
                                             read_text, write_json)
from beamml.transforms.core.errors import BeammlError, first_line

__all__ = ['TIMELINE_DAYS', 'timeline', 'timeline_page', 'check_report_path',
           'write_timeline_page', 'write_day_report']

LOG = logging.getLogger('beamml')
#: the head of a page ``status --report`` wrote: the one kind of file it replaces
STATUS_GENERATOR = 'beamml cycle status --report'
_DAY = re.compile(r'^(\d{4}-\d{2}-\d{2})/(.*)$')
#: the files a day's entry is read from (relative to WORK/D/)
_FILES = {'assign': f'{ASSIGN}/{SUCCESS}', 'monitor': f'{MONITOR}/{SUCCESS}',
          'alarms': f'{MONITOR}/alarms.jsonl', 'decision': f'{MONITOR}/decision.json',
          'gate': GATE_FILE, 'retrain': RETRAIN_FILE, 'failures': FAILURES_FILE}


def _root(work: str) -> str:
    return (work if is_remote(work) else os.path.abspath(work)).rstrip('/')


def listing(work: str) -> dict[str, dict[str, list]]:
    """{day: {path under ``WORK/day/``: [size, last updated]}}, from one listing of WORK."""
    root = _root(work)
    found = FileSystems.match([root + '/**'])[0].metadata_list   # (none: no folder yet)
    out: dict[str, dict[str, list]] = {}
    for m in found:
        hit = _DAY.match(m.path[len(root) + 1:].replace('\\', '/'))
        if hit:
            out.setdefault(hit.group(1), {})[hit.group(2)] = [
                m.size_in_bytes, getattr(m, 'last_updated_in_seconds', None)]
    return out


def _fingerprint(present: dict) -> list:
    """What a day's entry is read from, as the listing describes it (size, time): an
    entry cached with the same fingerprint is the same entry."""
    return [bool(present)] + [[rel] + present[rel] for rel in sorted(_FILES.values())
                              if rel in present]


def _window(days: dict, end: dt.date | None, n: int) -> list[dt.date]:
    if n < 1:
        raise BeammlError(f'the timeline needs at least 1 day, not {n}')
    known = sorted(dt.date.fromisoformat(d) for d in days)
    if end is None:
        if not known:
            return []
        end = known[-1]
    start = end - dt.timedelta(days=n - 1)
    if known and start < known[0] <= end:   # not before the cycle's first day
        start = known[0]
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def _read_day(root: str, date: str, present: dict) -> dict:
    """The documents of one day that are there: {name: parsed} (``decision.json`` only
    while there is no ``retrain.json``, which holds the rules that fired too)."""
    docs = {}
    for name, rel in _FILES.items():
        if rel not in present or name == 'monitor' or (
                name == 'decision' and _FILES['retrain'] in present):
            continue
        text = read_text(join(root, date, rel))
        docs[name] = ([json.loads(line) for line in text.splitlines() if line.strip()]
                      if name == 'alarms' else json.loads(text))
    return docs


def _entry(date: str, present: dict, docs: dict) -> dict:
    monitored = _FILES['monitor'] in present
    retrain, gate = docs.get('retrain'), docs.get('gate')
    steps = {'assign': 'assign' in docs, 'gate': gate is not None, 'monitor': monitored,
             'retrain': retrain is not None and retrain.get('status') != 'training'}
    failures = (docs.get('failures') or {}).get('failures') or []
    complete = all(steps.values())
    state = ('missing' if not present else 'complete' if complete else
             'failed' if failures else 'incomplete')
    done = docs.get('assign') or {}
    return {
        'date': date, 'state': state, 'rerun': complete and bool(failures), 'steps': steps,
        'model': (done.get('model') or {}).get('version'),
        'points': (done.get('counts') or {}).get('records_ok'),
        'change': None,
        'alarms': ([{'metric': a.get('metric'), 'feature': a.get('feature')}
                    for a in docs.get('alarms', [])] if monitored else None),
        'fired': (list((docs.get('decision') or retrain or {}).get('fired') or [])
                  if monitored else None),
        'retrain': None if retrain is None else {
            'status': retrain.get('status'), 'candidate_version':
            retrain.get('candidate_version'), 'reason': retrain.get('reason')},
        'gate': None if gate is None else {
            k: gate.get(k) for k in ('decision', 'candidate_version', 'reason', 'promoted',
                                     'latest')},
        'failures': [{k: f.get(k) for k in ('step', 'exit_code', 'error', 'at')}
                     for f in failures],
    }


def _changes(entries: list[dict]) -> None:
    """Set ``change`` where a day's model differs from the previous day's that has one."""
    seen, previous = set(), None
    for e in entries:
        if e['model'] is None:
            continue
        if previous is not None and e['model'] != previous['model']:
            promoted = (previous['gate'] or {}).get('promoted') and \
                (previous['gate'] or {}).get('candidate_version') == e['model']
            e['change'] = ('promoted' if promoted else 'rollback' if e['model'] in seen
                           else 'changed')
        seen.add(e['model'])
        previous = e


def timeline(work: str, end: dt.date | None = None, days: int = TIMELINE_DAYS) -> dict:
    """The timeline of the ``days`` days up to ``end`` (default: the last day under
    ``work``): ``{work, start, end, days: [entry per calendar day], fingerprints}`` (see
    the module). A day whose files the listing describes as the latest earlier
    ``WORK/D/timeline.json`` recorded them is taken from there, not read again."""
    root = _root(work)
    found = listing(root)
    window = _window(found, end, days)
    names = [d.isoformat() for d in window]
    prints = {d: _fingerprint(found.get(d, {})) for d in names}
    cached = _cached(root, found, names[-1] if names else None)
    todo = [d for d in names if (cached.get(d) or {}).get('fingerprint') != prints[d]]
    with ThreadPoolExecutor(max_workers=8) as pool:   # small objects: latency, not CPU
        docs = dict(zip(todo, pool.map(lambda d: _read_day(root, d, found.get(d, {})), todo)))
    entries = [_entry(d, found.get(d, {}), docs[d]) if d in docs
               else dict(cached[d]['entry'], change=None) for d in names]
    _changes(entries)
    return {'work': root, 'start': names[0] if names else None,
            'end': names[-1] if names else None, 'days': entries, 'fingerprints': prints,
            'read': len(todo)}


def _cached(root: str, found: dict, end: str | None) -> dict:
    """{day: {fingerprint, entry}} of the latest ``WORK/D/timeline.json`` up to ``end``
    (an unreadable one is no cache)."""
    latest = max((d for d, files in found.items()
                  if TIMELINE_FILE in files and end and d <= end), default=None)
    if latest is None:
        return {}
    try:
        return read_json(join(root, latest, TIMELINE_FILE))['days']
    except Exception as e:
        LOG.warning('%s: not used (%s: %s)', join(root, latest, TIMELINE_FILE),
                    type(e).__name__, first_line(e))
        return {}


def _cache_doc(data: dict) -> dict:
    return {'days': {e['date']: {'fingerprint': data['fingerprints'][e['date']],
                                 'entry': e} for e in data['days']}}


def _chart(data: dict) -> str:
    from beamml.transforms.timeline import timeline as timeline_chart
    title = (f'The cycle, {data["start"]} to {data["end"]}' if data['days']
             else 'The cycle: no day yet')
    return timeline_chart(data['days'], title)


def _text(data: dict) -> str:
    n = len(data['days'])
    counts = {s: sum(e['state'] == s for e in data['days'])
              for s in ('complete', 'failed', 'incomplete', 'missing')}
    rerun = sum(e['rerun'] for e in data['days'])
    return (f'{n} day(s) under {data["work"]}: ' + ', '.join(
        f'{v} {k}' for k, v in counts.items() if v) + (f' ({rerun} after a failed attempt)'
                                                      if rerun else '') +
            '. One column a day: the model version assign used (a new colour where it '
            'changed: promoted by the gate, rolled back, or changed outside the cycle), the '
            'alarms, the candidate trained, the gate\'s decision and the day\'s state.')


def _rows(data: dict) -> list[tuple]:
    def alarms(e):
        if e['alarms'] is None:
            return '?'
        return str(len(e['alarms'])) + (' (' + ', '.join(sorted({a['metric'] for a in
                                                                 e['alarms']})) + ')'
                                        if e['alarms'] else '')

    def retrain(e):
        r = e['retrain']
        return ('?' if r is None else f'trained {r["candidate_version"]}'
                if r['status'] == 'trained' else f'{r["status"]}: {r["reason"]}')

    def gate(e):
        g = e['gate']
        return ('?' if g is None else '-' if g['decision'] == 'none' else
                f'{g["decision"]} {g["candidate_version"]}: {g["reason"]}')
    return [(e['date'], e['state'] + (' (rerun)' if e['rerun'] else ''),
             e['model'] or '?', e['change'] or '', alarms(e), retrain(e), gate(e),
             '; '.join(f'{f["step"]}: {f["error"]}' for f in e['failures']))
            for e in data['days']]


_COLUMNS = ['day', 'state', 'model', 'change', 'alarms', 'retrain', 'gate', 'failures']


def timeline_page(data: dict):
    """The timeline on a page of its own (a :class:`beamml.transforms.report.Report`):
    the chart and a table of the days."""
    from beamml.transforms.report import Report
    report = Report('beamml cycle: the timeline', _text(data), generator=STATUS_GENERATOR)
    report.section('The timeline').add(_chart(data))
    report.section('The days').table(_rows(data), _COLUMNS)
    return report


def check_report_path(work: str, path: str) -> None:
    """``status --report PATH`` before anything is read: PATH must not be inside WORK
    (the cycle's files, which the page is read from) nor a folder, and a file there must
    be a page ``status --report`` wrote (its head says so); anything else is a one-line
    error, and nothing is written."""
    root = _root(work)
    if Namespace(f'--work {root}', root + '/').holds(path):   # the overlap rule's "lies in"
        raise BeammlError(f'--report {path} is inside --work {root}, the cycle\'s own files '
                          'that the page is read from: write the page outside it')
    if not is_remote(path) and os.path.isdir(path):
        raise BeammlError(f'--report {path} is a folder: give the page\'s file name')
    if not exists(path):
        return
    with FileSystems.open(path) as f:
        head = f.read(4096)
    if f'<meta name="generator" content="{STATUS_GENERATOR}">'.encode() not in head:
        raise BeammlError(f'--report {path}: a file is there that beamml cycle status did '
                          'not write; it is not replaced (remove it, or choose another path)')


def write_timeline_page(work: str, path: str, end: dt.date | None = None,
                        days: int = TIMELINE_DAYS) -> dict:
    """``beamml cycle status --report PATH``: the page of :func:`timeline_page` (PATH
    checked by :func:`check_report_path` first)."""
    check_report_path(work, path)
    data = timeline(work, end, days)
    timeline_page(data).write(path)
    return data


def write_day_report(work: str, date: dt.date, monitor_folder: str,
                     days: int = TIMELINE_DAYS) -> str | None:
    """The cycle's monitor step: the day's page ``WORK/D/report.html``, monitor's report
    (from the committed ``monitor_folder``, which is not written) with the timeline of the
    last ``days`` days after its summary, and the timeline's data ``WORK/D/timeline.json``.
    Like the report itself, never a failure of the step: one warning line, and monitor's
    own page is there."""
    from beamml.pipelines.monitor.report import monitor_report
    day = join(_root(work), date.isoformat())
    try:
        data = timeline(work, date, days)
        page = monitor_report(read_json(join(monitor_folder, 'report_data.json')), extra=[(
            f'The cycle, the last {len(data["days"])} day(s)', _text(data), _chart(data))])
        written = page.write(join(day, DAY_REPORT))
        write_json(join(day, TIMELINE_FILE), _cache_doc(data))
        return written
    except Exception as e:
        first = first_line(e)
        LOG.warning('cycle %s: no timeline in the monitor report (%s: %s)', date,
                    type(e).__name__, first)
        return None
