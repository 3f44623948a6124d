"""The monitoring config (``configs/monitor.yaml``): thresholds, per-feature overrides,
retraining rules, the retraining data window. Validated once, at the edge: an unknown
key or a bad value is one BeammlError naming it.

Keys (every one optional; the defaults are :data:`DEFAULT_THRESHOLDS` and
:data:`DEFAULT_RULES`):

``epsilon``
    added to every bin share before PSI and JS (default 1e-6).
``thresholds``
    ``{metric: value}`` for ``psi``, ``js``, ``cluster_share_linf``,
    ``mean_distance_ratio``, ``far_share_ratio`` and, for prediction logs,
    ``label_rate_diff``, ``prediction_rate_diff``, ``precision_drop``, ``recall_drop``,
    ``accuracy_drop``, ``f1_drop``; an alarm fires when a value is *greater* than its
    threshold, so a threshold is a number >= 0.
``features``
    ``{feature name: {psi: x, js: y}}``: per-feature thresholds (the norm is
    ``l2_norm``); a name that is not a monitored feature is refused once the baseline
    is known (:meth:`MonitorConfig.check_features`).
``rules``
    a list of ``{name, metric, threshold, consecutive}`` (``consecutive`` default 1;
    an optional ``feature`` restricts a per-feature metric, psi or js, to one feature): the rule
    fires when the metric is above the threshold in each of the ``consecutive``
    latest windows (for a per-feature metric: the same feature in each).
``retrain``
    ``{input: PATTERN (may hold {date}), model_dir: DIR (default: the monitored model's
    directory), max_iter: N, tol: T}``: what ``--retrain`` trains on.
``history``
    a glob of earlier monitor output folders (batch): their ``drift.json`` are the
    windows before this run, in path order, for the ``consecutive`` rules.
"""
from __future__ import annotations

import math

from beamml.transforms.core.errors import BeammlError, first_line

__all__ = ['FEATURE_METRICS', 'MODEL_METRICS', 'LOG_METRICS', 'METRICS', 'DEFAULT_THRESHOLDS',
           'DEFAULT_RULES', 'EPSILON', 'MonitorConfig', 'load_monitor_config']

FEATURE_METRICS = ('psi', 'js')
MODEL_METRICS = ('cluster_share_linf', 'mean_distance_ratio', 'far_share_ratio')
#: prediction logs (transforms/monitoring/logs.py)
LOG_METRICS = ('label_rate_diff', 'prediction_rate_diff', 'precision_drop', 'recall_drop',
               'accuracy_drop', 'f1_drop')
METRICS = FEATURE_METRICS + MODEL_METRICS + LOG_METRICS
DEFAULT_THRESHOLDS = {'psi': 0.2, 'js': 0.1, 'cluster_share_linf': 0.1,
                      'mean_distance_ratio': 1.5, 'far_share_ratio': 2.0,
                      'label_rate_diff': 0.1, 'prediction_rate_diff': 0.1,
                      'precision_drop': 0.05, 'recall_drop': 0.05, 'accuracy_drop': 0.05,
                      'f1_drop': 0.05}
DEFAULT_RULES = [
    {'name': 'psi_3_windows', 'metric': 'psi', 'threshold': 0.2, 'consecutive': 3},
    {'name': 'far_share_doubled', 'metric': 'far_share_ratio', 'threshold': 2.0,
     'consecutive': 1},
]
EPSILON = 1e-6
_TOP = ('epsilon', 'thresholds', 'features', 'rules', 'retrain', 'history')
_RULE = ('name', 'metric', 'threshold', 'consecutive', 'feature')
_RETRAIN = ('input', 'model_dir', 'max_iter', 'tol')


