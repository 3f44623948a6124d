"""Drift of a profile against its baseline, alarms, and the retraining decision.

Kernels (numpy): :func:`psi` and :func:`js_divergence` of two histograms of counts over
the same bins. Both add ``epsilon`` (default 1e-6, as common PSI practice) to every bin
*share* first, so an empty bin does not make them infinite:

* PSI = sum over bins of ``(a - b) ln(a / b)``, ``a`` the current shares + eps, ``b``
  the baseline's + eps (not renormalised);
* JS = the Jensen-Shannon divergence in base 2 (in [0, 1]) of the two share vectors
  + eps, each renormalised to sum 1 (what ``scipy.spatial.distance.jensenshannon(p, q,
  base=2) ** 2`` gives for the same vectors).

:func:`drift_document` compares a profile (binned on the baseline's fine edges) with
the baseline: per feature (and the L2 norm) PSI and JS on the drift bins; with a model,
``cluster_share_linf`` (the largest absolute change of a cluster's share of the
points), ``mean_distance_ratio`` (current / baseline mean distance to the nearest
centre) and ``far_share_ratio`` (current / baseline share of points at or beyond the
baseline's far threshold; the baseline share is floored at 1 / its rows). An alarm
fires when a value is greater than its threshold; a value that cannot be computed (no
current point) is NaN and fires none. :func:`decide` applies the retraining rules to
the windows' drift documents.
"""
from __future__ import annotations

import math

import numpy as np

from beamml.transforms.monitoring.baseline import Baseline, drift_counts
from beamml.transforms.monitoring.config import FEATURE_METRICS, MonitorConfig
from beamml.transforms.monitoring.logs import logs_drift

__all__ = ['psi', 'js_divergence', 'shares', 'drift_document', 'alarms_of', 'decide',
           'summary_line', 'report_data', 'window_summary']


def shares(counts) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return counts / total if total > 0 else np.full(len(counts), np.nan)


def psi(baseline_counts, current_counts, epsilon: float = 1e-6) -> float:
    """Population stability index of the current counts against the baseline's."""
    b = shares(baseline_counts) + epsilon
    a = shares(current_counts) + epsilon
    return float(np.sum((a - b) * np.log(a / b)))


def js_divergence(baseline_counts, current_counts, epsilon: float = 1e-6) -> float:
    """Jensen-Shannon divergence, base 2, of the two histograms' shares (+ epsilon)."""
    p = shares(baseline_counts) + epsilon
    q = shares(current_counts) + epsilon
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)
    return float(max(0.0, 0.5 * np.sum(p * np.log2(p / m)) + 0.5 * np.sum(q * np.log2(q / m))))


def _entry(value: float, threshold: float) -> dict:
    value = float(value)
    return {'value': value, 'threshold': float(threshold),
            'alarm': bool(not math.isnan(value) and value > threshold)}


def _ratio(current, base) -> float:
    if current is None or base is None or not math.isfinite(current):
        return math.nan
    if base == 0:
        return math.inf if current > 0 else math.nan
    return current / base


def drift_document(baseline: Baseline, profile: dict, config: MonitorConfig,
                   window: tuple[str | None, str | None] = (None, None)) -> dict:
    """The drift of ``profile`` (binned on the baseline's edges) against ``baseline``:
    ``{window_start, window_end, rows, epsilon, features: {name: {psi, js: {value,
    threshold, alarm}}}, model: {metric: {...}} (with a model), alarms: [...]}``."""
    eps = config.epsilon
    b = baseline.doc
    if baseline.kind == 'logs':
        values = logs_drift(b['logs'], profile['logs'])
        doc = {'window_start': window[0], 'window_end': window[1], 'rows': profile['rows'],
               'baseline_rows': b['rows'], 'epsilon': eps, 'features': {},
               'logs': {m: _entry(v, config.threshold(m)) for m, v in values.items()}}
        doc['alarms'] = alarms_of(doc)
        return doc
    names = baseline.names + [b['norm_name']]
    sections = [profile['features'][n] for n in baseline.names] + [profile['l2_norm']]
    features = {}
    for j, (name, cur) in enumerate(zip(names, sections)):
        base = baseline.columns[j]
        cuts = base['drift']['cuts']
        bh = drift_counts(base['histogram']['counts'], cuts)
        ch = drift_counts(cur['histogram']['counts'], cuts)
        empty = ch.sum() == 0 or bh.sum() == 0
        features[name] = {
            'psi': _entry(math.nan if empty else psi(bh, ch, eps), config.threshold('psi', name)),
            'js': _entry(math.nan if empty else js_divergence(bh, ch, eps),
                         config.threshold('js', name))}
    doc = {'window_start': window[0], 'window_end': window[1], 'rows': profile['rows'],
           'baseline_rows': b['rows'], 'epsilon': eps, 'features': features}
    if baseline.with_model and 'clusters' in profile:
        bs = np.asarray(b['clusters']['shares'])
        cs = np.asarray(profile['clusters']['shares'])
        cur_n = sum(profile['clusters']['counts'])
        linf = float(np.max(np.abs(cs - bs))) if cur_n and len(bs) else math.nan
        base_far = b.get('far_share')
        if base_far is not None and b['rows']:
            base_far = max(base_far, 1.0 / b['rows'])
        doc['model'] = {
            'cluster_share_linf': _entry(linf, config.threshold('cluster_share_linf')),
            'mean_distance_ratio': _entry(_ratio(profile['distance']['mean'],
                                                 b['distance']['mean']),
                                          config.threshold('mean_distance_ratio')),
            'far_share_ratio': _entry(_ratio(profile.get('far_share'), base_far),
                                      config.threshold('far_share_ratio'))}
    doc['alarms'] = alarms_of(doc)
    return doc


