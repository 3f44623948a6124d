"""``report.html`` of a batch ``beamml monitor`` run, from its report data (report_data.json).

One self-contained page (:class:`beamml.transforms.report.Report`): a summary table and
the alarms; PSI and Jensen-Shannon divergence per feature against their thresholds; per
feature, the baseline's and the current histogram on the drift bins (the bins PSI and JS
compare, with the overflow bins at the ends); the model's cluster shares, baseline vs
current, and its distance histogram; over the windows of the run's history (and this
one), PSI per feature and the model's metrics. Prediction logs get their rates and
metrics, baseline vs current.
"""
from __future__ import annotations

import logging
import math
from typing import Sequence

from beamml.transforms.report import Report, bars_with_thresholds, histogram_pair, lines

__all__ = ['monitor_report', 'write_monitor_report', 'REPORT_FILE']

LOG = logging.getLogger('beamml')
REPORT_FILE = 'report.html'


def _num(v) -> float:
    return math.nan if v is None else float(v)


def monitor_report(data: dict, title: str = 'beamml monitor',
                   extra: Sequence[tuple[str, str | None, str]] = ()) -> Report:
    """The report of one batch monitor run (``data``: its report_data document);
    ``extra`` sections ``(heading, text, markup)`` go after the summary and the alarms
    (the daily cycle's timeline: :mod:`beamml.pipelines.cycle.timeline`)."""
    base = data['baseline']
    alarms = data.get('alarms') or []
    decision = data.get('decision') or {}
    report = Report(title, f'{data["rows"]:,} rows against the baseline {base.get("path")} '
                           f'({base.get("rows"):,} rows, {base.get("source")}); '
                           f'{len(alarms)} alarm(s).')
    report.section('Summary')
    report.table([('rows', data['rows']), ('refused rows', data.get('refused', 0)),
                  ('baseline', base.get('path')), ('baseline rows', base.get('rows')),
                  ('baseline made', base.get('created')), ('alarms', len(alarms)),
                  ('retrain', decision.get('retrain')),
                  ('rules fired', ', '.join(map(str, decision.get('fired') or [])) or 'none')],
                 ['field', 'value'])
    if alarms:
        report.section('Alarms')
        report.table([(a['metric'], a.get('feature') if a.get('feature') is not None else '',
                       f'{a["value"]:.6g}', f'{a["threshold"]:g}') for a in alarms],
                     ['metric', 'feature', 'value', 'threshold'])
    for heading, text, markup in extra:
        report.section(heading, text).add(markup)

    features = data.get('features') or []
    if features:
        names = [f['name'] for f in features]
        for metric, label in (('psi', 'Population stability index'),
                              ('js', 'Jensen-Shannon divergence (base 2)')):
            report.section(f'{label} per feature', 'Bars past their threshold tick are '
                           'alarms (thresholds from the monitoring config).')
            report.add(bars_with_thresholds(
                names, [_num(f[metric]['value']) for f in features],
                [_num(f[metric]['threshold']) for f in features],
                f'{metric.upper()} per feature', x_label=metric))
        report.section('Histograms, baseline vs current', 'Shares of each data set per drift '
                       "bin (the baseline's bins; below and above: outside its range).")
        for f in features:
            report.add(histogram_pair(f['drift_edges'], f['baseline_drift_counts'],
                                      f['current_drift_counts'],
                                      f'{f["name"]}: PSI {_num(f["psi"]["value"]):.3g}, '
                                      f'JS {_num(f["js"]["value"]):.3g}', x_label=f['name']))

    clusters = data.get('clusters')
    if clusters:
        k = len(clusters['baseline_shares'])
        report.section('Cluster shares, baseline vs current',
                       f'L-infinity distance {_num(clusters["linf"]["value"]):.3g} '
                       f'(threshold {_num(clusters["linf"]["threshold"]):g}).')
        report.add(histogram_pair(list(range(k + 1)), clusters['baseline_counts'],
                                  clusters['current_counts'], 'Points per cluster (shares)',
                                  x_label='cluster'))
    distance = data.get('distance')
    if distance:
        report.section('Distance to the nearest centre',
                       f'Mean ratio {_num(distance["mean_distance_ratio"]["value"]):.3g}; '
                       f'far share (beyond the training p99 distance) '
                       f'{_num(distance.get("current_far_share")):.3g} vs '
                       f'{_num(distance.get("baseline_far_share")):.3g}.')
        report.add(histogram_pair(distance['edges'], distance['baseline_counts'],
                                  distance['current_counts'], 'Distance to the nearest centre',
                                  x_label='distance'))

    windows = data.get('windows') or []
    if len(windows) > 1:
        xs = [w.get('window_start') or w.get('run') or str(i) for i, w in enumerate(windows)]
        if features:
            report.section('PSI over the windows', 'This run and the earlier runs of its '
                           'history, in order.')
            report.add(lines(xs, {n: [_num(w.get('psi', {}).get(n)) for w in windows]
                                  for n in names}, 'PSI per feature over the windows',
                             'window', 'PSI'))
        metrics = sorted({m for w in windows for m in (w.get('model') or {})})
        if metrics:
            report.section('Model metrics over the windows')
            report.add(lines(xs, {m: [_num((w.get('model') or {}).get(m)) for w in windows]
                                  for m in metrics}, 'Model metrics over the windows',
                             'window', 'value'))

    logs = data.get('logs')
    if logs:
        report.section('Prediction logs, baseline vs current')
        report.table([(m, f'{_num(logs["baseline"].get(m)):.6g}',
                       f'{_num(logs["current"].get(m)):.6g}')
                      for m in sorted(set(logs['baseline']) & set(logs['current']))
                      if isinstance(logs['baseline'].get(m), (int, float))],
                     ['metric', 'baseline', 'current'])
    return report


def write_monitor_report(path: str, data: dict) -> str | None:
    """Write the report; on any error log one warning line and return None (monitoring
    goes on: its JSON outputs are the results)."""
    try:
        return monitor_report(data).write(path)
    except Exception as e:   # never fail a monitoring run for its page
        first = str(e).splitlines()[0] if str(e) else ''
        LOG.warning('monitor: no report written (%s: %s)', type(e).__name__, first)
        return None
