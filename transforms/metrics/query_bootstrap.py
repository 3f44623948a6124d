"""Poisson-bootstrap intervals of ranking measures: the resampling unit is the query.

The overall ranking measures are means over queries of per-query values (query
precision, P@k, AP, ...). Each query carries 1 + B weights: 1, then B Poisson(1) draws
keyed by ``(random_state, q_id)`` (:func:`~beamml.transforms.metrics.bootstrap.text_keys`);
the accumulator is ``[sum of w, sum of w * v for each measure]`` per weighting, over the
per-query statistics rows (one per query and slice, from ``QueryStats``, or from
``JudgedQueryStats`` on the trec_eval path), so the replicates come from the same
per-query pass. A query weighs the same in the overall section and in its slice.

:data:`QUERY_MEANS` maps each averaged metric to its per-query value; a new ranking
measure that is a mean of per-query values adds itself there (and to
``per_query_values``), and gets intervals with no other change. trec_eval's measures
(``map``, ``P_5``, ``ndcg_cut_10``, ...: :func:`is_query_mean`) are means of a per-query
column of the same name, which is their per-query value as it is (a 0/0 already 0, as
``TrecMeasure`` averages it).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from beamml.transforms.metrics.bootstrap import bootstrap_interval, poisson_weights, text_keys
from beamml.transforms.metrics.definitions import Metric, _check_k, _State, per_query_metrics
from beamml.transforms.metrics.ranking_measures import CUTOFF_MEASURES, SINGLE_MEASURES

__all__ = ['QUERY_MEANS', 'QueryIntervals', 'is_query_mean', 'per_query_values']

#: metric name -> the per-query value it is the mean of (per_query_values' keys)
#: ---- the ranking measures' one point of contact: add a mean-of-queries measure here ----
QUERY_MEANS = {'average_query_precision': 'precision', 'precision_at_k': 'precision_at_k',
               'mean_average_precision': 'average_precision'}


def _trec_column(name: str) -> bool:
    """Whether ``name`` is one of trec_eval's values (``map``, ``P_5``, ``ndcg_cut_10``...),
    a per-query column of ``JudgedQueryStats`` averaged by ``TrecMeasure``."""
    base, _, k = name.rpartition('_')
    return name in SINGLE_MEASURES or (base in CUTOFF_MEASURES and k.isdigit() and int(k) > 0)


def is_query_mean(name: str) -> bool:
    """Whether the ranking metric ``name`` is a mean over queries of a per-query value
    (:data:`QUERY_MEANS`, or one of trec_eval's measures): it then gets intervals."""
    return name in QUERY_MEANS or _trec_column(name)


def per_query_values(stats, k: int, zero_division: float,
                     measures: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The per-query values of ``measures`` (default: those of :data:`QUERY_MEANS`) from
    per-query statistics columns, keyed by :data:`QUERY_MEANS`' value or, for trec_eval's
    measures, by the measure's own name (its column)."""
    measures = list(QUERY_MEANS) if measures is None else list(measures)
    out = {}
    if any(m in QUERY_MEANS for m in measures):
        out.update(per_query_metrics(stats, k, zero_division))
    for m in measures:
        if m not in QUERY_MEANS:
            out[m] = np.asarray(stats[m], np.float64)
    return out


def _value_key(measure: str) -> str:
    return QUERY_MEANS.get(measure, measure)


class _QueryReplicates(_State):
    """``(1 + M, R)`` sums: row 0 the summed query weights, row 1 + m the weighted sum of
    measure m's per-query values, per weighting; None before the first query."""
    level = 'queries'

    def __init__(self, measures: Sequence[str], k: int, zero_division: float,
                 num_bootstrap: int, random_state: int):
        self.measures, self.k = tuple(measures), int(k)
        self.zero_division = float(zero_division)
        self.num_bootstrap, self.random_state = int(num_bootstrap), int(random_state)
        legacy = any(m in QUERY_MEANS for m in self.measures)
        self.inputs = (('q_id',) + (('n_returned', 'n_relevant', f'n_relevant_at_{self.k}',
                                     'ap_sum') if legacy else ())
                       + tuple(m for m in self.measures if m not in QUERY_MEANS))

    def _params(self):
        return (self.measures, self.k, repr(self.zero_division), self.num_bootstrap,
                self.random_state)

    def create(self):
        return None

    def add(self, acc, cols):
        n = len(cols['q_id'])
        if n == 0:
            return acc
        values = per_query_values(cols, self.k, self.zero_division, self.measures)
        w = np.concatenate([np.ones((n, 1)), poisson_weights(
            text_keys(cols['q_id']), self.num_bootstrap, self.random_state)], axis=1)
        v = np.stack([np.ones(n)] + [values[_value_key(m)] for m in self.measures])
        sums = v @ w
        return sums if acc is None else acc + sums

    def merge(self, acc, other):
        if other is None:
            return acc
        return other.copy() if acc is None else acc + other


class QueryIntervals(Metric):
    """Bootstrap intervals of ranking metrics that are means over queries.

    Its ``value`` is nothing (``intervals_only``): ``MetricsCombineFn`` puts its
    ``intervals`` under ``confidence_intervals`` beside the other metrics, as
    ``{metric: {lower, upper, standard_error}}`` (see
    :func:`~beamml.transforms.metrics.bootstrap.bootstrap_interval`).
    """
    name = 'query_intervals'
    can_be_undefined = False
    intervals_only = True

    def __init__(self, metrics: Sequence[str], k: int = 5, *, num_bootstrap: int = 100,
                 random_state: int = 0, confidence_level: float = 0.95,
                 zero_division: float = 0.0, name: str | None = None):
        super().__init__(zero_division=zero_division, name=name)
        unknown = [m for m in metrics if not is_query_mean(m)]
        if unknown:
            raise ValueError(f'no per-query mean for {", ".join(unknown)}')
        self.metrics, self.confidence_level = list(metrics), float(confidence_level)
        self._state = _QueryReplicates(self.metrics, _check_k(k), self.zero_division,
                                       num_bootstrap, random_state)

    def value(self, acc):
        return None, 0

    def replicates(self, acc) -> np.ndarray | None:
        """(R, M): each measure's mean under each weighting (None without queries)."""
        if acc is None:
            return None
        with np.errstate(invalid='ignore', divide='ignore'):
            return (acc[1:] / np.where(acc[0] > 0, acc[0], np.nan)).T

    def intervals(self, acc) -> dict | None:
        r = self.replicates(acc)
        if r is None:
            return None
        ci = bootstrap_interval(r[1:], self.confidence_level)
        return {m: {k: float(v[i]) for k, v in ci.items()} for i, m in enumerate(self.metrics)}