def alarms_of(doc: dict) -> list[dict]:
    """The alarm records of a drift document: ``{metric, feature, value, threshold,
    window_start, window_end}`` (``feature`` null for the model's metrics)."""
    out = []
    w = {'window_start': doc['window_start'], 'window_end': doc['window_end']}
    for name, metrics in doc['features'].items():
        for metric in FEATURE_METRICS:
            e = metrics[metric]
            if e['alarm']:
                out.append({'metric': metric, 'feature': name, 'value': e['value'],
                            'threshold': e['threshold'], **w})
    for metric, e in list((doc.get('model') or {}).items()) + list(
            (doc.get('logs') or {}).items()):
        if e['alarm']:
            out.append({'metric': metric, 'feature': None, 'value': e['value'],
                        'threshold': e['threshold'], **w})
    return out


def _values(doc: dict, metric: str) -> dict:
    """{feature or None: value} of one metric in a drift document."""
    if metric in FEATURE_METRICS:
        return {n: m[metric]['value'] for n, m in doc.get('features', {}).items()}
    e = (doc.get('model') or {}).get(metric) or (doc.get('logs') or {}).get(metric)
    return {} if e is None else {None: e['value']}


def decide(windows: list[dict], config: MonitorConfig, retrain_input: str | None = None) -> dict:
    """Apply the rules to the drift documents of consecutive windows (oldest first, the
    current one last): ``{retrain, fired: [rule names], rules: [{name, metric, threshold,
    consecutive, fired, evidence: [{feature, values, windows}]}], windows}``."""
    results = []
    for rule in config.rules:
        n = rule['consecutive']
        recent = windows[-n:]
        evidence = []
        if len(recent) == n:
            per = [_values(d, rule['metric']) for d in recent]
            keys = set(per[-1])
            if rule.get('feature') is not None:
                keys &= {rule['feature']}
            for key in sorted(keys, key=lambda k: '' if k is None else str(k)):
                vals = [p.get(key, math.nan) for p in per]
                if all(v is not None and (v > rule['threshold']) for v in vals):
                    evidence.append({'feature': key, 'values': vals,
                                     'windows': [_window_name(d) for d in recent]})
        results.append({**rule, 'fired': bool(evidence), 'evidence': evidence,
                        'windows_available': len(windows)})
    fired = [r['name'] for r in results if r['fired']]
    return {'retrain': bool(fired), 'fired': fired, 'rules': results,
            'windows': [_window_name(d) for d in windows], 'retrain_input': retrain_input}


def _window_name(doc: dict) -> str | None:
    if doc.get('window_start') or doc.get('window_end'):
        return f'{doc.get("window_start")}/{doc.get("window_end")}'
    return doc.get('run')


def window_summary(doc: dict) -> dict:
    """The values of one window's drift document, for a report's time series: ``{run,
    window_start, window_end, psi: {feature: v}, js: {...}, model: {metric: v}}``."""
    return {'run': doc.get('run'), 'window_start': doc.get('window_start'),
            'window_end': doc.get('window_end'),
            **{m: {n: e[m]['value'] for n, e in doc.get('features', {}).items()}
               for m in FEATURE_METRICS},
            'model': {m: e['value'] for m, e in (doc.get('model') or {}).items()},
            'logs': {m: e['value'] for m, e in (doc.get('logs') or {}).items()}}