def _number(value, where: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise BeammlError(f'{where} must be a number, got {value!r}')
    if positive and not value > 0:
        raise BeammlError(f'{where} must be > 0, got {value!r}')
    return float(value)


def _threshold(value, where: str) -> float:
    """A threshold: a number >= 0 (every metric is >= 0, and an alarm fires when the
    value is greater than its threshold: a negative one would fire on every window)."""
    x = _number(value, where)
    if x < 0:
        raise BeammlError(f'{where} must be >= 0, got {value!r} (an alarm fires when the '
                          'value is greater than its threshold: every metric is >= 0, so a '
                          'negative threshold fires on every window)')
    return x


def _mapping(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise BeammlError(f'{where} must be a mapping, got {type(value).__name__}')
    return value


def _unknown(d: dict, known, where: str) -> None:
    for key in d:
        if key not in known:
            raise BeammlError(f'{where}: unknown key {key!r}; one of {", ".join(known)}')


class MonitorConfig:
    """The validated config: ``epsilon``, ``thresholds``, ``features`` (overrides),
    ``rules``, ``retrain``, ``history``."""

    def __init__(self, doc: dict | None = None, source: str = 'monitor config'):
        doc = _mapping(doc or {}, source)
        _unknown(doc, _TOP, source)
        self.source = source
        self.epsilon = _number(doc.get('epsilon', EPSILON), f'{source}: epsilon', positive=True)
        self.thresholds = dict(DEFAULT_THRESHOLDS)
        t = _mapping(doc.get('thresholds') or {}, f'{source}: thresholds')
        _unknown(t, METRICS, f'{source}: thresholds')
        for k, v in t.items():
            self.thresholds[k] = _threshold(v, f'{source}: thresholds.{k}')
        self.features: dict[str, dict[str, float]] = {}
        for name, over in _mapping(doc.get('features') or {}, f'{source}: features').items():
            over = _mapping(over, f'{source}: features.{name}')
            _unknown(over, FEATURE_METRICS, f'{source}: features.{name}')
            self.features[str(name)] = {k: _threshold(v, f'{source}: features.{name}.{k}')
                                        for k, v in over.items()}
        rules = doc.get('rules', DEFAULT_RULES)
        if not isinstance(rules, list):
            raise BeammlError(f'{source}: rules must be a list, got {type(rules).__name__}')
        self.rules = [self._rule(r, i) for i, r in enumerate(rules)]
        retrain = _mapping(doc.get('retrain') or {}, f'{source}: retrain')
        _unknown(retrain, _RETRAIN, f'{source}: retrain')
        for key in ('max_iter',):
            if key in retrain and (not isinstance(retrain[key], int) or retrain[key] < 1):
                raise BeammlError(f'{source}: retrain.{key} must be an integer >= 1')
        if 'tol' in retrain:
            _number(retrain['tol'], f'{source}: retrain.tol')
        self.retrain = dict(retrain)
        history = doc.get('history')
        if history is not None and not isinstance(history, str):
            raise BeammlError(f'{source}: history must be a folder pattern (a string)')
        self.history = history

    def _rule(self, rule, i: int) -> dict:
        where = f'{self.source}: rules[{i}]'
        rule = _mapping(rule, where)
        _unknown(rule, _RULE, where)
        if rule.get('metric') not in METRICS:
            raise BeammlError(f'{where}: metric must be one of {", ".join(METRICS)}, got '
                              f'{rule.get("metric")!r}')
        consecutive = rule.get('consecutive', 1)
        if isinstance(consecutive, bool) or not isinstance(consecutive, int) or consecutive < 1:
            raise BeammlError(f'{where}: consecutive must be an integer >= 1, got '
                              f'{consecutive!r}')
        threshold = rule.get('threshold', self.thresholds[rule['metric']])
        feature = rule.get('feature')
        if feature is not None and rule['metric'] not in FEATURE_METRICS:
            raise BeammlError(f'{where}: feature {feature!r} goes with a per-feature metric '
                              f'({", ".join(FEATURE_METRICS)}); {rule["metric"]} is not one, '
                              'so the rule could never fire')
        return {'name': str(rule.get('name') or f'rule{i}'), 'metric': rule['metric'],
                'threshold': _threshold(threshold, f'{where}: threshold'),
                'consecutive': consecutive,
                'feature': None if feature is None else str(feature)}

    def check_features(self, features: list[str], what: str) -> None:
        """Every feature the config names (a ``features:`` entry, a rule's ``feature``) is
        one of ``features`` (the monitored columns and the norm, as drift.json names them),
        else one BeammlError naming the key and the features there are; ``what`` says
        where they come from (e.g. the baseline's path)."""
        named = [(f'features.{name}', name) for name in self.features]
        named += [(f'rules[{i}].feature', r['feature']) for i, r in enumerate(self.rules)
                  if r['feature'] is not None]
        for key, name in named:
            if name not in features:
                there = (f'the features are {", ".join(features)}' if features else
                         'it has no per-feature metrics')
                raise BeammlError(f'{self.source}: {key}: no feature {name!r} in {what}; '
                                  f'{there}')

    def threshold(self, metric: str, feature: str | None = None) -> float:
        if feature is not None and metric in self.features.get(feature, {}):
            return self.features[feature][metric]
        return self.thresholds[metric]

    def to_dict(self) -> dict:
        return {'epsilon': self.epsilon, 'thresholds': self.thresholds,
                'features': self.features, 'rules': self.rules, 'retrain': self.retrain,
                'history': self.history}


def load_monitor_config(path: str | None) -> MonitorConfig:
    """The config at ``path`` (YAML, local or gs://), or the defaults without one."""
    if not path:
        return MonitorConfig()
    import yaml
    from apache_beam.io.filesystems import FileSystems
    try:
        with FileSystems.open(path) as f:
            doc = yaml.safe_load(f.read().decode('utf-8'))
    except yaml.YAMLError as e:
        first = ' '.join(str(e).split())
        raise BeammlError(f'monitor config {path} is not valid YAML: {first}') from e
    except Exception as e:
        raise BeammlError(f'cannot read monitor config {path}: '
                          f'{first_line(e)}') from e
    return MonitorConfig(doc, f'monitor config {path}')
