"""Monitoring of classification prediction logs: label and prediction rates and the metrics.

A logs profile (and a logs baseline, ``kind: logs``) holds ``logs``: ``n`` (rows),
``label_rate`` (share of rows whose truth is positive), ``prediction_rate`` (share
predicted positive), ``precision``, ``recall``, ``accuracy``, ``f1`` (NaN for a 0/0) and
``confusion`` (``tp, fp, tn, fn``), from one pass of the metrics' CombineFn
(:class:`~beamml.transforms.metrics.ComputeMetrics`). The drift of a logs profile:

* ``label_rate_diff`` and ``prediction_rate_diff``: the absolute change of the rates;
* ``precision_drop``, ``recall_drop``, ``accuracy_drop``, ``f1_drop``: baseline minus
  current (a fall of the metric is positive).
"""
from __future__ import annotations

import datetime as dt
import math

import apache_beam as beam

from beamml.transforms.metrics import CLASSIFICATION_METRICS, ComputeMetrics

__all__ = ['LOG_METRICS', 'LogsProfile', 'logs_profile', 'logs_baseline', 'logs_drift']

RATE_METRICS = ('label_rate_diff', 'prediction_rate_diff')
DROP_METRICS = ('precision_drop', 'recall_drop', 'accuracy_drop', 'f1_drop')
LOG_METRICS = RATE_METRICS + DROP_METRICS
_METRICS = ('precision', 'recall', 'accuracy', 'f1', 'confusion')


def logs_profile(result: dict, refused: int = 0) -> dict:
    """The profile of one ComputeMetrics ``metrics`` element (no slices)."""
    overall = result['overall']
    c = overall['confusion']
    n = int(c['tp'] + c['fp'] + c['tn'] + c['fn'])
    rate = (lambda k: (k / n) if n else math.nan)
    logs = {'n': n, 'label_rate': rate(c['tp'] + c['fn']),
            'prediction_rate': rate(c['tp'] + c['fp']),
            **{m: float(overall[m]) for m in ('precision', 'recall', 'accuracy', 'f1')},
            'confusion': {k: int(v) for k, v in c.items()}}
    return {'rows': n, 'refused': int(refused), 'logs': logs}


def logs_baseline(profile: dict, source: str | None) -> dict:
    from beamml.transforms.monitoring.baseline import FORMAT
    return {'format': FORMAT, 'kind': 'logs', 'created': dt.datetime.now(
        dt.timezone.utc).isoformat(timespec='seconds'), 'source': source, 'names': [],
        **profile}


def logs_drift(base: dict, current: dict) -> dict:
    """{metric: value} of a logs profile against a logs baseline (the ``logs`` sections)."""
    out = {}
    for m in RATE_METRICS:
        key = m[:-len('_diff')]
        out[m] = abs(current[key] - base[key])
    for m in DROP_METRICS:
        key = m[:-len('_drop')]
        out[m] = base[key] - current[key]
    return out


class LogsProfile(beam.PTransform):
    """Canonical classification log batches (ParsePredictionLogs' ``rows``) -> one logs
    profile, and the dead letters of the metrics (``{'profile', 'errors'}``)."""

    def __init__(self, refused=None):
        super().__init__()
        self.refused = refused

    def expand(self, rows):
        nan = float('nan')
        metrics = [CLASSIFICATION_METRICS[m](zero_division=nan) for m in _METRICS]
        result = rows | 'ComputeMetrics' >> ComputeMetrics(metrics, [], defaults=True)
        refused = self.refused or (rows.pipeline | 'NoRefused' >> beam.Create([0]))
        profile = result['metrics'] | 'LogsProfile' >> beam.Map(
            logs_profile, beam.pvalue.AsSingleton(refused))
        return {'profile': profile, 'errors': result['errors']}