def summary_line(alarms: list[dict], limit: int = 8) -> str:
    """``monitor: no alarm`` or ``monitor: N alarm(s): psi features_0=0.41>0.2, ...``."""
    if not alarms:
        return 'monitor: no alarm'
    parts = [f'{a["metric"]}{" " + a["feature"] if a["feature"] is not None else ""}='
             f'{a["value"]:.3g}>{a["threshold"]:g}' for a in alarms[:limit]]
    more = f', ... ({len(alarms) - limit} more)' if len(alarms) > limit else ''
    return f'monitor: {len(alarms)} alarm(s): ' + ', '.join(parts) + more


def report_data(baseline: Baseline, profile: dict, drift: dict, decision: dict,
                windows: list[dict] | None = None) -> dict:
    """Everything a report needs (report_data.json; fields in docs/pipelines/monitor.md)."""
    b = baseline.doc
    if baseline.kind == 'logs':
        return {'window_start': drift['window_start'], 'window_end': drift['window_end'],
                'rows': profile['rows'], 'refused': profile.get('refused', 0),
                'baseline': {'source': b.get('source'), 'created': b.get('created'),
                             'rows': b['rows'], 'path': baseline.path, 'model': None},
                'epsilon': drift['epsilon'], 'features': [], 'clusters': None,
                'distance': None, 'logs': {'baseline': b['logs'], 'current': profile['logs'],
                                           'drift': drift['logs']},
                'alarms': drift['alarms'], 'decision': decision, 'windows': windows or []}
    names = baseline.names + [b['norm_name']]
    sections = [profile['features'][n] for n in baseline.names] + [profile['l2_norm']]
    features = []
    for j, (name, cur) in enumerate(zip(names, sections)):
        base = baseline.columns[j]
        cuts = base['drift']['cuts']
        bh = drift_counts(base['histogram']['counts'], cuts)
        ch = drift_counts(cur['histogram']['counts'], cuts)
        d = drift['features'][name]
        features.append({
            'name': name, 'kind': 'norm' if j == len(baseline.names) else 'feature',
            'edges': base['histogram']['edges'],
            'baseline_counts': base['histogram']['counts'],
            'current_counts': cur['histogram']['counts'],
            'drift_edges': base['drift']['edges'], 'baseline_drift_counts': bh.tolist(),
            'current_drift_counts': ch.tolist(),
            'baseline_drift_shares': shares(bh).tolist(), 'current_drift_shares': shares(ch).tolist(),
            'baseline': {k: base[k] for k in ('count', 'nan', 'mean', 'std', 'min', 'max',
                                              'quantiles')},
            'current': {k: cur[k] for k in ('count', 'nan', 'mean', 'std', 'min', 'max',
                                            'quantiles')},
            'psi': d['psi'], 'js': d['js']})
    doc = {'window_start': drift['window_start'], 'window_end': drift['window_end'],
           'rows': profile['rows'], 'refused': profile.get('refused', 0),
           'baseline': {'source': b.get('source'), 'created': b.get('created'),
                        'rows': b['rows'], 'path': baseline.path,
                        'model': b.get('model')},
           'epsilon': drift['epsilon'], 'features': features, 'clusters': None,
           'distance': None, 'logs': None, 'alarms': drift['alarms'], 'decision': decision,
           'windows': windows or []}
    if 'model' in drift:
        doc['clusters'] = {'baseline_shares': b['clusters']['shares'],
                           'current_shares': profile['clusters']['shares'],
                           'baseline_counts': b['clusters']['counts'],
                           'current_counts': profile['clusters']['counts'],
                           'linf': drift['model']['cluster_share_linf']}
        doc['distance'] = {'baseline_mean': b['distance']['mean'],
                           'current_mean': profile['distance']['mean'],
                           'mean_distance_ratio': drift['model']['mean_distance_ratio'],
                           'far_threshold': b.get('far_threshold'),
                           'baseline_far_share': b.get('far_share'),
                           'current_far_share': profile.get('far_share'),
                           'far_share_ratio': drift['model']['far_share_ratio'],
                           'edges': b['distance']['histogram']['edges'],
                           'baseline_counts': b['distance']['histogram']['counts'],
                           'current_counts': profile['distance']['histogram']['counts']}
    return doc
