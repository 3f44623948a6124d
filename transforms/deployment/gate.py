"""The promote/keep gate on a shadow comparison: value and change thresholds in the
spirit of TensorFlow Model Analysis' ``GenericValueThreshold`` and
``GenericChangeThreshold`` (absolute or relative, higher or lower is better)."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from beamml.transforms.core.errors import BeammlError, first_line

__all__ = ['Gate', 'Threshold', 'GATE_METRICS', 'gate_metric']


#: metric -> (where it is read in a comparison report, whether a change has a baseline)
GATE_METRICS = {
    'agreement': False,
    'inertia': True,
    'inertia_per_point': True,
    'max_cluster_share': True,
    'min_cluster_share': True,
    'empty_clusters': True,
    'shadow_refused_fraction': False,
}
_DIRECTIONS = ('higher_is_better', 'lower_is_better')


def gate_metric(report: Mapping[str, Any], metric: str, side: str = 'candidate'):
    """A gate metric's value in a comparison report, for the candidate (the shadow) or
    the production model (the baseline of a change threshold); None when undefined."""
    if metric == 'agreement':
        return report.get('agreement')
    if metric == 'shadow_refused_fraction':
        total = report['points'] + report['shadow_refused']
        return report['shadow_refused'] / total if total else None
    model = report[side]
    if metric in ('inertia', 'inertia_per_point', 'empty_clusters'):
        return model[metric]
    shares = [s for s in model['cluster_shares'] if s is not None]
    if not shares:
        return None
    return max(shares) if metric == 'max_cluster_share' else min(shares)


class Threshold:
    """One entry of a gate: a value threshold (``lower_bound`` <= value <= ``upper_bound``,
    either may be missing: TFMA's ``GenericValueThreshold``) and/or a change threshold
    (``change: {absolute: A, relative: R, direction: higher_is_better|lower_is_better}``:
    TFMA's ``GenericChangeThreshold``). The change is ``v_c - v_b`` (candidate minus
    production) and the relative change ``(v_c - v_b) / v_b``; with
    ``higher_is_better`` a change passes when it is >= the threshold, with
    ``lower_is_better`` when it is <= it (so ``{relative: 0.05, direction:
    lower_is_better}`` allows a candidate at most 5% worse, and ``{absolute: 0,
    direction: higher_is_better}`` no worse at all)."""

    def __init__(self, metric: str, *, lower_bound: float | None = None,
                 upper_bound: float | None = None, absolute: float | None = None,
                 relative: float | None = None, direction: str | None = None):
        if metric not in GATE_METRICS:
            raise BeammlError(f'gate metric {metric!r} is not one of '
                              f'{", ".join(GATE_METRICS)}')
        self.metric = metric
        self.lower_bound = _number(lower_bound, f'{metric}: lower_bound')
        self.upper_bound = _number(upper_bound, f'{metric}: upper_bound')
        self.absolute = _number(absolute, f'{metric}: change absolute')
        self.relative = _number(relative, f'{metric}: change relative')
        has_change = self.absolute is not None or self.relative is not None
        if self.lower_bound is None and self.upper_bound is None and not has_change:
            raise BeammlError(f'gate threshold on {metric} has no lower_bound, upper_bound '
                              'or change')
        if has_change and not GATE_METRICS[metric]:
            raise BeammlError(f'gate metric {metric} has no production baseline: give it '
                              'lower_bound / upper_bound, not a change')
        if has_change and direction not in _DIRECTIONS:
            raise BeammlError(f'gate change on {metric}: direction must be '
                              f'{" or ".join(_DIRECTIONS)}, got {direction!r}')
        if not has_change and direction is not None:
            raise BeammlError(f'gate threshold on {metric}: direction without a change')
        self.direction = direction

    @classmethod
    def from_dict(cls, entry) -> 'Threshold':
        if not isinstance(entry, Mapping) or 'metric' not in entry:
            raise BeammlError(f'gate threshold {entry!r}: expected a mapping with "metric"')
        unknown = set(entry) - {'metric', 'lower_bound', 'upper_bound', 'change'}
        if unknown:
            raise BeammlError(f'gate threshold on {entry["metric"]}: unknown key(s) '
                              f'{", ".join(sorted(map(str, unknown)))}')
        change = entry.get('change') or {}
        if not isinstance(change, Mapping) or set(change) - {'absolute', 'relative',
                                                             'direction'}:
            raise BeammlError(f'gate threshold on {entry["metric"]}: change must be a '
                              'mapping of absolute, relative, direction')
        return cls(entry['metric'], lower_bound=entry.get('lower_bound'),
                   upper_bound=entry.get('upper_bound'), absolute=change.get('absolute'),
                   relative=change.get('relative'), direction=change.get('direction'))

    def check(self, report: Mapping[str, Any]) -> list[dict]:
        """One result per bound: {metric, kind, value, (baseline,) bound, passed}."""
        value = gate_metric(report, self.metric)
        out = []
        ok = value is not None and not math.isnan(value)
        if self.lower_bound is not None:
            out.append({'metric': self.metric, 'kind': 'lower_bound', 'value': value,
                        'bound': self.lower_bound, 'passed': ok and value >= self.lower_bound})
        if self.upper_bound is not None:
            out.append({'metric': self.metric, 'kind': 'upper_bound', 'value': value,
                        'bound': self.upper_bound, 'passed': ok and value <= self.upper_bound})
        if self.absolute is None and self.relative is None:
            return out
        base = gate_metric(report, self.metric, 'production')
        both = ok and base is not None and not math.isnan(base)
        diff = value - base if both else None
        for kind, bound in (('change_absolute', self.absolute),
                            ('change_relative', self.relative)):
            if bound is None:
                continue
            change = diff
            if kind == 'change_relative' and both:
                change = diff / base if base else (0.0 if diff == 0 else math.copysign(
                    math.inf, diff))
            passed = both and (change >= bound if self.direction == 'higher_is_better'
                               else change <= bound)
            out.append({'metric': self.metric, 'kind': kind, 'value': value,
                        'baseline': base, 'change': change, 'bound': bound,
                        'direction': self.direction, 'passed': bool(passed)})
        return out


def _number(x, what: str) -> float | None:
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(x):
        raise BeammlError(f'gate {what} must be a number, got {x!r}')
    return float(x)


class Gate:
    """The promote/keep decision on a shadow comparison: promote when every threshold
    passes and at least one point was compared.

    The YAML (or dict) form::

        thresholds:
          - metric: agreement
            lower_bound: 0.9
          - metric: inertia_per_point
            change: {relative: 0.05, direction: lower_is_better}
    """

    def __init__(self, thresholds: Sequence[Threshold]):
        if not thresholds:
            raise BeammlError('the gate has no thresholds')
        self.thresholds = list(thresholds)

    @classmethod
    def from_dict(cls, doc, source: str = 'gate') -> 'Gate':
        shape = ('expected a mapping with one key, thresholds: a list of {metric, '
                 'lower_bound, upper_bound, change}')
        if not isinstance(doc, Mapping):
            raise BeammlError(f'{source}: {shape}')
        unknown = sorted(str(k) for k in doc if k != 'thresholds')
        if unknown:
            raise BeammlError(f'{source}: unknown key {", ".join(map(repr, unknown))}; the '
                              'only key allowed is thresholds (a list of {metric, '
                              'lower_bound, upper_bound, change})')
        if not isinstance(doc.get('thresholds'), list):
            raise BeammlError(f'{source}: {shape}')
        try:
            return cls([Threshold.from_dict(e) for e in doc['thresholds']])
        except BeammlError as e:
            raise BeammlError(f'{source}: {e}') from e

    @classmethod
    def load(cls, path: str) -> 'Gate':
        import yaml
        from beamml.transforms.core.documents import read_text
        try:
            text = read_text(path)
        except Exception as e:
            raise BeammlError(f'cannot read the gate {path}: {first_line(e)}') from e
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            first = first_line(e)
            raise BeammlError(f'the gate {path} is not valid YAML: {first}') from e
        return cls.from_dict(doc, f'the gate {path}')

    def to_dict(self) -> dict:
        out = []
        for t in self.thresholds:
            e: dict = {'metric': t.metric}
            if t.lower_bound is not None:
                e['lower_bound'] = t.lower_bound
            if t.upper_bound is not None:
                e['upper_bound'] = t.upper_bound
            if t.absolute is not None or t.relative is not None:
                e['change'] = {k: v for k, v in (('absolute', t.absolute),
                                                 ('relative', t.relative),
                                                 ('direction', t.direction))
                               if v is not None}
            out.append(e)
        return {'thresholds': out}

    def decide(self, report: Mapping[str, Any]) -> dict:
        """{decision: promote|keep, passed, reason, checks: [...]} of a comparison report."""
        checks = [c for t in self.thresholds for c in t.check(report)]
        failed = [c for c in checks if not c['passed']]
        if not report.get('points'):
            reason = 'no point was compared'
        elif failed:
            reason = 'failed: ' + ', '.join(f'{c["metric"]} {c["kind"]}' for c in failed)
        else:
            reason = 'every threshold passed'
        passed = bool(report.get('points')) and not failed
        return {'decision': 'promote' if passed else 'keep', 'passed': passed,
                'reason': reason, 'checks': checks}
