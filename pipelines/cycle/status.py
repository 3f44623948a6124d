"""``beamml cycle status --work DIR [--report PATH]``: one line per day of the cycle, read
from its files; with ``--report`` also the timeline page of the last days
(:mod:`beamml.pipelines.cycle.timeline`).

Columns: the day, the model version its assign used, the points assigned, the alarms of
its monitor, its retrain decision (the candidate trained, or ``-``), and its gate (the
candidate judged that day and ``promote`` or ``keep``, or ``-``). A step not run yet
shows ``?``.
"""
from __future__ import annotations

import datetime as dt
import os

from apache_beam.io.filesystems import FileSystems

from beamml.pipelines.cycle.files import (ASSIGN, FAILURES_FILE, GATE_FILE, MONITOR,
                                          RETRAIN_FILE, SUCCESS, TIMELINE_DAYS)
from beamml.transforms.core.documents import exists, is_remote, join, read_json

COLUMNS = ('day', 'model', 'points', 'alarms', 'retrain', 'gate')


def days(work: str) -> list[str]:
    """The day folders under ``work`` that hold a step's file, sorted."""
    found = set()
    work = work if is_remote(work) else os.path.abspath(work)
    for pattern in (join(work, '*', ASSIGN, SUCCESS), join(work, '*', GATE_FILE),
                    join(work, '*', RETRAIN_FILE), join(work, '*', FAILURES_FILE)):
        for m in FileSystems.match([pattern])[0].metadata_list:
            rel = m.path[len(work.rstrip('/')) + 1:]
            found.add(rel.split('/')[0])
    return sorted(found)


def _read(path: str) -> dict | None:
    return read_json(path) if exists(path) else None


def row(work: str, date: str) -> dict:
    """What the day's files say, as the table's cells (strings)."""
    folder = join(work, date)
    done = _read(join(folder, ASSIGN, SUCCESS))
    drift = (_read(join(folder, MONITOR, 'drift.json'))
             if exists(join(folder, MONITOR, SUCCESS)) else None)
    retrain, gate = _read(join(folder, RETRAIN_FILE)), _read(join(folder, GATE_FILE))
    out = {'day': date, 'model': '?', 'points': '?', 'alarms': '?', 'retrain': '?',
           'gate': '?'}
    if done is not None:
        out['model'] = done['model']['version']
        out['points'] = str(done['counts']['records_ok'])
    if drift is not None:
        out['alarms'] = str(len(drift['alarms']))
    if retrain is not None:
        out['retrain'] = (f'trained {retrain["candidate_version"]}'
                          if retrain['status'] == 'trained' else
                          '-' if not retrain['fired'] else
                          f'{retrain["status"]}: ' + ', '.join(retrain['fired']))
    if gate is not None:
        out['gate'] = ('-' if gate['decision'] == 'none' else
                       f'{gate["decision"]} {gate["candidate_version"]}')
    return out


def table(work: str) -> list[dict]:
    work = work if is_remote(work) else os.path.abspath(work)
    return [row(work, d) for d in days(work)]


def markdown(rows: list[dict]) -> str:
    lines = ['| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
    lines += ['| ' + ' | '.join(r[c] for c in COLUMNS) + ' |' for r in rows]
    return '\n'.join(lines)


def show(work: str, report: str | None = None, end: dt.date | None = None,
         days: int = TIMELINE_DAYS) -> list[dict]:
    """Print the table; with ``report`` write the timeline page of the ``days`` days up to
    ``end`` (default: the last day under ``work``) there."""
    data = None
    if report:   # first: a bad --report path is refused before anything is read
        from beamml.pipelines.cycle.timeline import write_timeline_page
        data = write_timeline_page(work, report, end, max(days, 1))
    rows = table(work)
    if not rows:
        print(f'no day of the cycle under {work}')
    else:
        print(markdown(rows))
    if data is not None:
        print(f'timeline: {report} ({len(data["days"])} day(s)'
              + (f', {data["start"]} to {data["end"]})' if data['days'] else ')'))
    return rows

